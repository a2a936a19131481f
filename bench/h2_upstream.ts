/**
 * HTTP/2 to Server A benchmark: the relay with `UPSTREAM_HTTP2=auto` (h2 chosen by ALPN) against
 * the same relay with `UPSTREAM_HTTP2=off` (the HTTP/1.1 pool), both in front of one fake HTTPS
 * Server A that offers h2 and http/1.1.
 *
 * Fake A is nginx terminating TLS, as in front of most real Server A deployments: one worker,
 * `listen ... ssl http2` (h2 and http/1.1 by ALPN; `http2_max_concurrent_streams` at its default,
 * 128), a self-signed certificate from `route_sim/fake_a.ts`'s `makeCert` (which the relays trust
 * through `DENO_CERT`). `POST /v1/chat/completions` answers the ~1 KB `CHAT_JSON` (`return 200`);
 * `POST /v1/stream?events=N&gap=MS` goes unbuffered to this file run with `--role=sse-backend`
 * (`Deno.serve`, plain HTTP), which streams N events MS apart (the first at once), then `[DONE]`;
 * `/_stats` is nginx's `stub_status`, whose `accepts` counts the TCP connections A accepted.
 * Neither Deno server fits as the TLS end: a `Deno.serve` TLS socket keeps Nagle on, so every
 * HTTP/1.1 response on a kept-alive connection waits ~40 ms for the client's delayed ACK (h2
 * responses do not: a win for h2 that belongs to the fake); and a Deno 2.9 `node:http2` server
 * died in nghttp2 under the SSE row (the GOAWAY assertion of denoland/deno#36788, or a segfault).
 *
 * A third row, deno-minimal (`bench/minimal_relay.ts`: `Deno.serve` + `fetch`, trusting the fake's
 * certificate through `DENO_CERT`; `--no-minimal` leaves it out), is the runtime's floor in the
 * deployment most users have: `fetch` picks h2 or http/1.1 by ALPN as `auto` does (nginx's
 * `accepts` shows which: one connection per stream is http/1.1). It has no `/debug/info`, so its
 * "conns opened" is empty.
 *
 * A fourth row, nginx (`--no-nginx` leaves it out), is the reference proxy of the goals: one worker
 * proxying to A over TLS with upstream keepalive, verifying A's certificate, configured as
 * `bench/nginx.ts`'s reverse proxy otherwise. nginx has no HTTP/2 to an upstream, so it opens a
 * TLS connection to A per concurrent request, as `UPSTREAM_HTTP2=off` does.
 *
 * `--base=TREE` (e.g. a `git worktree` of an older commit) adds that tree's relay over h2 as a row,
 * and the table is followed by this tree's h2 row against it, per round then the median: an A/B
 * within the same rounds, for changes smaller than the drift between runs.
 *
 * Placement as in `run.ts`: relays on core 0 (`--relay-cpu`), fake A, `wrk` and the clients on
 * core 1 (`--load-cpu`). Rows, for `--rounds` rounds, the rows in rotating order:
 *   (a) `wrk -t1 -c50 -d5s -s post.lua` → req/s, and relay CPU µs/request (utime+stime of the
 *       relay's PID from `/proc` over the run ÷ requests);
 *   (b) c=1 latency: `--n` (500) sequential POSTs on one keep-alive client connection (after 100
 *       untimed ones), also direct to A over HTTPS/1.1, so "added" = relay − direct;
 *   (c) `--streams` (1,000) concurrent SSE streams of `--events` (5) events `--gap-ms` (200) apart,
 *       all opened at once: how many completed byte-exact, the connections the relay opened to A
 *       during the run (Δ `created` of `/debug/info`'s pool: TLS connections for HTTP/1.1,
 *       sessions for h2; the first, opened before the run, is not in it), the TCP
 *       connections A accepted (nginx `accepts`; the idle relay's keep-warm may add one), the
 *       relay's CPU over the run ÷ streams (for HTTP/1.1 it includes a TLS handshake to A per
 *       stream), and the relay's RSS peak (sampled every 100 ms).
 *
 *   deno run -A bench/h2_upstream.ts [--quick] [--rounds=3] [--duration=5] [--n=500]
 *     [--streams=1000] [--events=5] [--gap-ms=200] [--json=out.json] [--prof] [--no-minimal]
 *     [--no-nginx] [--base=TREE]
 *
 * `--prof`: each relay runs under `--cpu-prof`; the self time by function and by file of its whole
 * run is printed after the table (where the HTTP/2 client's extra CPU goes).
 * `--quick`: 1 round, 2 s wrk runs, 200 requests at c=1. The whole run is time-bounded; every
 * child process is stopped by its own PID.
 */

