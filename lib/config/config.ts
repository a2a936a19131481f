/**
 * @module config
 * Turns the environment into a validated, immutable {@link Config}.
 *
 * Owns: every environment variable's parsing and error message; names and defaults are listed
 * once in `vars.ts` (`VARS`). `parseConfig` is
 * pure: the environment and file reader are passed in, so tests drive it with plain objects.
 * Must never: read `Deno.env` or the file system itself, log, or accept a value it cannot explain.
 * Error messages may quote values, except secrets (API keys, access keys), which they never repeat.
 */

import { type CidrList, parseCidrList } from "./ip.ts";
import { parseRate, type Rate } from "./rate.ts";
import type { Upstream } from "../http/mod.ts";
import { defaultOf } from "./vars.ts";

export type { Upstream };

/** A UID route: `/u{id}/v1/...` goes to `upstreams` with optional key swap. */
export interface Route {
  readonly id: string;
  readonly upstreams: readonly Upstream[];
  /** Server A key the relay sends instead of the client's access key. */
  readonly apiKey?: string;
  /** The key clients must present on this route (required when `apiKey` is set). */
  readonly accessKey?: string;
}

/** Rate-limit state: in this process, or in Deno KV shared by several instances. */
export type RateLimitStoreKind = "memory" | "kv";

/** Everything the relay needs to run, validated. */
export interface Config {
  readonly upstreams: readonly Upstream[];
  readonly host: string;
  readonly port: number;
  readonly debugLog: boolean;
  /** Longest wait for A's response headers, and longest silence between body chunks. */
  readonly upstreamTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly shutdownGraceMs: number;
  /** Request bodies up to this size are kept so a request on a stale connection can be resent. */
  readonly retryBodyMaxBytes: number;
  /** Idle pooled upstream connections are closed after this long (A drops them after ~5 s). */
  readonly poolIdleMs: number;
  readonly routes: ReadonlyMap<string, Route>;

  // Upstream health and keep-warm.
  /** Interval of the keep-warm request on each upstream's pool; 0 = off. */
  readonly keepWarmMs: number;
  /**
   * Idle connections (HTTP/2: free stream slots) kept ready per upstream while it is up, opened
   * in the background so that a request under load finds one; 0 = off.
   */
  readonly spareConnections: number;
  /** Path probed for health and keep-warm. */
  readonly healthPath: string;
  /** Interval of the active health probe of an upstream marked down. */
  readonly healthIntervalMs: number;
  /** How long an upstream stays marked down after a failure before it is tried again. */
  readonly downBackoffMs: number;
  /** HTTPS upstreams: "auto" uses HTTP/2 when A offers it by ALPN; "off" always HTTP/1.1. */
  readonly upstreamHttp2: "auto" | "off";

  // Access control and limits.
  /** Client addresses allowed; null = everyone. */
  readonly allowIps: CidrList | null;
  /** Proxies in front of the relay whose X-Forwarded-For / X-Real-IP are believed; null = none. */
  readonly trustedProxies: CidrList | null;
  /** Token bucket per client, e.g. `{limit: 10, windowSec: 60}`; null = off. */
  readonly rateLimit: Rate | null;
  readonly rateLimitStore: RateLimitStoreKind;
  /** Deno KV path or URL for `RATE_LIMIT_STORE=kv`; undefined = Deno's default local KV. */
  readonly rateLimitKvUrl: string | undefined;
  /** In-flight requests per client; 0 = unlimited. */
  readonly maxConcurrentPerClient: number;
  /** Largest request body in bytes. */
  readonly maxBodyBytes: number;
  /** A request body that stops arriving for this long is aborted. */
  readonly clientBodyTimeoutMs: number;
  /** Concurrent client connections; 0 = derive from the descriptor limit. */
  readonly maxConnections: number;
  /**
   * Open client sockets per client address (own server), or requests in flight per address
   * (Deno.serve); 0 = unlimited. The address is the socket's peer, never a forwarded header.
   */
  readonly maxConnectionsPerIp: number;
  /** Client-facing server for plain HTTP: the relay's own ("relay") or Deno.serve ("deno"). */
  readonly httpServer: "relay" | "deno";
  /** A request head must arrive within this long (own server only). */
  readonly clientHeaderTimeoutMs: number;
  /** An idle keep-alive client connection is closed after this long (own server only). */
  readonly clientIdleTimeoutMs: number;
  /**
   * A client that takes no response byte for this long is closed (own server) and its stream from
   * A aborted (both servers).
   */
  readonly clientSendTimeoutMs: number;
  /** Bearer token for /debug/info, /metrics, /dashboard; undefined = loopback and ALLOW_IPS only. */
  readonly adminToken: string | undefined;

