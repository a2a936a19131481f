/**
 * What the relay's HTTP/2 client costs against `node:http2` (which the relay used until
 * 2026-12-07) and against its own HTTP/1.1 client: CPU per request of the client process, against
 * one TLS nginx upstream offering h2 and http/1.1, the ~1 KB chat completion as in `run.ts`.
 *   own-h2  — `H2Pool` + `exchange2` (lib/upstream/http2.ts on h2_session.ts): the relay's path
 *   node-h2 — `node:http2` `connect()` + `session.request()`, the body collected from 'data' until
 *             'end', nothing around it (the relay's old path had its exchange on top: a floor)
 *   own-h1  — `Pool` + `exchange` (lib/upstream/http1.ts) over TLS
 * Shapes: c=1 (sequential, one connection) and c=50 (50 in flight: 50 streams on one h2
 * session; 50 connections for HTTP/1.1). Each measurement is its own Deno process on core 0
 * (taskset -c 0) after a warm-up; nginx runs on core 1. Kinds alternate in rotated order per
 * round; compare within a round. Every response is checked: status 200, the body byte-exact, and
 * the header list equal to the one a verify step saw through own-h2 and node-h2 at once.
 *
 *   deno run -A bench/h2_client.ts [--rounds=5] [--n1=5000] [--n50=20000] [--kinds=own-h2,node-h2]
 *     [--json=out.json] [--prof=DIR]
 *
 * `--prof=DIR`: each client runs under `--cpu-prof`; the last round's profile of each kind and
 * shape is kept in DIR (summarise with `bench/profile_summary.ts`).
 */

import type http2 from "node:http2";
import process from "node:process";
import {
  CHAT_JSON,
  freePort,
  HOST,
  installCleanup,
  median,
  paddedChatRequest,
  parseFlags,
  type Proc,
  progress,
  round,
  runToEnd,
  sleep,
  spawn,
  waitForPort,
} from "./common.ts";
import { preamble } from "./nginx.ts";
import { makeCert } from "./route_sim/fake_a.ts";
import {
  BodySource,
  exchange,
  type ExchangeOptions,
  type ExchangeRequest,
  Pool,
  type UpstreamResponse,
} from "../lib/upstream/http1.ts";
import { exchange2, H2Pool } from "../lib/upstream/http2.ts";
import { Watchdog } from "../lib/http/mod.ts";

const SELF = new URL(import.meta.url).pathname;
const PATH = "/v1/chat/completions";
const REQUEST_BODY = new TextEncoder().encode(paddedChatRequest(1024));
const EXPECTED_BODY = new TextEncoder().encode(CHAT_JSON);
/** What an OpenAI SDK sends (8 fields), besides pseudo-headers and content-length. */
const REQ_HEADERS: Array<[string, string]> = [
  ["content-type", "application/json"],
  ["authorization", "Bearer sk-bench-not-a-real-key-0123456789abcdef"],
  ["user-agent", "OpenAI/JS 4.77.0"],
  ["accept", "application/json"],
  ["x-stainless-lang", "js"],
  ["x-stainless-package-version", "4.77.0"],
  ["x-stainless-os", "Linux"],
  ["x-stainless-runtime", "node"],
];

type Kind = "own-h2" | "node-h2" | "own-h1";
const KINDS: Kind[] = ["own-h2", "node-h2", "own-h1"];

interface One {
  status: number;
  headers: Array<[string, string]>;
  body: Uint8Array;
}