import {
  BENCH,
  CHAT_JSON,
  CHAT_REQUEST,
  cpuSeconds,
  freePort,
  HOST,
  installCleanup,
  median,
  memory,
  numFlag,
  parseFlags,
  type Proc,
  progress,
  quantile,
  round,
  rssSampler,
  runToEnd,
  sleep,
  spawn,
  startCalibration,
  startRelay,
  tempDir,
  waitForPort,
} from "./common.ts";
import { buildRequest, Client, parseTarget } from "./http_client.ts";
import { preamble, proxyConfig, startNginx } from "./nginx.ts";
import { makeCert } from "./route_sim/fake_a.ts";
import { summarise, summaryMarkdown } from "./profile_summary.ts";

const SELF = `${BENCH}/h2_upstream.ts`;
/** The calibration rows' names. */
const MINIMAL = "deno-minimal";
const NGINX = "nginx";
/** The `--base` tree's relay over h2. */
const BASE = "UPSTREAM_HTTP2=auto (--base)";
const enc = new TextEncoder();

// ---------------------------------------------------------------------------------------------
// Fake Server A: nginx (TLS, h2 and http/1.1) in front of an SSE backend (--role=sse-backend)

/** One SSE event of the fake's stream; the whole body is {@link sseBody}. */
function sseEvent(i: number): string {
  return `data: {"id":"chatcmpl-h2bench","object":"chat.completion.chunk","choices":[{"index":0,` +
    `"delta":{"content":"token ${i} of the h2 benchmark stream"},"finish_reason":null}]}\n\n`;
}

/** The exact body of `POST /v1/stream?events=N`. */
export function sseBody(events: number): string {
  let s = "";
  for (let i = 0; i < events; i++) s += sseEvent(i);
  return s + "data: [DONE]\n\n";
}

/** Serves the SSE stream over plain HTTP (behind fake A's nginx) until `maxSec` or SIGTERM. */
async function serveSseBackend(port: number, maxSec: number): Promise<void> {
  const server = Deno.serve({
    hostname: HOST,
    port,
    onListen() {},
    onError: () => new Response("sse backend error", { status: 500 }),
  }, async (req) => {
    if (req.body !== null) await req.arrayBuffer();
    const url = new URL(req.url);
    const events = Number(url.searchParams.get("events") ?? "5");
    const gap = Number(url.searchParams.get("gap") ?? "200");
    let timer: ReturnType<typeof setTimeout> | undefined;
    let i = 0;
    const body = new ReadableStream<Uint8Array>({
      start(ctrl) {
        const tick = () => {
          try {
            if (i < events) {
              ctrl.enqueue(enc.encode(sseEvent(i++)));
              timer = setTimeout(tick, gap);
              return;
            }
            ctrl.enqueue(enc.encode("data: [DONE]\n\n"));
            ctrl.close();
          } catch { /* nginx went away */ }
        };
        tick();
      },
      cancel() {
        clearTimeout(timer);
      },
    });
    return new Response(body, {
      headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
    });
  });
  const t = setTimeout(() => server.shutdown(), maxSec * 1000);
  Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
  await server.finished;
  clearTimeout(t);
}

/**
 * nginx config of fake A: HTTPS on `port` offering h2 and http/1.1 by ALPN (one worker, Nagle off,
 * `http2_max_concurrent_streams` at its default of 128), `POST /v1/chat/completions` → the fixed
 * JSON, `/v1/stream` → the SSE backend unbuffered, `/_stats` → `stub_status` (its `accepts` counts
 * TCP connections).
 */
function fakeAConfig(
  dir: string,
  o: { port: number; backendPort: number; certFile: string; keyFile: string },
): string {
  // The JSON has no single quotes, so it can sit in a single-quoted nginx string.
  return `${preamble(dir)}  tcp_nodelay on;
  upstream sse {
    server ${HOST}:${o.backendPort};
    keepalive 256;
  }
  server {
    listen ${HOST}:${o.port} ssl http2 backlog=4096;
    ssl_certificate ${o.certFile};
    ssl_certificate_key ${o.keyFile};
    ssl_protocols TLSv1.2 TLSv1.3;
    location = /v1/chat/completions {
      default_type application/json;
      return 200 '${CHAT_JSON}';
    }
    location = /v1/stream {
      proxy_pass http://sse;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 600s;
    }
    location = /_stats {
      stub_status;
    }
    location / {
      default_type application/json;
      return 200 '{"status":"pong"}';
    }
  }
}
`;
}

// ---------------------------------------------------------------------------------------------
// Clients (--role=latency, --role=sse), run as their own processes on the load core

