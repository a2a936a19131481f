/**
 * @module doctor
 * `deno task doctor`: checks a deployment step by step and says, in plain words, what is wrong.
 *
 * Owns: the checks (configuration, then for each Server A base URL: DNS, TCP, TLS with ALPN,
 * `GET /v1/_ping`, optionally `GET /v1/models` with a key, then optionally a running relay compared
 * with a direct call), the likely cause printed under each failure, and the plain and JSON output.
 * Every side effect (DNS, sockets, TLS, fetch, clock, file reads) comes in through
 * {@link DoctorDeps}, so tests drive it against fake upstreams.
 * Must never: print or return an API key, send a request other than `GET`, or change anything.
 */

import { type Config, ConfigError, type Env, parseConfig, type Upstream } from "../config/mod.ts";
import { isPublicBindAddress } from "../config/mod.ts";
import { loadTlsFiles, type TlsPair } from "../config/mod.ts";
import { errName } from "../errors.ts";

/** Outcome of one check. `info` lines explain and never count as problems. */
export type CheckStatus = "pass" | "warn" | "fail" | "info";

/** One line of the report. */
export interface Check {
  /** Heading the line is printed under, e.g. "Configuration" or "Server A https://hub...". */
  section: string;
  /** Short name: "DNS", "TCP", "TLS", "GET /v1/_ping"... */
  name: string;
  status: CheckStatus;
  /** What was seen, one line. */
  detail: string;
  /** For warn/fail: the likely cause and what to do. */
  hint?: string;
  /** Duration of the step in milliseconds, when it was timed. */
  ms?: number;
}

/** The whole report; `ok` is false when any check failed. */
export interface DoctorReport {
  ok: boolean;
  summary: { pass: number; warn: number; fail: number };
  checks: Check[];
}

/** What to check. */
export interface DoctorOptions {
  /** The environment the relay would start with. */
  env: Env;
  /** An API key for Server A, to try `GET /v1/models` (never printed). */
  key?: string | undefined;
  /** Base URL of a running relay to compare with a direct call, e.g. http://127.0.0.1:8000. */
  relay?: string | undefined;
  /** Requests per side for the relay comparison (median is shown); default 5. */
  samples?: number;
  /** Limit for each step (DNS, connect, TLS, HTTP answer), ms; default 5000. */
  timeoutMs?: number;
  /** Extra CA certificates (PEM) to trust for HTTPS upstreams, like DENO_CERT. */
  caCerts?: string[] | undefined;
}

/** Side effects, all replaceable. */
export interface DoctorDeps {
  readFile?: (path: string) => string;
  resolveDns?: (host: string, type: "A" | "AAAA") => Promise<string[]>;
  connect?: (opts: { hostname: string; port: number }) => Promise<Deno.TcpConn>;
  startTls?: (conn: Deno.TcpConn, opts: Deno.StartTlsOptions) => Promise<Deno.TlsConn>;
  /** Loads a certificate/key pair the way `Deno.serve` would; throws when they do not load. */
  checkTlsPair?: (cert: string, key: string) => void;
  fetch?: (url: string, init: RequestInit) => Promise<Response>;
  /** Monotonic milliseconds. */
  now?: () => number;
}

type Resolved = Required<DoctorDeps>;

const PING = "/v1/_ping";
const MODELS = "/v1/models";

function defaults(deps: DoctorDeps, caCerts: string[] | undefined): {
  d: Resolved;
  close: () => void;
} {
  let client: Deno.HttpClient | undefined;
  const d: Resolved = {
    readFile: deps.readFile ?? ((p) => Deno.readTextFileSync(p)),
    resolveDns: deps.resolveDns ?? ((host, type) => Deno.resolveDns(host, type)),
    connect: deps.connect ?? ((o) => Deno.connect({ hostname: o.hostname, port: o.port })),
    startTls: deps.startTls ?? ((conn, opts) => Deno.startTls(conn, opts)),
    checkTlsPair: deps.checkTlsPair ?? ((cert, key) => {
      Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert, key }).close();
    }),
    fetch: deps.fetch ?? ((url, init) => {
      if (caCerts !== undefined && client === undefined) {
        client = Deno.createHttpClient({ caCerts });
      }
      return fetch(url, client === undefined ? init : { ...init, client });
    }),
    now: deps.now ?? (() => performance.now()),
  };
  return { d, close: () => client?.close() };
}