  // Observability.
  /** One JSON access-log line per request. */
  readonly accessLog: boolean;
  readonly logFormat: "json" | "pretty";
  /** Access log lines are also appended here. */
  readonly logFile: string | undefined;

  // Serving.
  readonly tlsCertFile: string | undefined;
  readonly tlsKeyFile: string | undefined;
}

/** A start-up configuration problem; its message is one line meant for the operator. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** The environment as a plain record (e.g. `Deno.env.toObject()`). */
export type Env = Readonly<Record<string, string | undefined>>;

/** Options for {@link parseConfig}. */
export interface ParseOptions {
  /** Reads `ROUTES_FILE`; defaults to refusing, so pure callers must pass one to use the file. */
  readFile?: (path: string) => string;
}

const MISSING_UPSTREAM = "UPSTREAM_SERVER_A is not set: it must be the base URL of Server A " +
  "(e.g. https://hub.example.com). Run `cp .env.example .env` and edit it, or set it in the " +
  "environment. For a first look without a Server A, run `deno task demo`.";

/** Parses and validates the relay's configuration. Throws {@link ConfigError}. */
export function parseConfig(env: Env, options: ParseOptions = {}): Config {
  const rawUpstream = value(env, "UPSTREAM_SERVER_A");
  if (rawUpstream === undefined) throw new ConfigError(MISSING_UPSTREAM);
  const upstreams = parseUpstreamList(rawUpstream, "UPSTREAM_SERVER_A");
  const upstreamTimeoutMs = seconds(env, "UPSTREAM_TIMEOUT_SEC");
  return {
    upstreams,
    host: withDefault(env, "HOST"),
    port: port(env, "PORT"),
    debugLog: bool(env, "DEBUG_LOG"),
    upstreamTimeoutMs,
    connectTimeoutMs: seconds(env, "CONNECT_TIMEOUT_SEC"),
    shutdownGraceMs: seconds(env, "SHUTDOWN_GRACE_SEC", { allowZero: true }),
    retryBodyMaxBytes: megabytes(env, "RETRY_BODY_MAX_MB"),
    poolIdleMs: seconds(env, "UPSTREAM_POOL_IDLE_SEC"),
    routes: parseRoutes(env, upstreams, options),
    keepWarmMs: seconds(env, "UPSTREAM_KEEPWARM_SEC", { allowZero: true }),
    spareConnections: bounded(env, "UPSTREAM_SPARE_CONNECTIONS", MAX_SPARES),
    healthPath: apiPath(env, "HEALTH_CHECK_PATH"),
    healthIntervalMs: seconds(env, "HEALTH_CHECK_SEC"),
    downBackoffMs: seconds(env, "UPSTREAM_DOWN_SEC"),
    upstreamHttp2: choice(env, "UPSTREAM_HTTP2", ["auto", "off"] as const),
    allowIps: via(env, "ALLOW_IPS", (raw) => parseCidrList(raw, "ALLOW_IPS")),
    trustedProxies: via(env, "TRUSTED_PROXIES", (raw) => parseCidrList(raw, "TRUSTED_PROXIES")),
    rateLimit: ["0", "off"].includes(value(env, "RATE_LIMIT")?.toLowerCase() ?? "")
      ? null
      : via(env, "RATE_LIMIT", (raw) => parseRate(raw, "RATE_LIMIT")),
    rateLimitStore: choice(env, "RATE_LIMIT_STORE", ["memory", "kv"] as const),
    rateLimitKvUrl: value(env, "RATE_LIMIT_KV_URL"),
    maxConcurrentPerClient: count(env, "MAX_CONCURRENT_PER_CLIENT"),
    maxBodyBytes: megabytes(env, "MAX_BODY_MB"),
    clientBodyTimeoutMs: seconds(env, "CLIENT_BODY_TIMEOUT_SEC"),
    maxConnections: count(env, "MAX_CONNECTIONS"),
    maxConnectionsPerIp: count(env, "MAX_CONNECTIONS_PER_IP"),
    httpServer: choice(env, "HTTP_SERVER", ["relay", "deno"] as const),
    clientHeaderTimeoutMs: seconds(env, "CLIENT_HEADER_TIMEOUT_SEC"),
    clientIdleTimeoutMs: seconds(env, "CLIENT_IDLE_TIMEOUT_SEC"),
    clientSendTimeoutMs: seconds(env, "CLIENT_SEND_TIMEOUT_SEC"),
    adminToken: secret(env, "ADMIN_TOKEN", 16),
    accessLog: bool(env, "ACCESS_LOG"),
    logFormat: choice(env, "LOG_FORMAT", ["json", "pretty"] as const),
    logFile: value(env, "LOG_FILE"),
    ...tls(env),
  };
}