/** c=1 latency of one target, ms. */
export interface LatencyRow {
  n: number;
  errors: number;
  p50: number;
  p99: number;
  mean: number;
}

async function latencyClient(
  url: string,
  o: { n: number; warmup: number; maxSec: number; caCerts?: string[] },
): Promise<LatencyRow> {
  const { target, path } = parseTarget(url, o.caCerts);
  const req = buildRequest(
    "POST",
    path,
    `${target.hostname}:${target.port}`,
    { "content-type": "application/json", "authorization": "Bearer sk-bench-not-a-real-key" },
    CHAT_REQUEST,
  );
  let client = await Client.open(target);
  const samples: number[] = [];
  let errors = 0;
  const deadline = performance.now() + o.maxSec * 1000;
  for (let i = 0; i < o.warmup + o.n && performance.now() < deadline; i++) {
    try {
      if (client.closed) client = await Client.open(target);
      const t = await client.exchange(req);
      if (t.status !== 200) errors++;
      else if (i >= o.warmup) samples.push(t.endAt - t.sentAt);
    } catch {
      errors++;
      client.close();
    }
  }
  client.close();
  return {
    n: samples.length,
    errors,
    p50: round(quantile(samples, 0.5), 4),
    p99: round(quantile(samples, 0.99), 4),
    mean: round(samples.reduce((a, b) => a + b, 0) / Math.max(1, samples.length), 4),
  };
}

/** Outcome of one concurrent-SSE run. */
export interface SseRow {
  streams: number;
  /** Status 200 and a body identical to the fake's, byte for byte. */
  exact: number;
  /** Streams with a full body that differed from the expected one. */
  mismatched: number;
  /** Most streams that had received their first byte and not yet ended, at once. */
  peakOpen: number;
  /** Request written → last byte, ms (the fake alone takes (events − 1) × gap). */
  durationP50: number;
  durationP99: number;
  wallMs: number;
  errors: string[];
}

async function sseClient(
  url: string,
  o: { streams: number; events: number; maxSec: number },
): Promise<SseRow> {
  const { target, path } = parseTarget(url);
  const req = buildRequest(
    "POST",
    path,
    `${target.hostname}:${target.port}`,
    { "content-type": "application/json", "accept": "text/event-stream" },
    JSON.stringify({
      model: "gpt-4o-mini",
      stream: true,
      messages: [{ role: "user", content: "hi" }],
    }),
  );
  const expected = sseBody(o.events);
  let open = 0;
  let peakOpen = 0;
  let mismatched = 0;
  const durations: number[] = [];
  const errors = new Map<string, number>();
  const fail = (e: string) => errors.set(e, (errors.get(e) ?? 0) + 1);
  const one = async (): Promise<boolean> => {
    let client: Client | null = null;
    let started = false;
    try {
      client = await Client.open(target, 8 * 1024);
      const d = new TextDecoder();
      let body = "";
      const t = await client.exchange(req, (bytes) => {
        if (!started) {
          started = true;
          if (++open > peakOpen) peakOpen = open;
        }
        body += d.decode(bytes, { stream: true });
      });
      body += d.decode();
      if (t.status !== 200) {
        fail(`status ${t.status}`);
        return false;
      }
      if (body !== expected) {
        mismatched++;
        fail("body differs");
        return false;
      }
      durations.push(t.endAt - t.sentAt);
      return true;
    } catch (err) {
      fail(err instanceof Error ? err.message : "error");
      return false;
    } finally {
      if (started) open--;
      client?.close();
    }
  };
  const t0 = performance.now();
  const runs = Array.from({ length: o.streams }, one);
  const deadline = sleep(o.maxSec * 1000).then(() => null);
  const all = await Promise.race([Promise.all(runs), deadline]);
  if (all === null) fail("timed out");
  return {
    streams: o.streams,
    exact: (all ?? []).filter((ok) => ok).length,
    mismatched,
    peakOpen,
    durationP50: round(quantile(durations, 0.5), 1),
    durationP99: round(quantile(durations, 0.99), 1),
    wallMs: round(performance.now() - t0, 0),
    errors: [...errors].map(([e, n]) => `${n}× ${e}`).slice(0, 5),
  };
}

// ---------------------------------------------------------------------------------------------
// Orchestration

/** Options of the benchmark. */
export interface H2BenchOptions {
  quick: boolean;
  rounds: number;
  durationSec: number;
  n: number;
  warmup: number;
  streams: number;
  events: number;
  gapMs: number;
  relayCpu: string;
  loadCpu: string;
  /** Adds deno-minimal (`fetch` to A) as a row. */
  minimal: boolean;
  /** Adds nginx as a reverse proxy to A (HTTP/1.1 over TLS, kept alive) as a row. */
  nginx: boolean;
  /** Another checkout whose relay over h2 is a row too (`--base=TREE`). */
  base?: string;
  /** Runs each relay under `--cpu-prof`, its profile in `<profDir>/<mode>/` (`--prof`). */
  profDir?: string;
}