/** Runs every check and returns the report (never throws for a failed check). */
export async function runDoctor(
  options: DoctorOptions,
  deps: DoctorDeps = {},
): Promise<DoctorReport> {
  const timeoutMs = options.timeoutMs ?? 5000;
  const { d, close } = defaults(deps, options.caCerts);
  const checks: Check[] = [];
  const add = (c: Check): Check => {
    checks.push(c);
    return c;
  };
  try {
    const config = checkConfig(options.env, d, add);
    if (config !== null) {
      const targets = upstreamTargets(config);
      let firstPing: string | null = null;
      for (const t of targets) {
        const http2 = config.upstreamHttp2 !== "off";
        const ok = await checkUpstream(t, { ...options, timeoutMs, http2 }, d, add);
        if (ok && firstPing === null && t.label === "") firstPing = t.upstream.url;
      }
      if (options.relay !== undefined) {
        await checkRelay(options.relay, firstPing, { ...options, timeoutMs }, d, add);
      }
    } else if (options.relay !== undefined) {
      await checkRelay(options.relay, null, { ...options, timeoutMs }, d, add);
    }
  } finally {
    close();
  }
  const summary = { pass: 0, warn: 0, fail: 0 };
  for (const c of checks) if (c.status !== "info") summary[c.status]++;
  return { ok: summary.fail === 0, summary, checks };
}

// ---------------------------------------------------------------------------------------------
// Configuration

function checkConfig(env: Env, d: Resolved, add: (c: Check) => Check): Config | null {
  const section = "Configuration";
  let config: Config;
  try {
    config = parseConfig(env, { readFile: d.readFile });
  } catch (err) {
    const message = err instanceof ConfigError
      ? err.message
      : `unexpected error: ${err instanceof Error ? err.message : String(err)}`;
    add({
      section,
      name: "settings",
      status: "fail",
      detail: message,
      hint: "Fix this line in .env (or the environment) and run the doctor again. " +
        ".env.example lists every setting with an example.",
    });
    return null;
  }
  const n = config.upstreams.length;
  add({
    section,
    name: "settings",
    status: "pass",
    detail: `UPSTREAM_SERVER_A = ${config.upstreams.map((u) => u.url).join(", ")}` +
      (n > 1 ? ` (${n} upstreams, failover in this order)` : ""),
  });
  for (const u of allUpstreams(config)) {
    if (/\/v1(beta)?$/.test(u.prefix)) {
      add({
        section,
        name: "upstream path",
        status: "warn",
        detail: `${u.url} ends in ${u.prefix.slice(u.prefix.lastIndexOf("/"))}`,
        hint: "The relay appends the client's /v1/... path itself, so requests would go to " +
          `${u.prefix}/v1/... . Use the base URL without /v1 (e.g. ` +
          `${u.protocol}//${u.hostHeader}${u.prefix.replace(/\/v1(beta)?$/, "")}).`,
      });
    }
  }
  if (config.routes.size > 0) {
    const ids = [...config.routes.keys()].map((id) => `/u${id}`).join(", ");
    add({
      section,
      name: "routes",
      status: "pass",
      detail: `${config.routes.size} UID route(s): ${ids}`,
    });
  }
  const listen = `${config.host.includes(":") ? `[${config.host}]` : config.host}:${config.port}`;
  const tls = config.tlsCertFile !== undefined;
  const url = `${tls ? "https" : "http"}://${listen}`;
  const publicBind = isPublicBindAddress(config.host);
  const accessKeys = [...config.routes.values()].some((r) => r.accessKey !== undefined);
  const inDocker = ' (In Docker the published port decides: "127.0.0.1:8000:8000" in ' +
    "docker-compose.yml keeps it on this host.)";
  if (publicBind && config.allowIps === null && !accessKeys) {
    add({
      section,
      name: "listen",
      status: "warn",
      detail: `${url}: reachable from other machines, and no ALLOW_IPS`,
      hint: "Anyone who can reach this port can use Server A through the relay. Put OpenResty/" +
        "nginx in front and set HOST=127.0.0.1, or set ALLOW_IPS to your clients' addresses, " +
        "and open the port in the firewall only for them." + inDocker,
    });
  } else if (publicBind && !tls) {
    add({
      section,
      name: "listen",
      status: "warn",
      detail: `${url}: plain HTTP on an address other machines can reach`,
      hint: "API keys cross the network unencrypted. Put HTTPS in front (OpenResty/nginx) or set " +
        "TLS_CERT_FILE and TLS_KEY_FILE." + inDocker,
    });
  } else {
    add({ section, name: "listen", status: "pass", detail: url });
  }
  if (!publicBind && config.trustedProxies === null) {
    add({
      section,
      name: "client IP",
      status: "info",
      detail: "behind a reverse proxy on this host? Set TRUSTED_PROXIES=127.0.0.1 so the relay " +
        "(and Server A) see each client's own IP.",
    });
  }
  if (tls) checkTlsFiles(config, d, add);
  return config;
}

