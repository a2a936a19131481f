/**
 * Shared helpers for the benchmark harness: command-line flags, child processes pinned to a core,
 * readiness checks, `/proc` readings (CPU time, RSS) and small statistics.
 *
 * Every child process is started by PID and stopped by that PID (SIGTERM, then SIGKILL): nothing
 * here ever looks processes up by name. Everything listens and connects on 127.0.0.1 only.
 */

import { RELAY_V8_FLAGS } from "../lib/ops/permissions.ts";

/** Repository root (the parent of `bench/`). */
export const ROOT: string = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
/** The `bench/` directory. */
export const BENCH: string = `${ROOT}/bench`;
/** Loopback only. */
export const HOST = "127.0.0.1";

/** Parses `--name=value` and `--flag` arguments. */
export function parseFlags(args: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const a of args) {
    if (!a.startsWith("--")) continue;
    const eq = a.indexOf("=");
    if (eq < 0) out.set(a.slice(2), "true");
    else out.set(a.slice(2, eq), a.slice(eq + 1));
  }
  return out;
}

/** The `--env=NAME=VALUE` flags (repeatable) as an environment for a proxy under test. */
export function envFlags(args: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const a of args) {
    if (!a.startsWith("--env=")) continue;
    const kv = a.slice("--env=".length);
    const eq = kv.indexOf("=");
    if (eq > 0) out[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return out;
}

/**
 * `--v8=FLAGS` as the Deno argument that starts a relay with `--v8-flags=FLAGS` (replacing its
 * shipped V8 flags; `startRelay` adds those only when none are given), or none.
 */
export function v8FlagArgs(flags: Map<string, string>): string[] {
  const v8 = flags.get("v8");
  return v8 === undefined ? [] : [`--v8-flags=${v8}`];
}

/** A numeric flag with a default. */
export function numFlag(flags: Map<string, string>, name: string, fallback: number): number {
  const raw = flags.get(name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n)) throw new Error(`--${name}=${raw}: expected a number`);
  return n;
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A free TCP port on 127.0.0.1 (bound then released). */
export function freePort(): number {
  const l = Deno.listen({ hostname: HOST, port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/**
 * Waits until something accepts TCP connections on `port`, or throws after `timeoutMs` or as
 * soon as `proc` (the process expected to listen) has exited.
 */
export async function waitForPort(port: number, timeoutMs = 15_000, proc?: Proc): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc?.exitCode !== null && proc?.exitCode !== undefined) {
      throw new Error(`${proc.name} exited with code ${proc.exitCode} before listening on ${port}`);
    }
    try {
      const c = await Deno.connect({ hostname: HOST, port });
      c.close();
      return;
    } catch {
      await sleep(50);
    }
  }
  throw new Error(`nothing listening on ${HOST}:${port} after ${timeoutMs} ms`);
}

/** Options for {@link spawn}. */
export interface SpawnOptions {
  /** CPU core list for `taskset -c`; undefined = not pinned. */
  cpu?: string;
  env?: Record<string, string>;
  cwd?: string;
  /** File that receives stdout and stderr; undefined = discarded. */
  logFile?: string;
  /** Keep stdout piped (for tools whose output we parse). */
  pipeStdout?: boolean;
}

/** A child process we started; stopped only through its own PID. */
export class Proc {
  readonly name: string;
  readonly child: Deno.ChildProcess;
  readonly pid: number;
  /** Exit code once the process has ended, else null. */
  exitCode: number | null = null;
  #stopped = false;

  constructor(name: string, child: Deno.ChildProcess) {
    this.name = name;
    this.child = child;
    this.pid = child.pid;
    live.add(this);
    child.status.then((s) => {
      this.exitCode = s.code;
      live.delete(this);
    });
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process has exited. */
  async stop(graceMs = 3000): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    live.delete(this);
    try {
      this.child.kill("SIGTERM");
    } catch { /* already gone */ }
    const timer = setTimeout(() => {
      try {
        this.child.kill("SIGKILL");
      } catch { /* already gone */ }
    }, graceMs);
    try {
      await this.child.status;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends a signal to this process only. */
  signal(sig: Deno.Signal): void {
    try {
      this.child.kill(sig);
    } catch { /* already gone */ }
  }
}

const live = new Set<Proc>();

/** Kills (SIGKILL) every child still running; for exit paths. */
export function killAllStarted(): void {
  for (const p of live) {
    try {
      p.child.kill("SIGKILL");
    } catch { /* already gone */ }
  }
  live.clear();
}

/**
 * Starts `cmd` with the descriptor limit raised to the hard limit and, when `cpu` is set, pinned
 * with `taskset`. `sh` and `taskset` both `exec`, so the PID is the command's own.
 */
export function spawn(name: string, cmd: string[], opts: SpawnOptions = {}): Proc {
  const pinned = opts.cpu === undefined ? cmd : ["taskset", "-c", opts.cpu, ...cmd];
  // The log file path is passed as an argument, never spliced into the script.
  const redirect = opts.logFile !== undefined ? ' >>"$0" 2>&1' : "";
  const script = `ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"${redirect}`;
  const piped = opts.pipeStdout === true && opts.logFile === undefined;
  const child = new Deno.Command("sh", {
    args: ["-c", script, opts.logFile ?? "sh", ...pinned],
    env: opts.env ?? {},
    cwd: opts.cwd ?? ROOT,
    stdin: "null",
    stdout: piped ? "piped" : "null",
    stderr: piped ? "piped" : "null",
  }).spawn();
  return new Proc(name, child);
}

/** Runs a command to completion with a time limit; returns stdout (throws on failure). */
export async function runToEnd(
  name: string,
  cmd: string[],
  opts: SpawnOptions & { timeoutMs: number },
): Promise<string> {
  const p = spawn(name, cmd, { ...opts, pipeStdout: true });
  const timer = setTimeout(() => p.stop(1000), opts.timeoutMs);
  try {
    const out = await p.child.output();
    const text = new TextDecoder().decode(out.stdout);
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).slice(-2000);
      throw new Error(`${name} failed (code ${out.code}): ${err}`);
    }
    return text;
  } finally {
    clearTimeout(timer);
    live.delete(p);
  }
}

/**
 * `wrk -t1` with `conns` connections for `seconds` against the relay path
 * `/v1/chat/completions` on `port`, running `script` (e.g. {@link chatPostScript}), on core 1.
 * Throws when any answer was not 2xx or nothing was answered: a proxy answering errors would be
 * measured on its error path. Returns wrk's output and the request count.
 */
export async function wrkPost(
  port: number,
  o: { conns: number; seconds: number; script: string; latency?: boolean },
): Promise<{ out: string; requests: number }> {
  const out = await runToEnd("wrk", [
    "wrk",
    "-t1",
    `-c${o.conns}`,
    `-d${o.seconds}s`,
    ...(o.latency ? ["--latency"] : []),
    "-s",
    o.script,
    `http://${HOST}:${port}/v1/chat/completions`,
  ], { cpu: "1", timeoutMs: (o.seconds + 20) * 1000 });
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0);
  if (/Non-2xx/.test(out) || requests === 0) throw new Error(`wrk: ${out}`);
  return { out, requests };
}