/** Pool counters of the one upstream, from `/debug/info`. */
interface PoolInfo {
  protocol: string;
  created: number;
  reused: number;
  sessions?: number;
}

/** One round of one relay. */
interface RoundSample {
  rps: number;
  requests: number;
  non2xx: number;
  socketErrors: number;
  cpuUsPerReq: number;
  latency: LatencyRow;
  sse: SseRow & {
    /** Δ `created` over the SSE run, and `created` after it. */
    opened: number;
    createdAfter: number;
    sessionsAfter: number | null;
    /** TCP connections A (nginx) accepted during the run. */
    aConns: number;
    rssPeakMb: number;
    cpuUsPerStream: number;
  };
  /** Busier core's load (%) just before the round's wrk row (other users of the machine). */
  bgBusyPct: number;
}

/** The medians per relay (and direct). */
export interface H2Summary {
  name: string;
  protocol: string;
  rps: number;
  cpuUsPerReq: number;
  p50Ms: number;
  p99Ms: number;
  addedP50Ms: number;
  addedP99Ms: number;
  sseExact: number;
  sseStreams: number;
  sseDurationP99Ms: number;
  /** Relay CPU over the SSE run ÷ streams: set-up, every event, the end (and A's handshakes). */
  sseCpuUsPerStream: number;
  connsOpened: number;
  aConns: number;
  rssPeakMb: number;
}

interface WrkResult {
  rps: number;
  requests: number;
  non2xx: number;
  socketErrors: number;
}

function wrkScript(dir: string): string {
  const path = `${dir}/post.lua`;
  Deno.writeTextFileSync(
    path,
    `wrk.method = "POST"
wrk.body = [[${CHAT_REQUEST}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-not-a-real-key"
`,
  );
  return path;
}

async function wrk(
  url: string,
  script: string,
  seconds: number,
  conns: number,
  cpu: string,
): Promise<WrkResult> {
  const out = await runToEnd("wrk", [
    "/usr/bin/wrk",
    "-t1",
    `-c${conns}`,
    `-d${seconds}s`,
    "--timeout",
    "5s",
    "-s",
    script,
    url,
  ], { cpu, timeoutMs: (seconds + 20) * 1000 });
  const num = (re: RegExp) => Number(re.exec(out)?.[1] ?? 0);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    rps: num(/Requests\/sec:\s+([\d.]+)/),
    requests: num(/(\d+) requests in/),
    non2xx: num(/Non-2xx or 3xx responses: (\d+)/),
    socketErrors: socket ? socket.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
  };
}

/** Busy and total jiffies per core from /proc/stat. */
function coreTimes(): Map<string, { busy: number; total: number }> {
  const out = new Map<string, { busy: number; total: number }>();
  for (const line of Deno.readTextFileSync("/proc/stat").split("\n")) {
    const m = /^(cpu\d+)\s+(.*)$/.exec(line);
    if (m === null) continue;
    const v = m[2]!.split(/\s+/).map(Number);
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    out.set(m[1]!, { busy: total - idle, total });
  }
  return out;
}

/**
 * Waits (at most `maxSec`) until every core is below `thresholdPct` busy over 0.5 s; returns the
 * busiest core's load in the last window.
 */
async function waitQuiet(maxSec: number, thresholdPct = 25): Promise<number> {
  const deadline = performance.now() + maxSec * 1000;
  while (true) {
    const a = coreTimes();
    await sleep(500);
    const b = coreTimes();
    let busiest = 0;
    for (const [cpu, x] of b) {
      const y = a.get(cpu);
      if (y === undefined || x.total === y.total) continue;
      busiest = Math.max(busiest, ((x.busy - y.busy) / (x.total - y.total)) * 100);
    }
    if (busiest <= thresholdPct || performance.now() > deadline) return round(busiest, 0);
  }
}

async function poolInfo(relayPort: number, token: string, aPort: number): Promise<PoolInfo> {
  const res = await fetch(`http://${HOST}:${relayPort}/debug/info`, {
    headers: { authorization: `Bearer ${token}` },
  });
  if (!res.ok) throw new Error(`/debug/info: status ${res.status}`);
  const info = await res.json() as { pools?: Record<string, PoolInfo> };
  const pool = Object.entries(info.pools ?? {}).find(([k]) => k.endsWith(`:${aPort}`))?.[1];
  if (pool === undefined) throw new Error("/debug/info has no pool for fake A yet");
  return pool;
}