function apiPath(env: Env, name: string): string {
  const raw = withDefault(env, name);
  if (!/^\/v1(beta)?\/[A-Za-z0-9\-._~\/]*$/.test(raw) || raw.includes("..")) {
    fail(name, raw, "a path under /v1/ or /v1beta/, e.g. /v1/_ping");
  }
  return raw;
}

/** Most spare connections per upstream: each is a socket to A and, without keep-warm, a handshake. */
const MAX_SPARES = 16;

function bounded(env: Env, name: string, max: number): number {
  const raw = withDefault(env, name);
  const n = /^\d{1,3}$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= 0 && n <= max)) fail(name, raw, `a whole number from 0 to ${max} (0 = off)`);
  return n;
}

function count(env: Env, name: string): number {
  const raw = withDefault(env, name);
  if (!/^\d{1,9}$/.test(raw)) fail(name, raw, "a whole number (0 = no limit)");
  return Number(raw);
}

function choice<T extends string>(env: Env, name: string, options: readonly T[]): T {
  const raw = withDefault(env, name);
  const v = raw.toLowerCase() as T;
  if (!options.includes(v)) fail(name, raw, `one of ${options.join(", ")}`);
  return v;
}

/** A secret: validated without ever quoting its value. */
function secret(env: Env, name: string, minLength: number): string | undefined {
  const raw = value(env, name);
  if (raw === undefined) return undefined;
  if (raw.length < minLength || !/^[\x21-\x7e]+$/.test(raw)) {
    throw new ConfigError(
      `${name} is invalid: expected at least ${minLength} printable ASCII characters without spaces.`,
    );
  }
  return raw;
}

/** Runs a parser from another pure module, turning its error into a ConfigError. */
function via<T>(env: Env, name: string, parse: (raw: string) => T): T | null {
  const raw = value(env, name);
  if (raw === undefined) return null;
  try {
    return parse(raw);
  } catch (err) {
    throw new ConfigError(err instanceof Error ? err.message : `${name} is invalid.`);
  }
}

function tls(env: Env): { tlsCertFile: string | undefined; tlsKeyFile: string | undefined } {
  const cert = value(env, "TLS_CERT_FILE");
  const key = value(env, "TLS_KEY_FILE");
  if ((cert === undefined) !== (key === undefined)) {
    throw new ConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set together (PEM files).");
  }
  return { tlsCertFile: cert, tlsKeyFile: key };
}