/** The process's CPU time so far (user + system, all threads), in seconds. */
export function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  return (utime + stime) / CLK_TCK;
}

const CLK_TCK = 100;

/**
 * CPU seconds of each thread of process `pid`, summed by thread name (main thread, GC helpers,
 * tokio) and split into user and kernel time (`name user`, `name sys`).
 */
export function threadCpuSeconds(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const e of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/task/${e.name}/stat`);
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      for (const [k, v] of [[`${name} user`, rest[11]], [`${name} sys`, rest[12]]] as const) {
        out.set(k, (out.get(k) ?? 0) + Number(v) / CLK_TCK);
      }
    } catch { /* the thread ended between listing and reading */ }
  }
  return out;
}

/** Resident memory now and at peak, in MB. */
export function memory(pid: number): { rssMb: number; peakMb: number } {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? 0);
  return { rssMb: round(kb("VmRSS") / 1024, 1), peakMb: round(kb("VmHWM") / 1024, 1) };
}

/** Samples a process's RSS every `everyMs` until stopped; reports the largest value seen. */
export function rssSampler(pid: number, everyMs = 100): { stop(): number } {
  let max = 0;
  const take = () => {
    try {
      max = Math.max(max, memory(pid).rssMb);
    } catch { /* exited */ }
  };
  take();
  const t = setInterval(take, everyMs);
  return {
    stop() {
      clearInterval(t);
      take();
      return max;
    },
  };
}

/** Rounds to `digits` decimals. */
export function round(n: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** The q-quantile (0..1) of numbers, nearest-rank on a sorted copy. */
export function quantile(values: number[], q: number): number {
  if (values.length === 0) return NaN;
  const s = Float64Array.from(values).sort();
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1));
  return s[i]!;
}

/** The median of numbers (NaN for none). */
export function median(values: number[]): number {
  const v = values.filter((x) => Number.isFinite(x));
  if (v.length === 0) return NaN;
  const s = [...v].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** A temporary directory for one bench run (removed by the caller). */
export function tempDir(prefix: string): string {
  return Deno.makeTempDirSync({ prefix: `pf-bench-${prefix}-` });
}

/** Writes a line to stderr (progress; stdout is kept for results). */
export function progress(msg: string): void {
  const t = new Date().toISOString().slice(11, 19);
  Deno.stderr.writeSync(new TextEncoder().encode(`[${t}] ${msg}\n`));
}

/** A 1 KB-ish OpenAI chat completion answer, the fixed body of the static upstream. */
export const CHAT_JSON: string = JSON.stringify({
  id: "chatcmpl-bench000000000000000000000001",
  object: "chat.completion",
  created: 1764000000,
  model: "gpt-4o-mini-2024-07-18",
  choices: [{
    index: 0,
    message: {
      role: "assistant",
      content: "This is a fixed answer from the benchmark upstream. ".repeat(12).trim(),
      refusal: null,
    },
    logprobs: null,
    finish_reason: "stop",
  }],
  usage: {
    prompt_tokens: 25,
    completion_tokens: 120,
    total_tokens: 145,
    prompt_tokens_details: { cached_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: 0 },
  },
  system_fingerprint: "fp_bench",
});

/** The request body every row sends (small chat request). */
export const CHAT_REQUEST: string = JSON.stringify({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "Say hello." }],
});

/**
 * {@link CHAT_REQUEST} with a system prompt that brings it to about `bytes` (a Claude Code request
 * carries tens of KB: system prompt, tools, the conversation so far).
 */
export function paddedChatRequest(bytes: number): string {
  const pad = Math.max(0, bytes - CHAT_REQUEST.length - 40);
  const words = "You are a careful assistant. ".repeat(Math.ceil(pad / 29)).slice(0, pad);
  return JSON.stringify({
    model: "gpt-4o-mini",
    messages: [{ role: "system", content: words }, { role: "user", content: "Say hello." }],
  });
}

/**
 * Writes a wrk script into `dir` that POSTs {@link CHAT_REQUEST} as JSON (each request on a new
 * connection with `close`; padded to `bodyBytes` when given) and returns its path.
 */
export function chatPostScript(dir: string, close = false, bodyBytes = 0): string {
  const path = `${dir}/post.lua`;
  const body = bodyBytes > 0 ? paddedChatRequest(bodyBytes) : CHAT_REQUEST;
  Deno.writeTextFileSync(
    path,
    `wrk.method = "POST"\nwrk.body = [[${body}]]\n` +
      `wrk.headers["Content-Type"] = "application/json"\n` +
      `wrk.headers["Authorization"] = "Bearer sk-bench-not-a-real-key"\n` +
      (close ? `wrk.headers["Connection"] = "close"\n` : ""),
  );
  return path;
}

/** Request headers every row sends; the Portkey ones are ignored by the other rows. */
export function benchHeaders(upstreamBase: string): Record<string, string> {
  return {
    "content-type": "application/json",
    "authorization": "Bearer sk-bench-not-a-real-key",
    "x-portkey-provider": "openai",
    "x-portkey-custom-host": `${upstreamBase}/v1`,
  };
}

/**
 * Bounds the whole process: after `maxSec`, or on SIGINT/SIGTERM, every child started through
 * {@link spawn} is killed by its PID and the process exits. Returns a function that disarms the
 * time limit.
 */
export function installCleanup(maxSec: number): () => void {
  const bail = (code: number) => {
    killAllStarted();
    Deno.exit(code);
  };
  const timer = setTimeout(() => {
    progress(`time limit of ${maxSec} s reached: stopping`);
    bail(3);
  }, maxSec * 1000);
  const onSig = () => bail(130);
  Deno.addSignalListener("SIGINT", onSig);
  Deno.addSignalListener("SIGTERM", onSig);
  return () => {
    clearTimeout(timer);
    Deno.removeSignalListener("SIGINT", onSig);
    Deno.removeSignalListener("SIGTERM", onSig);
  };
}

/** Options for {@link startRelay}. */
export interface RelayStart {
  port: number;
  upstream: string;
  cpu: string;
  /** Extra environment (e.g. ACCESS_LOG, DENO_CERT). */
  env?: Record<string, string>;
  /** Extra `deno run` flags (e.g. --cpu-prof). */
  denoFlags?: string[];
  /** Script to run instead of main.ts (e.g. bench/relay_variants.ts), and its arguments. */
  script?: string;
  scriptArgs?: string[];
  logFile: string;
}

/**
 * Starts proxy-forwarder as its own process (`deno run --no-config ... main.ts`, with the V8 flag
 * every shipped way of starting it passes) and waits for it.
 */
export async function startRelay(name: string, o: RelayStart): Promise<Proc> {
  const proc = spawn(name, [
    "deno",
    "run",
    // As every shipped way of starting it: deno.json lists npm packages only the tests use, and
    // reading it would start Deno's npm resolver (~1.5 MB of idle RSS the relay does not have).
    "--no-config",
    // As shipped too (lib/ops/permissions.ts): compiled from source, not from V8's code cache.
    "--no-code-cache",
    "--unstable-no-legacy-abort",
    "-A",
    // The relay as shipped runs with its V8 flag (lib/ops/permissions.ts); a row that passes
    // its own `--v8-flags` replaces it.
    ...(o.denoFlags?.some((f) => f.startsWith("--v8-flags")) ? [] : [RELAY_V8_FLAGS]),
    ...(o.denoFlags ?? []),
    o.script ?? `${ROOT}/main.ts`,
    ...(o.scriptArgs ?? []),
  ], {
    cpu: o.cpu,
    env: {
      UPSTREAM_SERVER_A: o.upstream,
      HOST,
      PORT: String(o.port),
      ...(o.env ?? {}),
    },
    logFile: o.logFile,
  });
  try {
    await waitForPort(o.port, 30_000, proc);
  } catch (err) {
    let log = "";
    try {
      log = Deno.readTextFileSync(o.logFile).slice(-1500);
    } catch { /* no log */ }
    await proc.stop();
    throw new Error(`${err instanceof Error ? err.message : err}\n${log}`);
  }
  return proc;
}

/** Options for {@link startCalibration}. */
export interface CalibrationStart {
  /** `minimal_relay.ts` (deno-minimal) or `tcp_pipe.ts`: a file of `bench/`, or an absolute path. */
  script: string;
  upstream: string;
  cpu: string;
  logFile: string;
  /** Where it listens; a free port when not given. */
  port?: number;
  /** Extra environment (e.g. `PIPE_BUF`). */
  env?: Record<string, string>;
  /** Extra `deno run` flags (e.g. `--v8-flags=--trace-gc-nvp`). */
  denoFlags?: string[];
}

/**
 * Starts a calibration row (deno-minimal or the TCP pipe) in front of `upstream`, pinned to `cpu`,
 * and waits until it listens.
 */
export async function startCalibration(
  name: string,
  o: CalibrationStart,
): Promise<{ proc: Proc; port: number }> {
  const port = o.port ?? freePort();
  const script = o.script.startsWith("/") ? o.script : `${BENCH}/${o.script}`;
  const proc = spawn(name, ["deno", "run", "-A", ...(o.denoFlags ?? []), script], {
    cpu: o.cpu,
    env: { UPSTREAM: o.upstream, PORT: String(port), ...(o.env ?? {}) },
    logFile: o.logFile,
  });
  await waitForPort(port, 30_000, proc);
  return { proc, port };
}

/** What {@link sseDelayLoad} runs: `sse_load.ts --mode=delay`, hosting the fake SSE upstream. */
export interface SseDelayLoad {
  upstreamPort: number;
  streams: number;
  events: number;
  intervalMs: number;
  rampMs: number;
  maxSec: number;
  /** `name=url` per target, measured one after another. */
  targets: string[];
  cpu: string;
  timeoutMs: number;
}

/** Runs `sse_load.ts --mode=delay` to its end and returns its JSON output. */
export function sseDelayLoad(o: SseDelayLoad): Promise<string> {
  return runToEnd("sse-load", [
    "deno",
    "run",
    "-A",
    `${BENCH}/sse_load.ts`,
    "--mode=delay",
    `--upstream-port=${o.upstreamPort}`,
    `--streams=${o.streams}`,
    `--events=${o.events}`,
    `--interval-ms=${o.intervalMs}`,
    `--ramp-ms=${o.rampMs}`,
    `--max-sec=${o.maxSec}`,
    ...o.targets.map((t) => `--target=${t}`),
  ], { cpu: o.cpu, timeoutMs: o.timeoutMs });
}

/**
 * Runs `sse_load.ts --mode=capacity` (`streams` opened at `ramp` per second to `url`, an
 * upstream running `fake_sse.ts`) to its end and returns its JSON output.
 */
export function sseCapacityLoad(
  o: { url: string; streams: number; events: number; ramp: number; maxSec: number; cpu: string },
): Promise<string> {
  return runToEnd("sse-capacity", [
    "deno",
    "run",
    "-A",
    `${BENCH}/sse_load.ts`,
    "--mode=capacity",
    `--url=${o.url}`,
    `--streams=${o.streams}`,
    `--events=${o.events}`,
    `--ramp=${o.ramp}`,
    `--max-sec=${o.maxSec}`,
  ], { cpu: o.cpu, timeoutMs: (o.maxSec + 60) * 1000 });
}

/** Starts `fake_sse.ts` (`events` events `intervalMs` apart per stream) and waits for its port. */
export async function startFakeSse(
  name: string,
  o: { port: number; events: number; intervalMs: number; maxSec: number; cpu: string },
  logFile: string,
): Promise<Proc> {
  const proc = spawn(name, [
    "deno",
    "run",
    "-A",
    `${BENCH}/fake_sse.ts`,
    `--port=${o.port}`,
    `--events=${o.events}`,
    `--interval-ms=${o.intervalMs}`,
    `--max-sec=${o.maxSec}`,
  ], { cpu: o.cpu, logFile });
  await waitForPort(o.port, 30_000, proc);
  return proc;
}