function checkTlsFiles(config: Config, d: Resolved, add: (c: Check) => Check): void {
  const section = "Configuration";
  // The relay's own loader, so the doctor refuses exactly what the relay would refuse at start.
  let pair: TlsPair | undefined;
  try {
    pair = loadTlsFiles(config, d.readFile);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    add({
      section,
      name: "TLS files",
      status: "fail",
      detail: err.message,
      hint: "Check both paths, and that the user running the relay may read them " +
        "(in Docker: mount them into the container; with systemd: under ReadOnlyPaths).",
    });
    return;
  }
  if (pair === undefined) return;
  try {
    d.checkTlsPair(pair.cert, pair.key);
    add({
      section,
      name: "TLS files",
      status: "pass",
      detail: "certificate and key load and match",
    });
  } catch (err) {
    const msg = errMessage(err);
    add({
      section,
      name: "TLS files",
      status: "fail",
      detail: `the certificate and key do not load: ${msg}`,
      hint: /mismatch|consistent/i.test(msg)
        ? "TLS_KEY_FILE is not the key of TLS_CERT_FILE: use the pair issued together."
        : "Both files must be PEM (-----BEGIN CERTIFICATE----- / -----BEGIN PRIVATE KEY-----); " +
          "use the full chain (fullchain.pem) as the certificate.",
    });
  }
}

function allUpstreams(config: Config): Upstream[] {
  const seen = new Map<string, Upstream>();
  for (const u of config.upstreams) seen.set(u.url, u);
  for (const r of config.routes.values()) for (const u of r.upstreams) seen.set(u.url, u);
  return [...seen.values()];
}

interface Target {
  upstream: Upstream;
  /** "" for the default upstreams, else e.g. "route /u1". */
  label: string;
  /** A key the relay itself sends (route apiKey): checked with /v1/models. */
  routeKey: string | undefined;
}