/** Runs the benchmark; returns raw samples per relay and the medians. */
export async function h2Bench(o: H2BenchOptions): Promise<{
  raw: Record<string, RoundSample[]>;
  direct: LatencyRow[];
  summary: H2Summary[];
  idleRssMb: Record<string, number>;
}> {
  const dir = tempDir("h2");
  const procs: Proc[] = [];
  const token = `bench-${crypto.randomUUID()}`;
  try {
    const { certFile, keyFile } = await makeCert(dir);
    const caCerts = [Deno.readTextFileSync(certFile)];
    const backendPort = freePort();
    const backend = spawn("sse-backend", [
      "deno",
      "run",
      "-A",
      SELF,
      "--role=sse-backend",
      `--port=${backendPort}`,
      "--max-sec=1800",
    ], { cpu: o.loadCpu, logFile: `${dir}/sse-backend.log` });
    procs.push(backend);
    await waitForPort(backendPort, 15_000, backend);
    const aPort = freePort();
    const aDir = `${dir}/nginx-a`;
    procs.push(
      await startNginx(
        "fake-a",
        aDir,
        fakeAConfig(aDir, { port: aPort, backendPort, certFile, keyFile }),
        { cpu: o.loadCpu, ports: [aPort] },
      ),
    );
    const aBase = `https://${HOST}:${aPort}`;
    /** nginx's `accepts` counter, asked on a connection of its own (so counted in it). */
    const aAccepts = async (): Promise<number> => {
      const client = Deno.createHttpClient({ caCerts });
      try {
        const text = await (await fetch(`${aBase}/_stats`, { client })).text();
        const m = /accepts handled requests\s+(\d+)/.exec(text);
        if (m === null) throw new Error(`unexpected stub_status: ${text.slice(0, 200)}`);
        return Number(m[1]);
      } finally {
        client.close();
      }
    };

    /**
     * `protocol`: what the row speaks to A; null for the relay's rows, which report it (and their
     * pool) in `/debug/info`.
     */
    const relays: Array<{ name: string; proc: Proc; port: number; protocol: string | null }> = [];
    for (const mode of ["auto", "off"]) {
      const port = freePort();
      const proc = await startRelay(`relay-h2-${mode}`, {
        port,
        upstream: aBase,
        cpu: o.relayCpu,
        env: {
          DENO_CERT: certFile,
          UPSTREAM_HTTP2: mode,
          ACCESS_LOG: "0",
          ADMIN_TOKEN: token,
        },
        logFile: `${dir}/relay-${mode}.log`,
        ...(o.profDir === undefined
          ? {}
          : { denoFlags: ["--cpu-prof", `--cpu-prof-dir=${o.profDir}/${mode}`] }),
      });
      procs.push(proc);
      relays.push({ name: `UPSTREAM_HTTP2=${mode}`, proc, port, protocol: null });
    }
    if (o.base !== undefined) {
      // Another tree's relay over h2, measured in the same rounds: an A/B whose per-round ratio
      // is steadier than two runs' medians on a machine whose speed drifts.
      const port = freePort();
      const proc = await startRelay("relay-h2-base", {
        port,
        upstream: aBase,
        cpu: o.relayCpu,
        script: `${o.base}/main.ts`,
        env: { DENO_CERT: certFile, UPSTREAM_HTTP2: "auto", ACCESS_LOG: "0", ADMIN_TOKEN: token },
        logFile: `${dir}/relay-base.log`,
      });
      procs.push(proc);
      relays.push({ name: BASE, proc, port, protocol: null });
    }
    if (o.minimal) {
      // The floor in the deployment most users have: `fetch` to an HTTPS A picks h2 or http/1.1
      // by ALPN, as the relay's `auto` does.
      const { proc, port } = await startCalibration(MINIMAL, {
        script: "minimal_relay.ts",
        upstream: aBase,
        cpu: o.relayCpu,
        env: { DENO_CERT: certFile },
        logFile: `${dir}/minimal.log`,
        ...(o.profDir === undefined
          ? {}
          : { denoFlags: ["--cpu-prof", `--cpu-prof-dir=${o.profDir}/minimal`] }),
      });
      procs.push(proc);
      relays.push({ name: MINIMAL, proc, port, protocol: "fetch" });
    }
    if (o.nginx) {
      // The reference proxy in this deployment: nginx has no HTTP/2 to an upstream, so it keeps
      // TLS connections to A alive and opens one per concurrent request, as UPSTREAM_HTTP2=off.
      const port = freePort();
      const nDir = `${dir}/nginx-proxy`;
      const proc = await startNginx(
        "nginx-proxy",
        nDir,
        proxyConfig(nDir, [{
          listen: port,
          upstreamPort: aPort,
          tls: { trustedCert: certFile, name: "localhost" },
        }]),
        { cpu: o.relayCpu, ports: [port] },
      );
      procs.push(proc);
      relays.push({ name: NGINX, proc, port, protocol: "http/1.1" });
    }
    await sleep(2000);
    const idleRssMb = Object.fromEntries(relays.map((r) => [r.name, memory(r.proc.pid).rssMb]));

    const script = wrkScript(dir);
    const chat = (port: number) => `http://${HOST}:${port}/v1/chat/completions`;
    const stream = (port: number) =>
      `http://${HOST}:${port}/v1/stream?events=${o.events}&gap=${o.gapMs}`;
    // Warm every path (JIT, pools, the ALPN choice) before measuring.
    for (const r of relays) await wrk(chat(r.port), script, 1, 10, o.loadCpu);
    for (const r of relays.filter((r) => r.protocol === null)) {
      const p = await poolInfo(r.port, token, aPort);
      progress(`${r.name}: upstream protocol ${p.protocol}`);
    }
    const latency = (url: string, ca?: string) =>
      runToEnd("latency", [
        "deno",
        "run",
        "-A",
        SELF,
        "--role=latency",
        `--url=${url}`,
        `--n=${o.n}`,
        `--warmup=${o.warmup}`,
        ...(ca ? [`--ca=${ca}`] : []),
        "--max-sec=60",
      ], { cpu: o.loadCpu, timeoutMs: 90_000 }).then((s) => JSON.parse(s) as LatencyRow);

    const raw: Record<string, RoundSample[]> = {};
    const direct: LatencyRow[] = [];
    const quietSec = o.quick ? 5 : 15;
    for (let k = 0; k < o.rounds; k++) {
      // Each round in another order, so no row always follows the same neighbour.
      const order = relays.map((_, i) => relays[(i + k) % relays.length]!);
      const partial = new Map<string, Partial<RoundSample>>();
      const bgBusyPct = await waitQuiet(quietSec);
      for (const r of order) {
        progress(`round ${k + 1}/${o.rounds}: wrk -c50 ${o.durationSec}s → ${r.name}`);
        const c0 = cpuSeconds(r.proc.pid);
        const w = await wrk(chat(r.port), script, o.durationSec, 50, o.loadCpu);
        const cpu = cpuSeconds(r.proc.pid) - c0;
        partial.set(r.name, {
          ...w,
          cpuUsPerReq: round((cpu / Math.max(1, w.requests)) * 1e6, 1),
          bgBusyPct,
        });
        await sleep(500);
      }
      await waitQuiet(quietSec);
      progress(`round ${k + 1}/${o.rounds}: c=1 × ${o.n} → direct (HTTPS/1.1 to A)`);
      direct.push(await latency(`${aBase}/v1/chat/completions`, certFile));
      for (const r of order) {
        progress(`round ${k + 1}/${o.rounds}: c=1 × ${o.n} → ${r.name}`);
        partial.get(r.name)!.latency = await latency(chat(r.port));
      }
      for (const r of order) {
        await waitQuiet(quietSec);
        progress(
          `round ${k + 1}/${o.rounds}: ${o.streams} SSE streams × ${o.events} events → ${r.name}`,
        );
        const before = r.protocol === null ? await poolInfo(r.port, token, aPort) : null;
        const accepts0 = await aAccepts();
        const c0 = cpuSeconds(r.proc.pid);
        const rss = rssSampler(r.proc.pid, 100);
        const out = await runToEnd("sse", [
          "deno",
          "run",
          "-A",
          SELF,
          "--role=sse",
          `--url=${stream(r.port)}`,
          `--streams=${o.streams}`,
          `--events=${o.events}`,
          "--max-sec=60",
        ], { cpu: o.loadCpu, timeoutMs: 90_000 });
        const rssPeakMb = rss.stop();
        const cpu = cpuSeconds(r.proc.pid) - c0;
        const after = r.protocol === null ? await poolInfo(r.port, token, aPort) : null;
        // Minus the connection of the second `aAccepts` itself.
        const aConns = (await aAccepts()) - accepts0 - 1;
        partial.get(r.name)!.sse = {
          ...(JSON.parse(out) as SseRow),
          opened: after !== null && before !== null ? after.created - before.created : NaN,
          createdAfter: after?.created ?? NaN,
          sessionsAfter: after?.sessions ?? null,
          aConns,
          rssPeakMb,
          cpuUsPerStream: round((cpu / o.streams) * 1e6, 0),
        };
        await sleep(1000);
      }
      for (const r of relays) (raw[r.name] ??= []).push(partial.get(r.name) as RoundSample);
    }

    const protocols = new Map<string, string>();
    for (const r of relays) {
      protocols.set(r.name, r.protocol ?? (await poolInfo(r.port, token, aPort)).protocol);
    }
    const summary: H2Summary[] = [{
      name: "direct to A (HTTPS/1.1, c=1 only)",
      protocol: "http/1.1",
      rps: NaN,
      cpuUsPerReq: NaN,
      p50Ms: median(direct.map((d) => d.p50)),
      p99Ms: median(direct.map((d) => d.p99)),
      addedP50Ms: NaN,
      addedP99Ms: NaN,
      sseExact: NaN,
      sseStreams: NaN,
      sseDurationP99Ms: NaN,
      sseCpuUsPerStream: NaN,
      connsOpened: NaN,
      aConns: NaN,
      rssPeakMb: NaN,
    }];
    for (const r of relays) {
      const s = raw[r.name]!;
      summary.push({
        name: r.name,
        protocol: protocols.get(r.name) ?? "?",
        rps: median(s.map((x) => x.rps)),
        cpuUsPerReq: median(s.map((x) => x.cpuUsPerReq)),
        p50Ms: median(s.map((x) => x.latency.p50)),
        p99Ms: median(s.map((x) => x.latency.p99)),
        addedP50Ms: median(s.map((x, i) => x.latency.p50 - direct[i]!.p50)),
        addedP99Ms: median(s.map((x, i) => x.latency.p99 - direct[i]!.p99)),
        sseExact: Math.min(...s.map((x) => x.sse.exact)),
        sseStreams: o.streams,
        sseDurationP99Ms: median(s.map((x) => x.sse.durationP99)),
        sseCpuUsPerStream: median(s.map((x) => x.sse.cpuUsPerStream)),
        connsOpened: median(s.map((x) => x.sse.opened)),
        aConns: median(s.map((x) => x.sse.aConns)),
        rssPeakMb: Math.max(...s.map((x) => x.sse.rssPeakMb)),
      });
    }
    return { raw, direct, summary, idleRssMb };
  } finally {
    for (const p of procs.reverse()) await p.stop();
    Deno.removeSync(dir, { recursive: true });
  }
}