function value(env: Env, name: string): string | undefined {
  const v = env[name]?.trim();
  return v === undefined || v === "" ? undefined : v;
}

/** The variable's value, else its default from `VARS`. */
function withDefault(env: Env, name: string): string {
  const raw = value(env, name) ?? defaultOf(name);
  if (raw === undefined) throw new Error(`${name} has no default in VARS`);
  return raw;
}

function fail(name: string, raw: string, expected: string): never {
  throw new ConfigError(`${name}=${JSON.stringify(raw)} is invalid: expected ${expected}.`);
}

function seconds(env: Env, name: string, opts: { allowZero?: boolean } = {}): number {
  const raw = withDefault(env, name);
  const n = /^\d+(\.\d+)?$/.test(raw) ? Number(raw) : NaN;
  const ok = Number.isFinite(n) && (opts.allowZero ? n >= 0 : n > 0) && n <= 86_400 * 7;
  if (!ok) {
    fail(name, raw, `a number of seconds${opts.allowZero ? "" : " greater than 0"}, e.g. 30`);
  }
  return Math.round(n * 1000);
}

function megabytes(env: Env, name: string): number {
  const raw = withDefault(env, name);
  const n = /^\d+(\.\d+)?$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isFinite(n) || n > 1024 * 1024) fail(name, raw, "a size in megabytes, e.g. 8");
  return Math.round(n * 1024 * 1024);
}

function port(env: Env, name: string): number {
  const raw = withDefault(env, name);
  const n = /^\d{1,5}$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= 0 && n <= 65535)) fail(name, raw, "a TCP port from 1 to 65535 (0 picks a free one)");
  return n;
}

function bool(env: Env, name: string): boolean {
  const raw = withDefault(env, name);
  const v = raw.toLowerCase();
  if (["1", "true", "yes", "on"].includes(v)) return true;
  if (["0", "false", "no", "off"].includes(v)) return false;
  fail(name, raw, "1 or 0 (true/false, yes/no, on/off)");
}

/** Parses a comma-separated list of upstream base URLs in failover order. */
export function parseUpstreamList(raw: string, name: string): Upstream[] {
  const parts = raw.split(",").map((p) => p.trim()).filter((p) => p !== "");
  if (parts.length === 0) fail(name, raw, "one or more base URLs such as https://hub.example.com");
  return parts.map((p) => parseUpstream(p, name));
}

function parseUpstream(raw: string, name: string): Upstream {
  const expected = "an http:// or https:// base URL such as https://hub.example.com or " +
    "https://hub.example.com/api (a comma-separated list for failover)";
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    fail(name, raw, expected);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") fail(name, raw, expected);
  if (url.username !== "" || url.password !== "") {
    throw new ConfigError(
      `${name} must not contain a user name or password: the relay never adds credentials of its own.`,
    );
  }
  if (url.search !== "" || url.hash !== "" || raw.includes("?") || raw.includes("#")) {
    fail(name, raw, `${expected}, without query string or fragment`);
  }
  const prefix = url.pathname.replace(/\/+$/, "");
  if (prefix.split("/").some((s) => s === "." || s === "..")) fail(name, raw, expected);
  const defaultPort = url.protocol === "https:" ? 443 : 80;
  const portNum = url.port === "" ? defaultPort : Number(url.port);
  const hostname = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
  return {
    url: `${url.protocol}//${url.host}${prefix}`,
    protocol: url.protocol,
    hostname,
    port: portNum,
    hostHeader: url.host,
    prefix,
  };
}