function upstreamTargets(config: Config): Target[] {
  const out: Target[] = config.upstreams.map((u) => ({
    upstream: u,
    label: "",
    routeKey: undefined,
  }));
  const seen = new Set(config.upstreams.map((u) => u.url));
  for (const r of config.routes.values()) {
    for (const u of r.upstreams) {
      if (seen.has(u.url) && r.apiKey === undefined) continue;
      seen.add(u.url);
      out.push({ upstream: u, label: `route /u${r.id}`, routeKey: r.apiKey });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// One upstream: DNS -> TCP -> TLS -> GET /v1/_ping -> GET /v1/models

const IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/;

/** What the protocol A chose by ALPN means for the relay. */
function alpnNote(alpn: string, http2: boolean): string {
  if (alpn !== "h2") return "";
  return http2
    ? " (the relay speaks HTTP/2 to it)"
    : " (HTTP/2 offered; UPSTREAM_HTTP2=off keeps the relay on HTTP/1.1)";
}

async function checkUpstream(
  t: Target,
  opts: DoctorOptions & { timeoutMs: number; http2: boolean },
  d: Resolved,
  add: (c: Check) => Check,
): Promise<boolean> {
  const u = t.upstream;
  const section = `Server A ${u.url}${t.label === "" ? "" : ` (${t.label})`}`;
  const ms = opts.timeoutMs;

  // DNS
  let dns: Check | null = null;
  const literal = IPV4.test(u.hostname) || u.hostname.includes(":");
  if (literal) {
    add({ section, name: "DNS", status: "pass", detail: `${u.hostname} is an IP address` });
  } else if (u.hostname === "localhost") {
    add({ section, name: "DNS", status: "pass", detail: "localhost (this machine)" });
  } else {
    const t0 = d.now();
    const [a, aaaa] = await Promise.all(
      (["A", "AAAA"] as const).map((type) =>
        withTimeout(d.resolveDns(u.hostname, type), ms).catch(() => [] as string[])
      ),
    );
    const addrs = [...a!, ...aaaa!];
    dns = add(
      addrs.length > 0
        ? {
          section,
          name: "DNS",
          status: "pass",
          detail: `${u.hostname} \u2192 ${addrs.slice(0, 4).join(", ")}${
            addrs.length > 4 ? ", \u2026" : ""
          }`,
          ms: d.now() - t0,
        }
        : {
          section,
          name: "DNS",
          status: "fail",
          detail: `${u.hostname} does not resolve`,
          hint: "Check the spelling of the host name in UPSTREAM_SERVER_A and that its DNS " +
            "record (A/AAAA) exists; a new record can take minutes to appear.",
          ms: d.now() - t0,
        },
    );
  }

  // TCP
  const t1 = d.now();
  let tcp: Deno.TcpConn;
  try {
    tcp = await withTimeout(d.connect({ hostname: u.hostname, port: u.port }), ms);
  } catch (err) {
    add({
      section,
      name: "TCP",
      status: "fail",
      detail: `cannot connect to ${u.hostHeader}: ${describeNetError(err, ms)}`,
      hint: connectHint(err, u, ms),
      ms: d.now() - t1,
    });
    return false;
  }
  const tcpMs = d.now() - t1;
  if (dns !== null && dns.status === "fail") {
    dns.status = "warn";
    dns.hint = "Deno's DNS lookup found nothing, but the system resolver did (e.g. /etc/hosts): " +
      "the relay will work on this machine.";
  }
  add({
    section,
    name: "TCP",
    status: "pass",
    detail: `connected to ${u.hostHeader} in ${fmtMs(tcpMs)} (about one network round trip)`,
    ms: tcpMs,
  });

  // TLS
  if (u.protocol === "https:") {
    const t2 = d.now();
    try {
      const tls = await withTimeout(
        d.startTls(tcp, {
          hostname: u.hostname,
          alpnProtocols: ["h2", "http/1.1"],
          ...(opts.caCerts ? { caCerts: opts.caCerts } : {}),
        }),
        ms,
      );
      const hs = await withTimeout(tls.handshake(), ms);
      const tlsMs = d.now() - t2;
      safeClose(tls);
      const alpn = hs.alpnProtocol ?? "none";
      add({
        section,
        name: "TLS",
        status: "pass",
        detail: `certificate valid for ${u.hostname}; ALPN ${alpn}` +
          `${alpnNote(alpn, opts.http2)}; ` +
          `handshake ${fmtMs(tlsMs)}`,
        ms: tlsMs,
      });
    } catch (err) {
      safeClose(tcp);
      add({
        section,
        name: "TLS",
        status: "fail",
        detail: `TLS handshake with ${u.hostHeader} failed: ${errMessage(err)}`,
        hint: tlsHint(err, u),
        ms: d.now() - t2,
      });
      return false;
    }
  } else {
    safeClose(tcp);
    if (!isLocal(u.hostname)) {
      add({
        section,
        name: "TLS",
        status: "warn",
        detail: "http:// upstream: requests and API keys cross the network unencrypted",
        hint: "Use https:// for a Server A on another machine, unless the path between the two " +
          "is private (same host, VPN, private network).",
      });
    }
  }

  // GET /v1/_ping
  const ping = await timedGet(`${u.url}${PING}`, {}, ms, d);
  if (ping.error !== undefined) {
    add({
      section,
      name: `GET ${PING}`,
      status: "fail",
      detail: ping.error,
      hint: ping.timedOut
        ? `Server A accepted the connection but did not answer in ${ms / 1000} s: it may be ` +
          "overloaded or stuck, or a proxy in front of it holds the request."
        : u.protocol === "http:"
        ? "The connection opened but no HTTP answer came back. If this port serves HTTPS, " +
          "write https:// in UPSTREAM_SERVER_A."
        : "The connection broke during the request: check the proxy in front of Server A.",
      ms: ping.ms,
    });
    return false;
  }
  const pong = ping.status === 200 && /"status"\s*:\s*"pong"/.test(ping.body);
  if (pong) {
    add({
      section,
      name: `GET ${PING}`,
      status: "pass",
      detail: `200 pong in ${fmtMs(ping.ms)} (time to first byte)`,
      ms: ping.ms,
    });
  } else {
    add({
      section,
      name: `GET ${PING}`,
      status: ping.status === 200 ? "warn" : "fail",
      detail: `answered ${ping.status}${ping.html ? " with a web page" : ""} in ${fmtMs(ping.ms)}`,
      hint: await pingHint(ping, u, ms, d),
      ms: ping.ms,
    });
    if (ping.status !== 200) return false;
  }

  // GET /v1/models with a key
  const keys: Array<[string, string]> = [];
  if (t.routeKey !== undefined) keys.push([`${t.label} apiKey`, t.routeKey]);
  else if (opts.key !== undefined && t.label === "") keys.push(["--key", opts.key]);
  for (const [which, key] of keys) {
    const r = await timedGet(`${u.url}${MODELS}`, { authorization: `Bearer ${key}` }, ms, d);
    if (r.error !== undefined) {
      add({ section, name: `GET ${MODELS}`, status: "fail", detail: r.error, ms: r.ms });
      continue;
    }
    if (r.status === 200) {
      const n = countModels(r.body);
      add({
        section,
        name: `GET ${MODELS}`,
        status: "pass",
        detail: `key (${which}) accepted${n === null ? "" : `, ${n} model(s) listed`} in ` +
          fmtMs(r.ms),
        ms: r.ms,
      });
    } else {
      add({
        section,
        name: `GET ${MODELS}`,
        status: "fail",
        detail: `key (${which}) got ${r.status}`,
        hint: keyHint(r.status),
        ms: r.ms,
      });
    }
  }
  return true;
}

async function pingHint(r: GetResult, u: Upstream, ms: number, d: Resolved): Promise<string> {
  if (r.status >= 300 && r.status < 400) {
    const to = r.location === null ? "another address" : r.location;
    return `Server A redirects to ${to}. The relay does not follow redirects: put the final ` +
      "address in UPSTREAM_SERVER_A (often https:// instead of http://).";
  }
  if (r.status === 404) {
    if (/\/v1(beta)?$/.test(u.prefix)) {
      return "UPSTREAM_SERVER_A ends in /v1, so the relay asks for /v1/v1/... . Remove the /v1.";
    }
    if (u.prefix !== "") {
      const origin = `${u.protocol}//${u.hostHeader}`;
      const bare = await timedGet(`${origin}${PING}`, {}, ms, d);
      if (bare.status === 200) {
        return `Wrong path prefix: ${origin}${PING} works, so remove "${u.prefix}" from ` +
          `UPSTREAM_SERVER_A (use ${origin}).`;
      }
      return `Nothing answers at ${u.prefix}${PING}. Check the path prefix "${u.prefix}" in ` +
        "UPSTREAM_SERVER_A: it must be where claude-code-hub's /v1 API lives.";
    }
    return r.html
      ? "A web server answered, but not claude-code-hub's API: check the host and port " +
        "(a reverse proxy's default site?), or add the path prefix under which Server A lives."
      : "This address does not serve /v1/_ping: is it claude-code-hub (v0.9 or later)? If Server " +
        "A lives under a path, add it to UPSTREAM_SERVER_A (e.g. https://host/prefix).";
  }
  if (r.status === 200) {
    return 'It answers 200 but not {"status":"pong"}: this may not be claude-code-hub.';
  }
  if (r.status === 401 || r.status === 403) {
    return "Something in front of Server A (a proxy, a WAF, an IP allow-list) refuses this " +
      "machine: /v1/_ping needs no key on claude-code-hub.";
  }
  if (r.status === 429) {
    return "Rate limited or this IP is locked out (claude-code-hub locks an IP for 10 minutes " +
      "after 20 failed logins in 5 minutes). Wait, and make sure the relay sends X-Real-IP.";
  }
  if (r.status === 400 && /plain http|http request.*https/i.test(r.body)) {
    return "This port speaks HTTPS: write https:// in UPSTREAM_SERVER_A.";
  }
  if (r.status >= 500) {
    return r.status === 502 || r.status === 503 || r.status === 504
      ? "A proxy in front of Server A cannot reach it (Server A's container or process down?)."
      : "Server A answered with an internal error: check its logs.";
  }
  return "Unexpected answer: check that UPSTREAM_SERVER_A points at claude-code-hub.";
}

function keyHint(status: number): string {
  switch (status) {
    case 401:
      return "Server A rejected the key: check it in claude-code-hub's key list (enabled, not " +
        "expired), and that it is the whole key.";
    case 403:
      return "The key is valid but not allowed to list models (permissions in claude-code-hub).";
    case 402:
      return "The key's quota or balance is used up in claude-code-hub.";
    case 429:
      return "Rate limited, or this IP is locked out after failed logins (10 minutes).";
    case 404:
      return "Server A has no /v1/models at this path: check the path prefix.";
    default:
      return "Unexpected answer: see Server A's logs.";
  }
}

function countModels(body: string): number | null {
  try {
    const data = (JSON.parse(body) as { data?: unknown }).data;
    return Array.isArray(data) ? data.length : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// A running relay: does it answer, and what does it add to time-to-first-byte?

async function checkRelay(
  relay: string,
  direct: string | null,
  opts: DoctorOptions & { timeoutMs: number },
  d: Resolved,
  add: (c: Check) => Check,
): Promise<void> {
  const base = relay.replace(/\/+$/, "");
  const section = `Relay ${base}`;
  let url: URL;
  try {
    url = new URL(base);
  } catch {
    add({
      section,
      name: "address",
      status: "fail",
      detail: `--relay ${JSON.stringify(relay)} is not a URL`,
      hint: "Give the relay's base URL, e.g. --relay http://127.0.0.1:8000",
    });
    return;
  }
  const ms = opts.timeoutMs;
  const home = await timedGet(`${base}/`, {}, ms, d);
  if (home.error !== undefined) {
    add({
      section,
      name: "GET /",
      status: "fail",
      detail: home.error,
      hint: /refused/i.test(home.error)
        ? `Nothing listens on ${url.host}: is the relay running (docker ps / systemctl status ` +
          "proxy-forwarder), and on this port?"
        : "The relay did not answer: check that it runs and that the port is open.",
      ms: home.ms,
    });
    return;
  }
  let version: string | null = null;
  try {
    const j = JSON.parse(home.body) as { ok?: unknown; version?: unknown };
    if (j.ok === true && typeof j.version === "string") version = j.version;
  } catch { /* not ours */ }
  if (home.status !== 200 || version === null) {
    add({
      section,
      name: "GET /",
      status: "fail",
      detail: `answered ${home.status}, not the relay's status JSON`,
      hint: "Something else answers on this address (another service, or a proxy without a " +
        "route to the relay).",
      ms: home.ms,
    });
    return;
  }
  add({
    section,
    name: "GET /",
    status: "pass",
    detail: `proxy-forwarder ${version} answers in ${fmtMs(home.ms)}`,
    ms: home.ms,
  });

  const through = await timedGet(`${base}${PING}`, {}, ms, d);
  if (through.error !== undefined || through.status !== 200) {
    add({
      section,
      name: `GET ${PING} via relay`,
      status: "fail",
      detail: through.error ?? `answered ${through.status}`,
      hint: through.status === 403
        ? "The relay refuses this machine: add its IP to ALLOW_IPS."
        : through.status === 502 || through.status === 504
        ? "The relay cannot reach Server A: compare the relay's UPSTREAM_SERVER_A with the " +
          "checks above, and read the relay's log."
        : "See the relay's log for this request.",
      ms: through.ms,
    });
    return;
  }
  if (direct === null) {
    add({
      section,
      name: `GET ${PING} via relay`,
      status: "pass",
      detail: `200 in ${fmtMs(through.ms)} (no direct timing to compare with)`,
      ms: through.ms,
    });
    return;
  }
  const n = Math.max(1, opts.samples ?? 5);
  const directMs: number[] = [];
  const relayMs: number[] = [];
  for (let i = 0; i < n; i++) {
    const a = await timedGet(`${direct}${PING}`, {}, ms, d);
    const b = await timedGet(`${base}${PING}`, {}, ms, d);
    if (a.error === undefined && a.status === 200) directMs.push(a.ms);
    if (b.error === undefined && b.status === 200) relayMs.push(b.ms);
  }
  if (directMs.length === 0 || relayMs.length === 0) {
    add({
      section,
      name: "time to first byte",
      status: "warn",
      detail: "some comparison requests failed; no timing",
    });
    return;
  }
  const md = median(directMs);
  const mr = median(relayMs);
  const extra = mr - md;
  const slow = extra > 50 && mr > md * 1.5;
  add({
    section,
    name: "time to first byte",
    status: slow ? "warn" : "pass",
    detail: `direct ${fmtMs(md)}, through the relay ${fmtMs(mr)} ` +
      `(${extra >= 0 ? "+" : ""}${fmtMs(extra)}; median of ${n}, GET ${PING})`,
    ...(slow
      ? {
        hint: "The relay adds a lot: check the relay host's CPU and network, whether it runs " +
          "far from Server A, and whether TLS is terminated twice.",
      }
      : {}),
    ms: mr,
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

// ---------------------------------------------------------------------------------------------
// HTTP helper

interface GetResult {
  status: number;
  body: string;
  html: boolean;
  location: string | null;
  /** Time to the response head, ms. */
  ms: number;
  error?: string;
  timedOut?: boolean;
}

const MAX_BODY = 64 * 1024;

async function timedGet(
  url: string,
  headers: Record<string, string>,
  timeoutMs: number,
  d: Resolved,
): Promise<GetResult> {
  const t0 = d.now();
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  try {
    const res = await d.fetch(url, {
      method: "GET",
      headers: { "user-agent": "proxy-forwarder-doctor", ...headers },
      redirect: "manual",
      signal: ctl.signal,
    });
    const ms = d.now() - t0;
    const body = await readSome(res);
    return {
      status: res.status,
      body,
      html: (res.headers.get("content-type") ?? "").includes("text/html"),
      location: res.headers.get("location"),
      ms,
    };
  } catch (err) {
    const timedOut = ctl.signal.aborted;
    return {
      status: 0,
      body: "",
      html: false,
      location: null,
      ms: d.now() - t0,
      error: timedOut ? `no answer within ${timeoutMs / 1000} s` : describeNetError(err, timeoutMs),
      timedOut,
    };
  } finally {
    clearTimeout(timer);
  }
}

async function readSome(res: Response): Promise<string> {
  if (res.body === null) return "";
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < MAX_BODY) {
      const { value, done } = await reader.read();
      if (done) break;
      parts.push(value);
      size += value.byteLength;
    }
  } catch { /* a broken body still tells us the status */ }
  await reader.cancel().catch(() => {});
  const all = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    all.set(p, off);
    off += p.byteLength;
  }
  return new TextDecoder().decode(all.subarray(0, MAX_BODY));
}

// ---------------------------------------------------------------------------------------------
// Errors in words

class TimeoutError extends Error {
  constructor(ms: number) {
    super(`no answer within ${ms / 1000} s`);
    this.name = "TimedOut";
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(ms)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer)).catch((err) => {
    // A late connection must not leak.
    p.then((v) => {
      if (v !== null && typeof v === "object" && "close" in v) safeClose(v as { close(): void });
    }, () => {});
    throw err;
  });
}

function describeNetError(err: unknown, ms: number): string {
  if (err instanceof TimeoutError) return `no answer within ${ms / 1000} s`;
  const name = errName(err);
  if (name === "ConnectionRefused") return "connection refused";
  if (name === "ConnectionReset") return "connection reset";
  if (name === "TimedOut") return "timed out";
  // fetch wraps the socket error: look through the message and its causes.
  let msg = errMessage(err);
  for (let c = (err as { cause?: unknown })?.cause, i = 0; c !== undefined && i < 4; i++) {
    msg += ` ${errMessage(c)}`;
    c = (c as { cause?: unknown })?.cause;
  }
  if (/connection refused/i.test(msg)) return "connection refused";
  if (/connection reset/i.test(msg)) return "connection reset";
  if (/lookup address|Name or service not known|no records found/i.test(msg)) {
    return "host name does not resolve";
  }
  if (/unreachable/i.test(msg)) return "network unreachable";
  return msg;
}

function connectHint(err: unknown, u: Upstream, ms: number): string {
  const d = describeNetError(err, ms);
  if (d === "connection refused") {
    return `The host answered, but nothing listens on port ${u.port}: Server A is not running, ` +
      "or the port in UPSTREAM_SERVER_A is wrong, or a firewall rejects the connection. On " +
      "Server A's machine, check that claude-code-hub runs and which port it publishes.";
  }
  if (d.startsWith("no answer") || d === "timed out") {
    return `No answer to the connection attempt in ${ms / 1000} s: a firewall or cloud ` +
      `security group is dropping packets to port ${u.port}, or the host is down. Allow this ` +
      "server's public IP to reach that port on Server A.";
  }
  if (d === "host name does not resolve") {
    return "The host name does not resolve on this machine: check the spelling and its DNS record.";
  }
  if (d === "network unreachable") {
    return "This machine has no route to that address (IPv6 without IPv6 connectivity?).";
  }
  return "Check the address and port in UPSTREAM_SERVER_A.";
}

function tlsHint(err: unknown, u: Upstream): string {
  const msg = errMessage(err);
  if (/UnknownIssuer|self.signed|CaUsedAsEndEntity/i.test(msg)) {
    return "The certificate is not signed by an authority this machine trusts: a self-signed " +
      "certificate, or the server sends its certificate without the intermediate chain. Serve " +
      "the full chain (fullchain.pem) on Server A, or trust its CA here with " +
      "DENO_CERT=/path/to/ca.pem (doctor: --ca-file).";
  }
  if (/not valid for name|NotValidForName/i.test(msg)) {
    return `The certificate is for a different name than "${u.hostname}": use the name the ` +
      "certificate was issued for in UPSTREAM_SERVER_A, or fix the certificate.";
  }
  if (/expired|NotValidYet/i.test(msg)) {
    return "The certificate has expired (or is not valid yet): renew it on Server A, and check " +
      "this machine's clock.";
  }
  if (/InvalidContentType|corrupt message|wrong version/i.test(msg)) {
    return "This port speaks plain HTTP, not HTTPS: write http:// in UPSTREAM_SERVER_A, or use " +
      "the HTTPS port.";
  }
  if (err instanceof TimeoutError) {
    return "The TLS handshake did not finish: the port may not be TLS, or a middlebox stalls it.";
  }
  return "Check the certificate on Server A (e.g. openssl s_client -connect host:port).";
}

function isLocal(host: string): boolean {
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function safeClose(c: { close(): void }): void {
  try {
    c.close();
  } catch { /* already closed */ }
}

function fmtMs(ms: number): string {
  const a = Math.abs(ms);
  const sign = ms < 0 ? "-" : "";
  return a < 10 ? `${sign}${a.toFixed(1)} ms` : `${sign}${Math.round(a)} ms`;
}

// ---------------------------------------------------------------------------------------------
// Output

const MARK: Record<CheckStatus, string> = { pass: "\u2713", warn: "!", fail: "\u2717", info: "·" };

/** The report as plain text: a heading per section, one line per check, marked pass, warn or fail, hints below. */
export function formatReport(report: DoctorReport): string {
  const lines: string[] = ["proxy-forwarder doctor", ""];
  let section = "";
  for (const c of report.checks) {
    if (c.section !== section) {
      if (section !== "") lines.push("");
      section = c.section;
      lines.push(section);
    }
    lines.push(`  ${MARK[c.status]} ${c.name}: ${c.detail}`);
    if (c.hint !== undefined && c.status !== "pass") lines.push(`      \u2192 ${c.hint}`);
  }
  const { pass, warn, fail } = report.summary;
  lines.push("");
  lines.push(
    fail === 0
      ? `All checks passed (${pass} \u2713${warn > 0 ? `, ${warn} warning(s) !` : ""}).`
      : `${fail} problem(s) \u2717, ${warn} warning(s) !, ${pass} passed \u2713. Fix the first \u2717 first: ` +
        "later checks often fail because of it.",
  );
  if (fail + warn > 0) {
    lines.push(
      "More help: docs/DEPLOY.md, section 7.5 (\u4e2d\u6587: docs/DEPLOY.zh-CN.md, 7.5 \u6545\u969c\u6392\u67e5).",
    );
  }
  return lines.join("\n") + "\n";
}

/** Parsed command line of `deno task doctor`. */
export interface DoctorArgs {
  json: boolean;
  help: boolean;
  key: string | undefined;
  relay: string | undefined;
  caFile: string | undefined;
  timeoutMs: number | undefined;
}

/** Parses `--json`, `--key K`, `--relay URL`, `--ca-file F`, `--timeout SEC`, `--help`. */
export function parseDoctorArgs(args: readonly string[]): DoctorArgs {
  const out: DoctorArgs = {
    json: false,
    help: false,
    key: undefined,
    relay: undefined,
    caFile: undefined,
    timeoutMs: undefined,
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const eq = arg.indexOf("=");
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    const takeValue = (): string => {
      if (eq > 0) return arg.slice(eq + 1);
      const v = args[++i];
      if (v === undefined) throw new Error(`${name} needs a value`);
      return v;
    };
    switch (name) {
      case "--json":
        out.json = true;
        break;
      case "-h":
      case "--help":
        out.help = true;
        break;
      case "--key":
        out.key = takeValue();
        break;
      case "--relay":
        out.relay = takeValue();
        break;
      case "--ca-file":
        out.caFile = takeValue();
        break;
      case "--timeout": {
        const v = Number(takeValue());
        if (!(v > 0 && v <= 600)) throw new Error("--timeout needs seconds, e.g. 5");
        out.timeoutMs = v * 1000;
        break;
      }
      default:
        throw new Error(`unknown option ${JSON.stringify(name)} (see --help)`);
    }
  }
  return out;
}

/** `deno task doctor --help`. */
export const DOCTOR_USAGE = `Usage: deno task doctor [options]

Checks the relay's configuration (.env and the environment), then each Server A address
step by step (DNS, TCP, TLS, GET /v1/_ping), and says what is likely wrong.

Options:
  --key KEY        also try GET /v1/models with this Server A key (or set DOCTOR_API_KEY)
  --relay URL      compare a running relay with a direct call, e.g. --relay http://127.0.0.1:8000
  --ca-file FILE   trust this CA certificate (PEM) for HTTPS upstreams, like DENO_CERT
  --timeout SEC    limit for each step (default 5)
  --json           print the report as JSON
  -h, --help       this text

Exit status: 0 when nothing failed, 1 when a check failed, 2 for bad options.
`;