const fmt = (n: number, d = 2) => (Number.isFinite(n) ? String(round(n, d)) : "–");

/**
 * This tree's relay over h2 against the `--base` tree's, per round then the median (range in
 * brackets): ratios of CPU, differences of latency. Empty without a base row.
 */
export function baseComparison(raw: Record<string, RoundSample[]>): string {
  const a = raw["UPSTREAM_HTTP2=auto"], b = raw[BASE];
  if (a === undefined || b === undefined) return "";
  const per = (f: (x: RoundSample, y: RoundSample) => number, d: number, unit = "") => {
    const v = a.map((x, i) => f(x, b[i]!));
    return `${fmt(median(v), d)}${unit} (${fmt(Math.min(...v), d)} to ${fmt(Math.max(...v), d)})`;
  };
  return `This tree's relay over h2 against --base's, per round then the median: CPU per request ${
    per((x, y) => x.cpuUsPerReq / y.cpuUsPerReq, 2, " ×")
  }, req/s ${per((x, y) => x.rps / y.rps, 2, " ×")}, SSE CPU per stream ${
    per((x, y) => x.sse.cpuUsPerStream / y.sse.cpuUsPerStream, 2, " ×")
  }, c=1 p99 ${per((x, y) => x.latency.p99 - y.latency.p99, 3, " ms")}, SSE p99 duration ${
    per((x, y) => x.sse.durationP99 - y.sse.durationP99, 0, " ms")
  }.\n`;
}