interface ClientImpl {
  /** One request; `full` = also return the header list (else headers may be empty). */
  one(): Promise<One>;
  close(): void;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Clients

/** The request body as the relay hands it to either client. */
function requestBody(): BodySource {
  let i = 0;
  return new BodySource(
    {
      read: () => Promise.resolve(i++ === 0 ? REQUEST_BODY : null),
      cancel() {},
    },
    REQUEST_BODY.length,
    1 << 20,
  );
}

async function bodyOf(res: UpstreamResponse): Promise<Uint8Array> {
  if (res.complete !== null) return res.complete;
  if (res.body !== null) return new Uint8Array(await new Response(res.body).arrayBuffer());
  return new Uint8Array(0);
}

/** A client over one of the relay's own pools: `send` is its exchange function. */
function ownClient(
  pool: { close(): void },
  send: (req: ExchangeRequest, options: ExchangeOptions) => Promise<UpstreamResponse>,
): Promise<ClientImpl> {
  const watchdog = new Watchdog(30_000);
  return Promise.resolve({
    async one() {
      const res = await send({
        method: "POST",
        target: PATH,
        headers: REQ_HEADERS,
        body: requestBody(),
      }, { watchdog });
      return { status: res.status, headers: res.headers, body: await bodyOf(res) };
    },
    close: () => {
      pool.close();
      watchdog.close();
    },
  });
}

const endpoint = (port: number) => ({
  protocol: "https:" as const,
  hostname: HOST,
  port,
  hostHeader: `${HOST}:${port}`,
});
const poolOptions = (ca: string) => ({
  connectTimeoutMs: 5000,
  idleTimeoutMs: 60_000,
  caCerts: [ca],
});

function ownH2(port: number, ca: string): Promise<ClientImpl> {
  const pool = new H2Pool(endpoint(port), poolOptions(ca));
  return ownClient(pool, (req, options) => exchange2(pool, req, options));
}

async function nodeH2(port: number, ca: string): Promise<ClientImpl> {
  // Loaded only in the node-h2 process (it is large).
  const http2 = (await import("node:http2")).default;
  const session = http2.connect(`https://${HOST}:${port}`, {
    settings: { enablePush: false },
    ca: [ca],
  });
  await new Promise<void>((resolve, reject) => {
    session.once("connect", () => resolve());
    session.once("error", reject);
  });
  // As the relay: wait for A's SETTINGS (remoteSettings) briefly.
  await sleep(50);
  const reqHeaders: Record<string, string> = {
    ":method": "POST",
    ":path": PATH,
    ":scheme": "https",
    ":authority": `${HOST}:${port}`,
  };
  for (const [k, v] of REQ_HEADERS) reqHeaders[k] = v;
  reqHeaders["content-length"] = String(REQUEST_BODY.length);
  return {
    one() {
      return new Promise<One>((resolve, reject) => {
        const stream = session.request(reqHeaders, { endStream: false });
        stream.end(REQUEST_BODY);
        const chunks: Uint8Array[] = [];
        let status = 0;
        let headers: Array<[string, string]> = [];
        stream.on("response", (h: http2.IncomingHttpHeaders) => {
          status = Number(h[":status"]);
          headers = [];
          for (const name in h) {
            if (name.startsWith(":")) continue;
            const v = h[name];
            headers.push([name, Array.isArray(v) ? v.join(", ") : String(v)]);
          }
        });
        stream.on("data", (chunk: Uint8Array) => chunks.push(chunk));
        stream.on("end", () => {
          let body: Uint8Array;
          if (chunks.length === 1) body = chunks[0]!;
          else {
            let n = 0;
            for (const c of chunks) n += c.length;
            body = new Uint8Array(n);
            let o = 0;
            for (const c of chunks) body.set(c, o), o += c.length;
          }
          resolve({ status, headers, body });
        });
        stream.on("error", reject);
      });
    },
    close: () => session.close(),
  };
}

function ownH1(port: number, ca: string): Promise<ClientImpl> {
  const pool = new Pool(endpoint(port), poolOptions(ca));
  return ownClient(pool, (req, options) => exchange(pool, req, options));
}

function open(kind: Kind, port: number, ca: string): Promise<ClientImpl> {
  return kind === "own-h2"
    ? ownH2(port, ca)
    : kind === "node-h2"
    ? nodeH2(port, ca)
    : ownH1(port, ca);
}

// ---------------------------------------------------------------------------------------------
// Client process (--role=client): warm-up, then N requests at concurrency C; CPU of this process.

interface ClientResult {
  kind: Kind;
  c: number;
  n: number;
  ok: number;
  errors: number;
  errorSamples: string[];
  cpuUsPerReq: number;
  procStatUsPerReq: number;
  wallMs: number;
  reqPerSec: number;
}

function procCpuTicks(): number {
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(rest[11]) + Number(rest[12]);
}

/** Header list without `date` (which changes every second). */
function stable(h: Array<[string, string]>): string {
  return JSON.stringify(h.filter(([k]) => k !== "date"));
}

async function runClient(o: {
  kind: Kind;
  port: number;
  ca: string;
  n: number;
  c: number;
  warmup: number;
  expected: string | null;
  maxSec: number;
}): Promise<ClientResult> {
  const client = await open(o.kind, o.port, o.ca);
  const errorSamples: string[] = [];
  let errors = 0;
  let ok = 0;
  const deadline = performance.now() + o.maxSec * 1000;
  const check = (r: One) => {
    if (r.status !== 200) throw new Error(`status ${r.status}`);
    if (!sameBytes(r.body, EXPECTED_BODY)) throw new Error(`body differs (${r.body.length} B)`);
    if (o.expected !== null) {
      // Names and values in order, `date` skipped (HTTP/1.1 has its own expected list).
      if (stable(r.headers) !== o.expected) throw new Error(`headers differ: ${stable(r.headers)}`);
    }
  };
  const phase = async (count: number, count0: boolean) => {
    let issued = 0;
    const worker = async () => {
      while (issued < count && performance.now() < deadline) {
        issued++;
        try {
          check(await client.one());
          if (count0) ok++;
        } catch (err) {
          errors++;
          if (errorSamples.length < 5) errorSamples.push(String(err).slice(0, 300));
        }
      }
    };
    await Promise.all(Array.from({ length: o.c }, worker));
  };
  await phase(o.warmup, false);
  await sleep(100);
  const cpu0 = process.cpuUsage();
  const ticks0 = procCpuTicks();
  const t0 = performance.now();
  await phase(o.n, true);
  const wallMs = performance.now() - t0;
  const cpu1 = process.cpuUsage();
  const ticks1 = procCpuTicks();
  client.close();
  const cpuUs = cpu1.user + cpu1.system - cpu0.user - cpu0.system;
  return {
    kind: o.kind,
    c: o.c,
    n: o.n,
    ok,
    errors,
    errorSamples,
    cpuUsPerReq: round(cpuUs / Math.max(1, ok), 1),
    procStatUsPerReq: round(((ticks1 - ticks0) * 10_000) / Math.max(1, ok), 1),
    wallMs: round(wallMs, 0),
    reqPerSec: round((ok / wallMs) * 1000, 0),
  };
}

/**
 * (--role=verify) The same request with own-h2 and node-h2, at the same moment: the decoded
 * response header lists must be equal (names, values, order, `date` included).
 */
async function verify(port: number, ca: string): Promise<string> {
  const a = await open("own-h2", port, ca);
  const b = await open("node-h2", port, ca);
  const h1 = await open("own-h1", port, ca);
  try {
    for (let attempt = 0; attempt < 5; attempt++) {
      // Several requests, so nginx's dynamic-table use on repeated headers is exercised.
      let last: [One, One] | null = null;
      for (let i = 0; i < 5; i++) last = await Promise.all([a.one(), b.one()]);
      const [x, y] = last!;
      const hx = JSON.stringify(x.headers);
      const hy = JSON.stringify(y.headers);
      if (hx !== hy) {
        if (attempt < 4) continue; // a second boundary between them (date)
        throw new Error(`own-h2 headers ${hx} != node-h2 headers ${hy}`);
      }
      if (!sameBytes(x.body, EXPECTED_BODY) || !sameBytes(y.body, EXPECTED_BODY)) {
        throw new Error("body differs");
      }
      const z = await h1.one();
      if (z.status !== 200 || !sameBytes(z.body, EXPECTED_BODY)) throw new Error("own-h1 differs");
      return JSON.stringify({
        headers: x.headers,
        stable: stable(x.headers),
        h1Headers: z.headers,
        h1Stable: stable(z.headers),
      });
    }
    throw new Error("unreachable");
  } finally {
    a.close();
    b.close();
    h1.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Orchestration

function nginxConfig(dir: string, port: number, certFile: string, keyFile: string): string {
  return `${preamble(dir)}  tcp_nodelay on;
  server {
    listen ${HOST}:${port} ssl http2 backlog=4096;
    ssl_certificate ${certFile};
    ssl_certificate_key ${keyFile};
    ssl_protocols TLSv1.2 TLSv1.3;
    location = ${PATH} {
      default_type application/json;
      return 200 '${CHAT_JSON}';
    }
  }
}
`;
}

/** Waits (≤ 15 min, polling every 30 s) until no other benchmark runs. */
async function waitNoOtherBench(): Promise<void> {
  const pattern = "bench/run.ts|sse_cpu|http_cpu|h2_upstream|ci/run|run_tests";
  for (let i = 0; i < 30; i++) {
    const out = await new Deno.Command("pgrep", { args: ["-f", pattern], stdout: "piped" })
      .output();
    const pids = new TextDecoder().decode(out.stdout).trim();
    if (pids === "") return;
    progress(`other benchmark running (pids ${pids.replace(/\n/g, " ")}): waiting 30 s`);
    await sleep(30_000);
  }
  throw new Error("other benchmarks kept running for 15 min");
}

async function main(): Promise<void> {
  const f = parseFlags(Deno.args);
  const rounds = Number(f.get("rounds") ?? 5);
  const n1 = Number(f.get("n1") ?? 5000);
  const n50 = Number(f.get("n50") ?? 20000);
  const prof = f.get("prof");
  const kinds = (f.get("kinds")?.split(",") as Kind[] | undefined) ?? KINDS;
  const disarm = installCleanup(2700);
  await waitNoOtherBench();
  const dir = Deno.makeTempDirSync({ prefix: "pf-h2-client-" });
  const procs: Proc[] = [];
  try {
    const { certFile, keyFile } = await makeCert(dir);
    const port = freePort();
    Deno.mkdirSync(`${dir}/nginx`);
    Deno.writeTextFileSync(
      `${dir}/nginx/nginx.conf`,
      nginxConfig(`${dir}/nginx`, port, certFile, keyFile),
    );
    const nginx = spawn("nginx", [
      "/usr/sbin/nginx",
      "-p",
      `${dir}/nginx`,
      "-e",
      `${dir}/nginx/error.log`,
      "-c",
      `${dir}/nginx/nginx.conf`,
    ], { cpu: "1", logFile: `${dir}/nginx/stdout.log` });
    procs.push(nginx);
    await waitForPort(port, 15_000, nginx);
    progress(`nginx (pid ${nginx.pid}) on ${HOST}:${port}, core 1`);

    const child = (args: string[], timeoutMs = 120_000) =>
      runToEnd("client", ["deno", "run", "-A", ...args], { cpu: "0", timeoutMs });
    const v = JSON.parse(
      await child([SELF, "--role=verify", `--port=${port}`, `--ca=${certFile}`]),
    );
    progress(`verify: own-h2 headers == node-h2 headers: ${JSON.stringify(v.headers)}`);
    progress(`own-h1 headers: ${JSON.stringify(v.h1Headers)}`);
    const expectedFile = (kind: Kind) => `${dir}/expected-${kind === "own-h1" ? "h1" : "h2"}.json`;
    Deno.writeTextFileSync(expectedFile("own-h2"), v.stable);
    Deno.writeTextFileSync(expectedFile("own-h1"), v.h1Stable);

    const shapes = [{ c: 1, n: n1, warmup: Math.min(2000, n1) }, {
      c: 50,
      n: n50,
      warmup: Math.min(5000, n50),
    }];
    const results: ClientResult[][] = [];
    const profDir = `${dir}/prof`;
    for (let r = 0; r < rounds; r++) {
      const order = kinds.map((_, i) => kinds[(i + r) % kinds.length]!);
      for (const shape of shapes) {
        for (const kind of order) {
          await waitNoOtherBench();
          const args = [
            ...(prof !== undefined
              ? ["--cpu-prof", `--cpu-prof-dir=${profDir}/${kind}-c${shape.c}`]
              : []),
            SELF,
            "--role=client",
            `--kind=${kind}`,
            `--port=${port}`,
            `--ca=${certFile}`,
            `--n=${shape.n}`,
            `--c=${shape.c}`,
            `--warmup=${shape.warmup}`,
            `--expected=${expectedFile(kind)}`,
          ];
          const res = JSON.parse(await child(args)) as ClientResult;
          progress(
            `round ${
              r + 1
            } ${kind} c=${shape.c}: ${res.cpuUsPerReq} µs/req (proc/stat ${res.procStatUsPerReq}), ${res.wallMs} ms, ok ${res.ok}, errors ${res.errors} ${
              res.errorSamples.join(" | ")
            }`,
          );
          (results[r] ??= []).push(res);
        }
      }
    }
    // Table.
    let t =
      "| kind | shape | CPU µs/req per round | median CPU µs/req | median wall ms (N) | median req/s | errors |\n|---|---|---|---:|---:|---:|---:|\n";
    for (const shape of shapes) {
      for (const kind of kinds) {
        const rs = results.map((row) => row.find((x) => x.kind === kind && x.c === shape.c)!);
        t += `| ${kind} | c=${shape.c} | ${rs.map((x) => x.cpuUsPerReq).join(", ")} | ${
          round(median(rs.map((x) => x.cpuUsPerReq)), 1)
        } | ${round(median(rs.map((x) => x.wallMs)), 0)} (${shape.n}) | ${
          round(median(rs.map((x) => x.reqPerSec)), 0)
        } | ${rs.reduce((a, x) => a + x.errors + (x.n - x.ok), 0)} |\n`;
      }
    }
    // Ratios per round (within a round, same conditions).
    t += "\nPer-round ratio to own-h1 (CPU/req):\n";
    for (const shape of shapes) {
      for (const kind of kinds) {
        const ratios = results.map((row) => {
          const a = row.find((x) => x.kind === kind && x.c === shape.c)!;
          const b = row.find((x) => x.kind === "own-h1" && x.c === shape.c);
          return b ? round(a.cpuUsPerReq / b.cpuUsPerReq, 2) : NaN;
        });
        t += `- ${kind} c=${shape.c}: ${ratios.join(", ")} (median ${round(median(ratios), 2)})\n`;
      }
    }
    // deno-lint-ignore no-console
    console.log(t);
    const json = f.get("json");
    if (json !== undefined) {
      Deno.writeTextFileSync(json, JSON.stringify({ rounds, n1, n50, results }, null, 2));
    }
    if (prof !== undefined) {
      Deno.mkdirSync(prof, { recursive: true });
      for (const e of Deno.readDirSync(profDir)) {
        const files = [...Deno.readDirSync(`${profDir}/${e.name}`)].map((x) => x.name).sort();
        // The last round's profile of each.
        const last = files[files.length - 1]!;
        Deno.copyFileSync(`${profDir}/${e.name}/${last}`, `${prof}/${e.name}.cpuprofile`);
      }
    }
  } finally {
    for (const p of procs) await p.stop();
    Deno.removeSync(dir, { recursive: true });
    disarm();
  }
}

if (import.meta.main) {
  const f = parseFlags(Deno.args);
  const role = f.get("role");
  if (role === "client") {
    const hard = setTimeout(() => Deno.exit(3), 100_000);
    const res = await runClient({
      kind: f.get("kind") as Kind,
      port: Number(f.get("port")),
      ca: Deno.readTextFileSync(f.get("ca")!),
      n: Number(f.get("n")),
      c: Number(f.get("c")),
      warmup: Number(f.get("warmup")),
      expected: f.has("expected") ? Deno.readTextFileSync(f.get("expected")!) : null,
      maxSec: 60,
    });
    clearTimeout(hard);
    // deno-lint-ignore no-console
    console.log(JSON.stringify(res));
    Deno.exit(0);
  } else if (role === "verify") {
    const hard = setTimeout(() => Deno.exit(3), 30_000);
    const out = await verify(Number(f.get("port")), Deno.readTextFileSync(f.get("ca")!));
    clearTimeout(hard);
    // deno-lint-ignore no-console
    console.log(out);
    Deno.exit(0);
  } else {
    await main();
  }
}