function parseRoutes(env: Env, defaults: Upstream[], options: ParseOptions): Map<string, Route> {
  const inline = value(env, "ROUTES");
  const file = value(env, "ROUTES_FILE");
  if (inline !== undefined && file !== undefined) {
    throw new ConfigError("Set either ROUTES or ROUTES_FILE, not both.");
  }
  if (inline === undefined && file === undefined) return new Map();
  let text: string;
  let source: string;
  if (file !== undefined) {
    source = `ROUTES_FILE (${file})`;
    if (options.readFile === undefined) {
      throw new ConfigError(`ROUTES_FILE is set but this environment cannot read files.`);
    }
    try {
      text = options.readFile(file);
    } catch (err) {
      const why = err instanceof Error ? err.name : "unreadable";
      throw new ConfigError(`ROUTES_FILE=${JSON.stringify(file)} cannot be read (${why}).`);
    }
  } else {
    source = "ROUTES";
    text = inline!;
  }
  return parseRoutesJson(text, source, defaults);
}

/** Parses the UID route table: `{"1": {"upstream": "...", "apiKey": "...", "accessKey": "..."}}`. */
export function parseRoutesJson(
  text: string,
  source: string,
  defaults: Upstream[],
): Map<string, Route> {
  const shape = `a JSON object such as {"1": {"upstream": "https://a2.example.com", ` +
    `"apiKey": "sk-...", "accessKey": "..."}}`;
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    throw new ConfigError(`${source} is not valid JSON: expected ${shape}.`);
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw new ConfigError(`${source} must be ${shape}.`);
  }
  const routes = new Map<string, Route>();
  for (const [id, spec] of Object.entries(data as Record<string, unknown>)) {
    const where = `${source} route "${id}"`;
    if (!/^\d{1,9}$/.test(id)) {
      throw new ConfigError(`${where}: route ids must be numbers (used as /u${"{id}"}/v1/...).`);
    }
    if (typeof spec !== "object" || spec === null || Array.isArray(spec)) {
      throw new ConfigError(`${where} must be an object with "upstream", "apiKey", "accessKey".`);
    }
    const s = spec as Record<string, unknown>;
    for (const key of Object.keys(s)) {
      if (!["upstream", "apiKey", "accessKey"].includes(key)) {
        throw new ConfigError(
          `${where}: unknown key "${key}" (allowed: upstream, apiKey, accessKey).`,
        );
      }
    }
    for (const key of ["upstream", "apiKey", "accessKey"]) {
      if (s[key] !== undefined && (typeof s[key] !== "string" || s[key] === "")) {
        throw new ConfigError(`${where}: "${key}" must be a non-empty string.`);
      }
    }
    const upstreams = typeof s.upstream === "string"
      ? parseUpstreamList(s.upstream, `${where} "upstream"`)
      : defaults;
    const apiKey = s.apiKey as string | undefined;
    const accessKey = s.accessKey as string | undefined;
    if (apiKey !== undefined && accessKey === undefined) {
      throw new ConfigError(
        `${where} has an "apiKey" but no "accessKey": anyone could use the key. Add an ` +
          `"accessKey" that clients must send instead.`,
      );
    }
    if (accessKey !== undefined && apiKey === undefined) {
      throw new ConfigError(
        `${where} has an "accessKey" but no "apiKey": the access key is swapped for the apiKey, ` +
          `so both are needed (or neither, to pass clients' own keys through).`,
      );
    }
    for (const [key, v] of [["apiKey", apiKey], ["accessKey", accessKey]] as const) {
      if (v !== undefined && !/^[\x21-\x7e]+$/.test(v)) {
        throw new ConfigError(`${where}: "${key}" must be printable ASCII without spaces.`);
      }
    }
    if (accessKey !== undefined && accessKey.length < 8) {
      throw new ConfigError(`${where}: "accessKey" must be at least 8 characters long.`);
    }
    const route: Route = apiKey !== undefined && accessKey !== undefined
      ? { id, upstreams, apiKey, accessKey }
      : { id, upstreams };
    routes.set(id, route);
  }
  return routes;
}