/** The medians as a markdown table. */
export function h2Table(summary: H2Summary[], o: H2BenchOptions): string {
  let t = `| relay | upstream protocol | req/s (wrk -c50, ${o.durationSec} s) | CPU µs/req | ` +
    `c=1 p50 | c=1 p99 | added p50 | added p99 | ${o.streams} SSE streams byte-exact | ` +
    `SSE p99 duration | SSE CPU µs/stream | conns opened to A (Δ created) | conns A accepted | ` +
    `RSS peak (SSE) |\n` +
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const s of summary) {
    const relay = Number.isFinite(s.rps);
    t += `| ${s.name} | ${s.protocol} | ${fmt(s.rps, 0)} | ${fmt(s.cpuUsPerReq, 1)} | ${
      fmt(s.p50Ms, 3)
    } ms | ${fmt(s.p99Ms, 3)} ms | ${relay ? `${fmt(s.addedP50Ms, 3)} ms` : "–"} | ${
      relay ? `${fmt(s.addedP99Ms, 3)} ms` : "–"
    } | ${relay ? `${s.sseExact}/${s.sseStreams}` : "–"} | ${
      relay ? `${fmt(s.sseDurationP99Ms, 0)} ms` : "–"
    } | ${fmt(s.sseCpuUsPerStream, 0)} | ${fmt(s.connsOpened, 0)} | ${fmt(s.aConns, 0)} | ${
      relay ? `${fmt(s.rssPeakMb, 1)} MB` : "–"
    } |\n`;
  }
  return t;
}

if (import.meta.main) {
  const f = parseFlags(Deno.args);
  const role = f.get("role") ?? "bench";
  if (role === "sse-backend") {
    await serveSseBackend(numFlag(f, "port", 0), numFlag(f, "max-sec", 1800));
  } else if (role === "latency" || role === "sse") {
    const url = f.get("url");
    if (url === undefined) throw new Error("--url is required");
    const maxSec = numFlag(f, "max-sec", 60);
    const hardStop = setTimeout(() => Deno.exit(3), (maxSec + 20) * 1000);
    const ca = f.get("ca");
    const out = role === "latency"
      ? await latencyClient(url, {
        n: numFlag(f, "n", 500),
        warmup: numFlag(f, "warmup", 100),
        maxSec,
        ...(ca !== undefined ? { caCerts: [Deno.readTextFileSync(ca)] } : {}),
      })
      : await sseClient(url, {
        streams: numFlag(f, "streams", 1000),
        events: numFlag(f, "events", 5),
        maxSec,
      });
    clearTimeout(hardStop);
    // deno-lint-ignore no-console
    console.log(JSON.stringify(out));
    Deno.exit(0);
  } else {
    const quick = f.has("quick");
    const opts: H2BenchOptions = {
      quick,
      rounds: numFlag(f, "rounds", quick ? 1 : 3),
      durationSec: numFlag(f, "duration", quick ? 2 : 5),
      n: numFlag(f, "n", quick ? 200 : 500),
      warmup: quick ? 50 : 100,
      streams: numFlag(f, "streams", 1000),
      events: numFlag(f, "events", 5),
      gapMs: numFlag(f, "gap-ms", 200),
      relayCpu: f.get("relay-cpu") ?? "0",
      loadCpu: f.get("load-cpu") ?? "1",
      minimal: !f.has("no-minimal"),
      nginx: !f.has("no-nginx"),
      ...(f.get("base") !== undefined ? { base: f.get("base")!.replace(/\/$/, "") } : {}),
      ...(f.has("prof") ? { profDir: tempDir("h2-prof") } : {}),
    };
    const disarm = installCleanup(opts.rounds * (opts.durationSec * 2 + 120) + 120);
    const started = performance.now();
    const result = await h2Bench(opts);
    disarm();
    const elapsedSec = round((performance.now() - started) / 1000, 0);
    const json = f.get("json");
    if (json !== undefined) {
      Deno.writeTextFileSync(
        json,
        JSON.stringify({ opts, deno: Deno.version.deno, elapsedSec, ...result }, null, 2) + "\n",
      );
    }
    // deno-lint-ignore no-console
    console.log(
      `### HTTP/2 vs HTTP/1.1 to an HTTPS Server A, deno-minimal and nginx (medians of ${opts.rounds}; SSE: ${opts.events} ` +
        `events ${opts.gapMs} ms apart)\n\n${h2Table(result.summary, opts)}\nIdle RSS: ${
          Object.entries(result.idleRssMb).map(([k, v]) => `${k} ${v} MB`).join(", ")
        }. Run took ${elapsedSec} s.\n${baseComparison(result.raw)}`,
    );
    // nginx has no profile of this kind.
    const profiled = ["auto", "off", ...(opts.minimal ? ["minimal"] : [])];
    for (const mode of opts.profDir === undefined ? [] : profiled) {
      const at = `${opts.profDir}/${mode}`;
      const file = [...Deno.readDirSync(at)].find((e) => e.name.endsWith(".cpuprofile"));
      if (file === undefined) continue;
      const summary = summarise(JSON.parse(Deno.readTextFileSync(`${at}/${file.name}`)));
      // deno-lint-ignore no-console
      console.log(
        `#### Profile, ${mode === "minimal" ? MINIMAL : `UPSTREAM_HTTP2=${mode}`} (whole run)\n\n${
          summaryMarkdown(summary, 20)
        }`,
      );
    }
  }
}
