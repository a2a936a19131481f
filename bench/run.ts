/**
 * `deno task bench [--quick] [--rounds=N] [--duration=S] [--only=http,sse,...]`
 *
 * Runs the benchmark rows (throughput, latency, SSE, keep-warm, ...) on 127.0.0.1, writes
 * `bench/results/<stamp>.json` and `bench/results/<stamp>.md`, and prints the markdown.
 *
 * Sections (all by default, in this order):
 *   http       latency at c=1 and saturated req/s + CPU per request, one core; idle/load RSS;
 *              the relay on its own HTTP/1.1 server and on Deno.serve (`HTTP_SERVER=deno`)
 *   observers  the cost of access logging and usage parsing (on vs off)
 *   profile    `--cpu-prof` of the relay under load, top self-time functions
 *   sse        per-event delay with 1,000 concurrent streams
 *   streams    most concurrent streams held (up to 10,000) and RSS
 *   h2         h2_upstream.ts: the relay over h2 and HTTP/1.1 to an HTTPS A, deno-minimal, nginx
 *   route      route_sim/run.ts: client→A direct vs client→B→A over simulated links
 *   keepwarm   keepwarm.ts: TTFB after idle, keep-warm on vs off
 *
 * Placement: the proxy under test is pinned to core 0 (`taskset -c 0`); the upstream, the load
 * generators and the clients to core 1. Rows are measured in the same run, in rotated order each
 * round; tables show medians over rounds and ratios to nginx from the same round.
 * Every child process is stopped by its own PID; the whole run is time-bounded.
 */

import {
  BENCH,
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
  round,
  rssSampler,
  runToEnd,
  sleep,
  sseCapacityLoad,
  sseDelayLoad,
  startCalibration,
  startFakeSse,
  startRelay,
  tempDir,
} from "./common.ts";
import { nginxVersion, proxyConfig, startNginx, staticConfig } from "./nginx.ts";
import { ensurePortkey, PORTKEY_VERSION, startPortkey } from "./portkey.ts";
import { SEED_INSTALL, seedStackAvailable, startSeedStack } from "./seed_stack.ts";
import { summarise, summaryMarkdown } from "./profile_summary.ts";
import type { LatencyResult } from "./latency.ts";
import type { CapacityResult, DelayResult } from "./sse_load.ts";

const SECTIONS = ["http", "observers", "profile", "sse", "streams", "h2", "route", "keepwarm"];
const PROXY_CPU = "0";
const LOAD_CPU = "1";

const flags = parseFlags(Deno.args);
const quick = flags.has("quick");
const rounds = numFlag(flags, "rounds", quick ? 1 : 3);
const duration = numFlag(flags, "duration", quick ? 3 : 10);
const only = (flags.get("only") ?? SECTIONS.join(",")).split(",");
for (const s of only) if (!SECTIONS.includes(s)) throw new Error(`unknown section ${s}`);

const disarm = installCleanup(quick ? 600 : 3600);
const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
const resultsDir = `${BENCH}/results`;
Deno.mkdirSync(resultsDir, { recursive: true });
const tmp = tempDir("run");
const results: Record<string, unknown> = { stamp, quick, rounds, durationSec: duration };
const md: string[] = [];
const procs: Proc[] = [];

// ---------------------------------------------------------------------------------------------
// Machine and tools

async function cmdOut(cmd: string, args: string[]): Promise<string> {
  try {
    const o = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
    return (new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr)).trim();
  } catch {
    return "not installed";
  }
}

async function machine(): Promise<Record<string, string>> {
  const cpuinfo = Deno.readTextFileSync("/proc/cpuinfo");
  return {
    nproc: String(navigator.hardwareConcurrency),
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "?",
    kernel: Deno.osRelease(),
    deno: Deno.version.deno,
    nginx: await nginxVersion(),
    wrk: (await cmdOut("wrk", ["--version"])).split("\n")[0]!.split(" [")[0]!,
    node: await cmdOut("node", ["--version"]),
    portkey: PORTKEY_VERSION,
    loadavg: Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" "),
    memTotal: /^MemTotal:\s*(.*)$/m.exec(Deno.readTextFileSync("/proc/meminfo"))?.[1] ?? "?",
  };
}

// ---------------------------------------------------------------------------------------------
// Load generation and CPU accounting

interface WrkResult {
  rps: number;
  requests: number;
  non2xx: number;
  socketErrors: number;
  p50Ms: number;
  p99Ms: number;
}

function toMs(v: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(v.trim());
  if (m === null) return NaN;
  const n = Number(m[1]);
  return m[2] === "us" ? n / 1000 : m[2] === "s" ? n * 1000 : n;
}

function wrkScript(upstreamBase: string): string {
  const path = `${tmp}/post-${upstreamBase.replace(/\D/g, "")}.lua`;
  Deno.writeTextFileSync(
    path,
    `wrk.method = "POST"
wrk.body = [[${CHAT_REQUEST}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-not-a-real-key"
wrk.headers["x-portkey-provider"] = "openai"
wrk.headers["x-portkey-custom-host"] = "${upstreamBase}/v1"
`,
  );
  return path;
}

async function wrk(url: string, script: string, seconds: number, conns = 50): Promise<WrkResult> {
  const out = await runToEnd("wrk", [
    "wrk",
    "-t1",
    `-c${conns}`,
    `-d${seconds}s`,
    "--timeout",
    "5s",
    "--latency",
    "-s",
    script,
    url,
  ], { cpu: LOAD_CPU, timeoutMs: (seconds + 20) * 1000 });
  const num = (re: RegExp) => Number(re.exec(out)?.[1] ?? 0);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    rps: num(/Requests\/sec:\s+([\d.]+)/),
    requests: num(/(\d+) requests in/),
    non2xx: num(/Non-2xx or 3xx responses: (\d+)/),
    socketErrors: socket ? socket.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
    p50Ms: toMs(/^\s+50%\s+(\S+)/m.exec(out)?.[1] ?? ""),
    p99Ms: toMs(/^\s+99%\s+(\S+)/m.exec(out)?.[1] ?? ""),
  };
}

/** Busy and total jiffies per core from /proc/stat. */
function coreTimes(): Map<string, { busy: number; total: number }> {
  const out = new Map<string, { busy: number; total: number }>();
  for (const line of Deno.readTextFileSync("/proc/stat").split("\n")) {
    const m = /^(cpu\d+)\s+(.*)$/.exec(line);
    if (m === null) continue;
    const v = m[2]!.split(/\s+/).map(Number);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    out.set(m[1]!, { busy: total - v[3]! - v[4]!, total });
  }
  return out;
}

function busyPct(
  a: Map<string, { busy: number; total: number }>,
  b: Map<string, { busy: number; total: number }>,
  core: string,
): number {
  const x = a.get(core), y = b.get(core);
  if (!x || !y || y.total === x.total) return NaN;
  return round(((y.busy - x.busy) / (y.total - x.total)) * 100, 0);
}

/**
 * Waits (at most `maxSec`) until both cores are quiet, i.e. other people's work on this shared
 * machine has paused; returns the busier core's load (%) in the last 0.5 s window before going on.
 */
async function waitQuiet(maxSec = quick ? 5 : 20, thresholdPct = 25): Promise<number> {
  const deadline = performance.now() + maxSec * 1000;
  while (true) {
    const a = coreTimes();
    await sleep(500);
    const b = coreTimes();
    const busy = Math.max(busyPct(a, b, "cpu0"), busyPct(a, b, "cpu1"));
    if (busy <= thresholdPct || performance.now() > deadline) return busy;
  }
}

interface LoadSample extends WrkResult {
  cpuUsPerReq: number;
  procCpuPct: number;
  core0BusyPct: number;
  core1BusyPct: number;
  rssMaxMb: number;
  /** Busier core's load just before the row started (other users of the machine). */
  bgBusyPct: number;
}

async function loadRow(pid: number, url: string, script: string): Promise<LoadSample> {
  const bgBusyPct = await waitQuiet();
  const c0 = cpuSeconds(pid);
  const s0 = coreTimes();
  const t0 = performance.now();
  const rss = rssSampler(pid, 200);
  const w = await wrk(url, script, duration);
  const rssMaxMb = rss.stop();
  const wall = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds(pid) - c0;
  const s1 = coreTimes();
  return {
    ...w,
    cpuUsPerReq: round((cpu / Math.max(1, w.requests)) * 1e6, 1),
    procCpuPct: round((cpu / wall) * 100, 0),
    core0BusyPct: busyPct(s0, s1, "cpu0"),
    core1BusyPct: busyPct(s0, s1, "cpu1"),
    rssMaxMb,
    bgBusyPct,
  };
}

async function latencyRow(
  url: string,
  upstreamBase: string,
): Promise<LatencyResult & { bgBusyPct: number }> {
  const bgBusyPct = await waitQuiet();
  const n = quick ? 1000 : 5000;
  const warmup = quick ? 200 : 500;
  const out = await runToEnd("latency", [
    "deno",
    "run",
    "-A",
    `${BENCH}/latency.ts`,
    `--url=${url}`,
    `--upstream=${upstreamBase}`,
    `--n=${n}`,
    `--warmup=${warmup}`,
    "--max-sec=60",
  ], { cpu: LOAD_CPU, timeoutMs: 90_000 });
  return { ...(JSON.parse(out) as LatencyResult), bgBusyPct };
}

function rotate<T>(xs: T[], k: number): T[] {
  const i = k % xs.length;
  return [...xs.slice(i), ...xs.slice(0, i)];
}

/** A number from JSON (NaN was written as null). */
const num = (x: number | null | undefined): number => (typeof x === "number" ? x : NaN);

const fmt = (n: number | undefined, d = 2) =>
  n !== undefined && Number.isFinite(n) ? String(round(n, d)) : "–";

// ---------------------------------------------------------------------------------------------
// Shared processes

let upstreamPort = 0;
let upstreamNginx: Proc | null = null;
let portkeyPort = 0;
let portkey: Proc | null = null;
let portkeyNote = "";

async function ensureUpstream(): Promise<void> {
  if (upstreamNginx !== null) return;
  upstreamPort = freePort();
  upstreamNginx = await startNginx(
    "nginx-upstream",
    `${tmp}/nginx-upstream`,
    staticConfig(`${tmp}/nginx-upstream`, upstreamPort),
    { cpu: LOAD_CPU, ports: [upstreamPort] },
  );
  procs.push(upstreamNginx);
}

async function ensurePortkeyRunning(): Promise<boolean> {
  if (portkey !== null) return true;
  if (portkeyNote !== "") return false;
  const inst = await ensurePortkey();
  if (!inst.ok) {
    portkeyNote = `Portkey not installed: ${inst.reason}`;
    return false;
  }
  portkeyPort = freePort();
  try {
    portkey = await startPortkey(portkeyPort, PROXY_CPU, `${tmp}/portkey.log`);
    procs.push(portkey);
    return true;
  } catch (err) {
    portkeyNote = `Portkey did not start: ${err instanceof Error ? err.message : err}`;
    return false;
  }
}

function relayLog(name: string): string {
  return `${tmp}/${name}.log`;
}

// ---------------------------------------------------------------------------------------------
// Sections

interface Row {
  name: string;
  url: string;
  pid: () => number;
}

/**
 * The relay under test twice, pinned alike: on its own HTTP/1.1 server and on Deno.serve
 * (`HTTP_SERVER=deno`, see lib/server/listen.ts), so a section can compare the client-facing servers.
 */
async function startRelayPair(section: string, upstream: string): Promise<{
  relay: Proc;
  relayPort: number;
  relayDeno: Proc;
  relayDenoPort: number;
}> {
  const start = async (name: string, env: Record<string, string>) => {
    const port = freePort();
    const proc = await startRelay(name, {
      port,
      upstream,
      cpu: PROXY_CPU,
      env: { ACCESS_LOG: "0", ...env },
      logFile: relayLog(`${name}-${section}`),
    });
    procs.push(proc);
    return { proc, port };
  };
  const own = await start("relay", {});
  const deno = await start("relay-deno-serve", { HTTP_SERVER: "deno" });
  return { relay: own.proc, relayPort: own.port, relayDeno: deno.proc, relayDenoPort: deno.port };
}

/**
 * Starts a calibration script of `bench/` (deno-minimal, tcp-pipe) pinned to the proxy core,
 * forwarding to `upstream`; resolves once it listens.
 */
async function startDenoRow(
  name: string,
  script: string,
  upstream: string,
  logName: string,
): Promise<{ proc: Proc; port: number }> {
  const row = await startCalibration(name, {
    script,
    upstream,
    cpu: PROXY_CPU,
    logFile: relayLog(logName),
  });
  procs.push(row.proc);
  return row;
}

/** Why the seed-stack row is missing, if it is ("" when it ran). */
let seedNote = "";
let seedVersions = "";

async function startSeedStackRow(upstream: string): Promise<{ proc: Proc; port: number } | null> {
  const have = await seedStackAvailable();
  if (!have.ok) {
    seedNote = `seed-stack skipped: ${have.reason}; install with \`${SEED_INSTALL}\`.`;
    progress(seedNote);
    return null;
  }
  seedVersions = have.versions;
  const port = freePort();
  try {
    const proc = await startSeedStack(port, {
      upstream,
      cpu: PROXY_CPU,
      logFile: relayLog("seed-stack"),
    });
    procs.push(proc);
    return { proc, port };
  } catch (err) {
    seedNote = `seed-stack did not start: ${err instanceof Error ? err.message : err}.`;
    progress(seedNote);
    return null;
  }
}

/**
 * The relay's idle RSS (MiB) over `n` fresh starts, each as the http row starts it and 3 s after it
 * listens. One start's figure moves by up to ±0.5 MiB with the pages of the `deno` executable it
 * happened to touch, which matters where the goal sits at 50 MB.
 */
async function idleRelayRss(upstream: string, n = 3): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    progress(`http: idle relay ${i + 1}/${n}`);
    const port = freePort();
    const proc = await startRelay("relay-idle", {
      port,
      upstream,
      cpu: PROXY_CPU,
      env: { ACCESS_LOG: "0" },
      logFile: relayLog(`relay-idle-${i}`),
    });
    try {
      await sleep(3000);
      out.push(memory(proc.pid).rssMb);
    } finally {
      await proc.stop();
    }
  }
  return out;
}

/** The rows every other row is divided by, in the ratio table under the request-path table. */
const HTTP_REFERENCES = ["tcp-pipe", "deno-minimal", "nginx", "seed-stack", "portkey"];

async function sectionHttp(): Promise<void> {
  await ensureUpstream();
  const base = `http://${HOST}:${upstreamPort}`;
  const script = wrkScript(base);
  // Before any other row starts, so that nothing else loads the machine.
  const idleStarts = await idleRelayRss(base);
  const { relay, relayPort, relayDeno, relayDenoPort } = await startRelayPair("http", base);
  const nginxPort = freePort();
  const nginx = await startNginx(
    "nginx-proxy",
    `${tmp}/nginx-proxy`,
    proxyConfig(`${tmp}/nginx-proxy`, [{ listen: nginxPort, upstreamPort }]),
    { cpu: PROXY_CPU, ports: [nginxPort] },
  );
  procs.push(nginx);
  const minimal = await startDenoRow("deno-minimal", "minimal_relay.ts", base, "deno-minimal");
  const pipe = await startDenoRow("tcp-pipe", "tcp_pipe.ts", base, "tcp-pipe");
  const seed = await startSeedStackRow(base);
  const havePortkey = await ensurePortkeyRunning();

  const path = "/v1/chat/completions";
  const at = (port: number) => `http://${HOST}:${port}${path}`;
  const rows: Row[] = [
    { name: "direct", url: `${base}${path}`, pid: () => upstreamNginx!.pid },
    { name: "relay", url: at(relayPort), pid: () => relay.pid },
    { name: "relay (Deno.serve)", url: at(relayDenoPort), pid: () => relayDeno.pid },
    { name: "nginx", url: at(nginxPort), pid: () => nginx.pid },
    { name: "tcp-pipe", url: at(pipe.port), pid: () => pipe.proc.pid },
    { name: "deno-minimal", url: at(minimal.port), pid: () => minimal.proc.pid },
  ];
  if (seed !== null) {
    rows.push({
      name: "seed-stack",
      url: at(seed.port),
      pid: () => seed.proc.pid,
    });
  }
  if (havePortkey) rows.push({ name: "portkey", url: at(portkeyPort), pid: () => portkey!.pid });
  // The upstream is shared with every row; its memory is not a proxy's.
  const proxies = rows.filter((r) => r.name !== "direct");
  const rssNow = () => Object.fromEntries(proxies.map((r) => [r.name, memory(r.pid()).rssMb]));
  await sleep(3000);
  const idle = rssNow();

  // Warm every path (JIT, pools) before measuring.
  for (const r of rows) await wrk(r.url, script, 1, 10);

  const lat: Record<string, Array<LatencyResult & { bgBusyPct: number }>> = {};
  const load: Record<string, LoadSample[]> = {};
  for (let k = 0; k < rounds; k++) {
    for (const r of rotate(rows, k)) {
      progress(`http round ${k + 1}/${rounds}: latency c=1 → ${r.name}`);
      (lat[r.name] ??= []).push(await latencyRow(r.url, base));
    }
    for (const r of rotate(rows, k)) {
      progress(`http round ${k + 1}/${rounds}: wrk -c50 ${duration}s → ${r.name}`);
      (load[r.name] ??= []).push(await loadRow(r.pid(), r.url, script));
      await sleep(500);
    }
  }
  await sleep(2000);
  const after = rssNow();
  // What stays once V8's memory reducer has given the heap back (it runs ~30 s after a load ends):
  // the idle memory a user sees after traffic, which the start figure does not show.
  await sleep(38_000);
  const settled = rssNow();

  const per = (f: (i: number) => number) => median(Array.from({ length: rounds }, (_, i) => f(i)));
  /** Median over rounds of `row`'s value divided by `ref`'s in the same round (NaN if no `ref`). */
  const ratio = (row: string, ref: string, f: (w: LoadSample) => number) =>
    load[ref] === undefined ? NaN : per((i) => f(load[row]![i]!) / f(load[ref]![i]!));
  const rps = (w: LoadSample) => w.rps;
  const cpu = (w: LoadSample) => w.cpuUsPerReq;
  const summary: Record<string, Record<string, number>> = {};
  for (const r of rows) {
    const L = lat[r.name]!, W = load[r.name]!;
    summary[r.name] = {
      p50Ms: per((i) => L[i]!.p50),
      p99Ms: per((i) => L[i]!.p99),
      addedP50Ms: per((i) => L[i]!.p50 - lat.direct![i]!.p50),
      addedP99Ms: per((i) => L[i]!.p99 - lat.direct![i]!.p99),
      rps: per((i) => W[i]!.rps),
      rpsVsNginx: ratio(r.name, "nginx", rps),
      rpsVsPipe: ratio(r.name, "tcp-pipe", rps),
      cpuUsPerReq: per((i) => W[i]!.cpuUsPerReq),
      cpuVsNginx: ratio(r.name, "nginx", cpu),
      cpuVsPipe: ratio(r.name, "tcp-pipe", cpu),
      procCpuPct: per((i) => W[i]!.procCpuPct),
      core0BusyPct: per((i) => W[i]!.core0BusyPct),
      core1BusyPct: per((i) => W[i]!.core1BusyPct),
      wrkP99Ms: per((i) => W[i]!.p99Ms),
      rssMaxMb: Math.max(...W.map((w) => w.rssMaxMb)),
      bgBusyPct: median([...W.map((w) => w.bgBusyPct), ...L.map((l) => l.bgBusyPct)]),
      errors: W.reduce((a, w) => a + w.non2xx + w.socketErrors, 0) +
        L.reduce((a, l) => a + l.errors, 0),
    };
  }
  const refs = HTTP_REFERENCES.filter((ref) => load[ref] !== undefined);
  const relayRatios = Object.fromEntries(refs.map((ref) => [ref, {
    rps: ratio("relay", ref, rps),
    cpuUsPerReq: ratio("relay", ref, cpu),
    p99DiffMs: per((i) => lat.relay![i]!.p99 - lat[ref]![i]!.p99),
  }]));
  results.http = {
    raw: { latency: lat, load },
    summary,
    relayRatios,
    idleRssMb: idle,
    afterLoadRssMb: after,
    settledRssMb: settled,
    relayIdleStartsRssMb: idleStarts,
    ...(seedVersions ? { seedStack: seedVersions } : {}),
    ...(seedNote ? { seedStackNote: seedNote } : {}),
  };

  let t = `### Request path: one core, ~1 KB JSON (medians of ${rounds} round(s))\n\n` +
    "| row | c=1 p50 | c=1 p99 | added p50 | added p99 | req/s (wrk -c50) | vs nginx | " +
    "vs tcp-pipe | CPU µs/req | vs nginx | vs tcp-pipe | proxy CPU | core0/core1 busy | " +
    "other load before | RSS idle → max under load |\n" +
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const r of rows) {
    const s = summary[r.name]!;
    const d = r.name === "direct";
    t += `| ${r.name}${d ? " (nginx static, core 1)" : ""} | ${fmt(s.p50Ms, 3)} ms | ${
      fmt(s.p99Ms, 3)
    } ms | ${d ? "–" : `${fmt(s.addedP50Ms, 3)} ms`} | ${
      d ? "–" : `${fmt(s.addedP99Ms, 3)} ms`
    } | ${fmt(s.rps, 0)} | ${fmt(s.rpsVsNginx)} | ${fmt(s.rpsVsPipe)} | ${
      fmt(s.cpuUsPerReq, 1)
    } | ${fmt(s.cpuVsNginx)} | ${fmt(s.cpuVsPipe)} | ${fmt(s.procCpuPct, 0)}% | ${
      fmt(s.core0BusyPct, 0)
    }% / ${fmt(s.core1BusyPct, 0)}% | ${fmt(s.bgBusyPct, 0)}% | ${
      d ? "–" : `${idle[r.name]} → ${s.rssMaxMb} MB`
    } |\n`;
  }
  t += `\nRSS after the load, settled 2 s: ${
    Object.entries(after).map(([k, v]) => `${k} ${v} MB`).join(", ")
  }; 40 s after it: ${
    Object.entries(settled).map(([k, v]) => `${k} ${v} MB`).join(", ")
  }. The relay's idle RSS in ${idleStarts.length} fresh starts of its own, 3 s after each: ${
    idleStarts.join(", ")
  } MB (median ${median(idleStarts)}). Errors (non-2xx, socket, client): ${
    rows.map((r) => `${r.name} ${summary[r.name]!.errors}`).join(", ")
  }.${portkeyNote ? ` ${portkeyNote}` : ""}${
    seedVersions ? ` seed-stack: ${seedVersions}.` : ""
  }\n${seedNote ? `\n**${seedNote}**\n` : ""}`;
  t += "\nThe relay against each reference, per round then the median (goal: req/s ≥ 0.85 × " +
    "tcp-pipe):\n\n| ratio | req/s | CPU µs/req | c=1 p99, relay − reference |\n|---|---:|---:|---:|\n";
  for (const ref of refs) {
    const x = relayRatios[ref]!;
    t += `| relay / ${ref} | ${fmt(x.rps)} | ${fmt(x.cpuUsPerReq)} | ${
      x.p99DiffMs >= 0 ? "+" : ""
    }${fmt(x.p99DiffMs, 3)} ms |\n`;
  }
  md.push(t);
  // Portkey is shared with the SSE section and stopped at the end of the run.
  for (const p of [relay, relayDeno, nginx, minimal.proc, pipe.proc, seed?.proc]) await p?.stop();
}

async function sectionObservers(): Promise<void> {
  await ensureUpstream();
  const base = `http://${HOST}:${upstreamPort}`;
  const script = wrkScript(base);
  const variants = [
    { name: "ACCESS_LOG=1 (default), usage parsing on", env: { ACCESS_LOG: "1" }, noUsage: false },
    { name: "ACCESS_LOG=0, usage parsing on", env: { ACCESS_LOG: "0" }, noUsage: false },
    { name: "ACCESS_LOG=0, usage parsing off", env: { ACCESS_LOG: "0" }, noUsage: true },
  ];
  const running: Array<{ name: string; proc: Proc; url: string }> = [];
  for (const [i, v] of variants.entries()) {
    const port = freePort();
    const proc = await startRelay(`relay-obs-${i}`, {
      port,
      upstream: base,
      cpu: PROXY_CPU,
      env: v.env,
      // Access-log lines go to stdout; /dev/null is the cheapest sink there is.
      logFile: "/dev/null",
      ...(v.noUsage ? { script: `${BENCH}/relay_variants.ts`, scriptArgs: ["--no-usage"] } : {}),
    });
    procs.push(proc);
    running.push({ name: v.name, proc, url: `http://${HOST}:${port}/v1/chat/completions` });
  }
  for (const r of running) await wrk(r.url, script, 1, 10);
  const samples: Record<string, LoadSample[]> = {};
  for (let k = 0; k < rounds; k++) {
    for (const r of rotate(running, k)) {
      progress(`observers round ${k + 1}/${rounds}: ${r.name}`);
      (samples[r.name] ??= []).push(await loadRow(r.proc.pid, r.url, script));
      await sleep(500);
    }
  }
  const s = running.map((r) => ({
    name: r.name,
    rps: median(samples[r.name]!.map((x) => x.rps)),
    cpu: median(samples[r.name]!.map((x) => x.cpuUsPerReq)),
  }));
  results.observers = { raw: samples, summary: s };
  let t = `### Cost of access logging and usage parsing (wrk -c50, medians of ${rounds})\n\n` +
    "| relay variant | req/s | CPU µs/req | Δ vs the row below |\n|---|---:|---:|---:|\n";
  s.forEach((x, i) => {
    const next = s[i + 1];
    t += `| ${x.name} | ${fmt(x.rps, 0)} | ${fmt(x.cpu, 1)} | ${
      next ? `${fmt(x.cpu - next.cpu, 1)} µs` : "–"
    } |\n`;
  });
  t += "\nMetrics (telemetry) have no switch; their share is in the profile below " +
    "(`lib/observe/telemetry.ts`, `lib/observe/metrics.ts`).\n";
  md.push(t);
  for (const r of running) await r.proc.stop();
}

/** Runs the relay under `--cpu-prof` with `wrk -c50`; returns the profile's path and wrk's result. */
async function profiledRun(
  name: string,
  env: Record<string, string>,
): Promise<{ path: string; w: WrkResult }> {
  await ensureUpstream();
  const base = `http://${HOST}:${upstreamPort}`;
  const script = wrkScript(base);
  const profDir = `${tmp}/prof-${name}`;
  const port = freePort();
  const relay = await startRelay(`relay-prof-${name}`, {
    port,
    upstream: base,
    cpu: PROXY_CPU,
    env,
    denoFlags: ["--cpu-prof", `--cpu-prof-dir=${profDir}`],
    // Access-log lines (when on) go to stdout: /dev/null, as in the observers section.
    logFile: "/dev/null",
  });
  procs.push(relay);
  const url = `http://${HOST}:${port}/v1/chat/completions`;
  await wrk(url, script, 1, 10);
  await waitQuiet();
  progress(`profile (${name}): wrk -c50 ${duration}s → relay with --cpu-prof`);
  const w = await wrk(url, script, duration);
  await relay.stop(15_000);
  const file = [...Deno.readDirSync(profDir)].find((e) => e.name.endsWith(".cpuprofile"));
  if (file === undefined) throw new Error("no .cpuprofile written");
  const dest = `${resultsDir}/${stamp}-relay-${name}.cpuprofile`;
  Deno.copyFileSync(`${profDir}/${file.name}`, dest);
  return { path: dest, w };
}

/** Observer modules, for attributing profile self time. */
const OBSERVER_GROUPS: Array<[string, RegExp]> = [
  [
    "access log (lib/observe/access_log.ts, lib/observe/log.ts, stdout writes)",
    /^(lib\/(observe\/)?(access_log|log)\.ts|op_write_sync)$/,
  ],
  [
    "metrics (lib/observe/telemetry.ts, lib/observe/metrics.ts)",
    /^lib\/(observe\/)?(telemetry|metrics)\.ts$/,
  ],
  [
    "usage parsing (lib/observe/usage.ts, lib/observe/sse_events.ts)",
    /^lib\/(observe\/)?(usage|sse_events)\.ts$/,
  ],
];

async function sectionProfile(): Promise<void> {
  const off = await profiledRun("accesslog-off", { ACCESS_LOG: "0" });
  const summary = summarise(JSON.parse(Deno.readTextFileSync(off.path)));
  const on = await profiledRun("accesslog-on", { ACCESS_LOG: "1" });
  const onSummary = summarise(JSON.parse(Deno.readTextFileSync(on.path)));
  const attribution = OBSERVER_GROUPS.map(([group, re]) => {
    const ms = onSummary.byFile.filter((h) => re.test(h.name)).reduce((a, h) => a + h.selfMs, 0);
    return {
      group,
      pct: round((ms / onSummary.busyMs) * 100, 1),
      usPerReq: round((ms * 1000) / Math.max(1, on.w.requests), 1),
    };
  });
  const perReq = round((onSummary.busyMs * 1000) / Math.max(1, on.w.requests), 1);
  results.profile = {
    files: [off.path, on.path].map((p) => p.slice(BENCH.length + 1)),
    rps: off.w.rps,
    busyUsPerReq: round((summary.busyMs * 1000) / Math.max(1, off.w.requests), 1),
    top: summary.byFunction.slice(0, 40),
    byFile: summary.byFile.slice(0, 40),
    observerAttribution: { accessLogOn: true, busyUsPerReq: perReq, groups: attribution },
  };
  let t = `### Where the relay's CPU goes (wrk -c50, ${duration} s, ACCESS_LOG=0, ${
    fmt(off.w.rps, 0)
  } req/s under the profiler, ${
    fmt((summary.busyMs * 1000) / Math.max(1, off.w.requests), 1)
  } µs of main-thread time per request)\n\n${summaryMarkdown(summary, 25)}\nProfile: \`bench/${
    off.path.slice(BENCH.length + 1)
  }\`.\n\nObservers by profile attribution (a second profile with ACCESS_LOG=1, ${
    fmt(on.w.rps, 0)
  } req/s, ${perReq} µs/req):\n\n| observer | % of busy time | µs/req |\n|---|---:|---:|\n`;
  for (const a of attribution) t += `| ${a.group} | ${a.pct} | ${a.usPerReq} |\n`;
  md.push(t);
}

async function sectionSse(): Promise<void> {
  const ssePort = freePort();
  const sseBase = `http://${HOST}:${ssePort}`;
  const { relay, relayPort, relayDeno, relayDenoPort } = await startRelayPair("sse", sseBase);
  const nginxPort = freePort();
  const nginx = await startNginx(
    "nginx-proxy-sse",
    `${tmp}/nginx-proxy-sse`,
    proxyConfig(`${tmp}/nginx-proxy-sse`, [{ listen: nginxPort, upstreamPort: ssePort }]),
    { cpu: PROXY_CPU, ports: [nginxPort] },
  );
  procs.push(nginx);
  // The fake upstream lives inside sse_load.ts and starts with each round; fetch connects lazily.
  const minimal = await startDenoRow(
    "deno-minimal",
    "minimal_relay.ts",
    sseBase,
    "deno-minimal-sse",
  );
  const havePortkey = await ensurePortkeyRunning();
  const path = "/v1/chat/completions";
  const at = (port: number) => `http://${HOST}:${port}${path}`;
  /** Targets; `pid` is the proxy whose CPU is read (none for direct, whose upstream is the client). */
  const targets: Array<{ name: string; url: string; pid?: number }> = [
    { name: "direct", url: `${sseBase}${path}` },
    { name: "relay", url: at(relayPort), pid: relay.pid },
    { name: "relay (Deno.serve)", url: at(relayDenoPort), pid: relayDeno.pid },
    { name: "nginx", url: at(nginxPort), pid: nginx.pid },
    { name: "deno-minimal", url: at(minimal.port), pid: minimal.proc.pid },
  ];
  if (havePortkey) targets.push({ name: "portkey", url: at(portkeyPort) });
  const measured = targets.filter((t): t is { name: string; url: string; pid: number } =>
    t.pid !== undefined
  );
  const streams = 1000, events = quick ? 6 : 10, intervalMs = 500, rampMs = 2000;
  const raw: Array<Record<string, DelayResult> & { cpuUsPerEvent?: Record<string, number> }> = [];
  let relayRss = 0;
  const bg: number[] = [];
  for (let k = 0; k < rounds; k++) {
    progress(`sse round ${k + 1}/${rounds}: ${streams} streams × ${events} events per target`);
    bg.push(await waitQuiet());
    const rss = rssSampler(relay.pid, 100);
    const cpu0 = new Map(measured.map((m) => [m.name, cpuSeconds(m.pid)]));
    const out = await sseDelayLoad({
      upstreamPort: ssePort,
      streams,
      events,
      intervalMs,
      rampMs,
      maxSec: 60,
      targets: rotate(targets, k).map((t) => `${t.name}=${t.url}`),
      cpu: LOAD_CPU,
      timeoutMs: 400_000,
    });
    relayRss = Math.max(relayRss, rss.stop());
    // Each process's CPU over the whole round; it is busy only while its own target runs.
    const perEvent = (m: { name: string; pid: number }) =>
      round(((cpuSeconds(m.pid) - cpu0.get(m.name)!) / (streams * (events + 2))) * 1e6, 1);
    raw.push({
      ...JSON.parse(out),
      cpuUsPerEvent: Object.fromEntries(measured.map((m) => [m.name, perEvent(m)])),
    });
  }
  /** Median over rounds of `name`'s CPU per event divided by `ref`'s in the same round. */
  const cpuRatio = (name: string, ref: string) =>
    median(raw.map((r) => (r.cpuUsPerEvent?.[name] ?? NaN) / (r.cpuUsPerEvent?.[ref] ?? NaN)));
  const summary: Record<string, Record<string, number>> = {};
  for (const t of targets) {
    summary[t.name] = {
      p50Ms: median(raw.map((r) => num(r[t.name]!.p50))),
      p99Ms: median(raw.map((r) => num(r[t.name]!.p99))),
      maxMs: median(raw.map((r) => num(r[t.name]!.max))),
      addedP50Ms: median(raw.map((r) => num(r[t.name]!.p50) - num(r.direct!.p50))),
      addedP99Ms: median(raw.map((r) => num(r[t.name]!.p99) - num(r.direct!.p99))),
      p99OpeningMs: median(raw.map((r) => num(r[t.name]!.p99Opening))),
      p99OpenMs: median(raw.map((r) => num(r[t.name]!.p99Open))),
      completed: Math.min(...raw.map((r) => r[t.name]!.completed)),
      cpuUsPerEvent: median(raw.map((r) => r.cpuUsPerEvent?.[t.name] ?? NaN)),
      cpuVsMinimal: cpuRatio(t.name, "deno-minimal"),
    };
  }
  const goals = {
    relayCpuPerEventVsMinimal: summary.relay!.cpuVsMinimal!,
    relayAddedP99MinusNginxMs: median(
      raw.map((r) => num(r.relay!.p99) - num(r.nginx!.p99)),
    ),
  };
  results.sse = {
    raw,
    summary,
    goals,
    relayRssMaxMb: relayRss,
    streams,
    events,
    intervalMs,
    rampMs,
    bg,
  };
  let t = `### SSE: ${streams} concurrent streams (opened over ${rampMs / 1000} s), ${events} ` +
    `events each ${intervalMs} ms apart (medians of ${rounds})\n\n| row | event delay p50 | p99 | max | added p50 | added p99 | ` +
    "p99 while streams open / after | streams complete | proxy CPU µs/event | vs deno-minimal |\n" +
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const tg of targets) {
    const s = summary[tg.name]!;
    const d = tg.name === "direct";
    t += `| ${tg.name} | ${fmt(s.p50Ms, 3)} ms | ${fmt(s.p99Ms, 3)} ms | ${fmt(s.maxMs, 1)} ms | ${
      d ? "–" : `${fmt(s.addedP50Ms, 3)} ms`
    } | ${d ? "–" : `${fmt(s.addedP99Ms, 3)} ms`} | ${fmt(s.p99OpeningMs, 3)} / ${
      fmt(s.p99OpenMs, 3)
    } ms | ${s.completed}/${streams} | ${fmt(s.cpuUsPerEvent, 1)} | ${fmt(s.cpuVsMinimal)} |\n`;
  }
  t +=
    `\nrelay / deno-minimal, CPU per event: ${
      fmt(goals.relayCpuPerEventVsMinimal)
    } (goal ≤ 1.0). Relay p99 event delay minus nginx's: ${
      fmt(goals.relayAddedP99MinusNginxMs, 3)
    } ms (goal ≤ 0). ` +
    `CPU per event is each proxy's CPU over the round divided by ${streams} × ${events + 2} ` +
    "events, so it includes setting up each stream. The p99 split: events A sent during the " +
    `first ${rampMs / 1000} s, while streams were still being opened, and those sent after.\n`;
  t += `\nRelay RSS peak during the SSE runs: ${relayRss} MB. Other load before each round: ${
    bg.join(", ")
  }%. Errors: ${
    JSON.stringify(Object.fromEntries(targets.map((tg) => [tg.name, raw.at(-1)![tg.name]!.errors])))
  }\n`;
  md.push(t);
  for (const m of [relay, relayDeno, nginx, minimal.proc]) await m.stop();
}

async function sectionStreams(): Promise<void> {
  const ramp = 1000;
  const levels = quick ? [1000, 10000] : [1000, 2500, 5000, 7500, 9500, 10000];
  const rows: Array<
    CapacityResult & { proxy: string; rssMaxMb: number; relayAlive: boolean; fdErrors: number }
  > = [];
  // The relay at every level; the minimal Deno relay once, as the runtime's own memory floor.
  const runs = levels.map((n) => ({ proxy: "relay", n }));
  if (!quick) runs.push({ proxy: "deno-minimal", n: 5000 });
  const eventsFor = (n: number) => Math.ceil(n / ramp) + 5;
  for (const { proxy, n } of runs) {
    // Streams last longer than the ramp, so all of them are open at once for ~5 s.
    const events = eventsFor(n);
    progress(`streams: ${proxy}, ${n} concurrent (ramp ${ramp}/s, ${events} events 1 s apart)`);
    const upPort = freePort();
    const upstream = await startFakeSse(
      "fake-sse",
      { port: upPort, events, intervalMs: 1000, maxSec: 900, cpu: LOAD_CPU },
      `${tmp}/fake-sse-${proxy}-${n}.log`,
    );
    procs.push(upstream);
    const port = freePort();
    const log = relayLog(`${proxy}-streams-${n}`);
    let relay: Proc;
    if (proxy === "relay") {
      relay = await startRelay(`relay-streams-${n}`, {
        port,
        upstream: `http://${HOST}:${upPort}`,
        cpu: PROXY_CPU,
        env: { ACCESS_LOG: "0" },
        logFile: log,
      });
    } else {
      relay = (await startCalibration(`${proxy}-streams`, {
        script: "minimal_relay.ts",
        upstream: `http://${HOST}:${upPort}`,
        cpu: PROXY_CPU,
        port,
        logFile: log,
      })).proc;
    }
    procs.push(relay);
    const rss = rssSampler(relay.pid, 200);
    const out = await sseCapacityLoad({
      url: `http://${HOST}:${port}/v1/chat/completions`,
      streams: n,
      events,
      ramp,
      maxSec: events + Math.ceil(n / ramp) + 30,
      cpu: LOAD_CPU,
    });
    const rssMaxMb = rss.stop();
    const relayAlive = relay.exitCode === null;
    const text = Deno.readTextFileSync(log);
    const fdErrors = (text.match(/Too many open files|os error 24/g) ?? []).length;
    rows.push({ ...(JSON.parse(out) as CapacityResult), proxy, rssMaxMb, relayAlive, fdErrors });
    await relay.stop();
    await upstream.stop();
    await sleep(1000);
  }
  const mine = rows.filter((r) => r.proxy === "relay");
  const held = mine.filter((r) => r.completed === r.streams).map((r) => r.streams);
  const most = Math.max(0, ...mine.map((r) => r.completed));
  results.streams = {
    rows,
    ramp,
    maxAllComplete: Math.max(0, ...held),
    mostCompleted: most,
  };
  let t =
    `### Concurrent streams (opened ${ramp}/s; each stream ${eventsFor(1000)}–${
      eventsFor(Math.max(...levels))
    } events 1 s apart, so all are open together for ~5 s)\n\n` +
    "| proxy | streams asked | got a response head | completed with every event | " +
    "peak open at once | RSS peak | alive after | errors |\n|---|---:|---:|---:|---:|---:|---|---|\n";
  for (const r of rows) {
    t +=
      `| ${r.proxy} | ${r.streams} | ${r.opened} | ${r.completed} | ${r.peakOpen} | ${r.rssMaxMb} MB | ${
        r.relayAlive ? "yes" : "**no**"
      } | ${r.errors.join("; ") || "–"}${r.fdErrors ? ` (EMFILE ×${r.fdErrors})` : ""} |\n`;
  }
  md.push(t);
}

/**
 * The relay over h2 and over HTTP/1.1 to an HTTPS A (nginx), against deno-minimal's `fetch` and
 * nginx as a proxy to the same A: the deployment most users have, where the sections above use a
 * plain-HTTP A. SSE in the goals' shape (10 events 500 ms apart), 1,000 streams opened at once.
 */
async function sectionH2(): Promise<void> {
  const json = `${tmp}/h2.json`;
  const args = quick
    ? ["--quick"]
    : [`--rounds=${rounds}`, "--duration=5", "--events=10", "--gap-ms=500"];
  progress(`h2_upstream ${args.join(" ")}`);
  const out = await runToEnd("h2-upstream", [
    "deno",
    "run",
    "-A",
    `${BENCH}/h2_upstream.ts`,
    ...args,
    `--json=${json}`,
    `--relay-cpu=${PROXY_CPU}`,
    `--load-cpu=${LOAD_CPU}`,
  ], { timeoutMs: 1_800_000 });
  results.h2 = JSON.parse(Deno.readTextFileSync(json));
  md.push(out.trim() + "\n");
}

async function sectionRoute(): Promise<void> {
  const json = `${tmp}/route.json`;
  const args = quick
    ? ["--idle-sec=8", "--reps=3", "--idle-reps=1"]
    : ["--idle-sec=60", "--reps=5", "--idle-reps=1"];
  progress(`route_sim ${args.join(" ")}`);
  const out = await runToEnd("route-sim", [
    "deno",
    "run",
    "-A",
    `${BENCH}/route_sim/run.ts`,
    ...args,
    `--json=${json}`,
  ], { cpu: LOAD_CPU, timeoutMs: 600_000 });
  results.route = JSON.parse(Deno.readTextFileSync(json));
  md.push(
    "### Route simulation (client↔A RTT 500 ms, client↔B 50 ms, B↔A 10 ms, A thinks 200 ms)\n\n" +
      out.trim() + "\n",
  );
}

async function sectionKeepWarm(): Promise<void> {
  const json = `${tmp}/keepwarm.json`;
  const args = quick ? ["--idle-sec=8", "--reps=1"] : ["--idle-sec=30", "--reps=3"];
  progress(`keepwarm ${args.join(" ")}`);
  const out = await runToEnd("keepwarm", [
    "deno",
    "run",
    "-A",
    `${BENCH}/keepwarm.ts`,
    ...args,
    "--rtt=10",
    `--json=${json}`,
  ], { cpu: LOAD_CPU, timeoutMs: 600_000 });
  results.keepwarm = JSON.parse(Deno.readTextFileSync(json));
  md.push(
    "### Keep-warm: first request after idle, fake HTTPS A closing idle connections " +
      "after 5 s\n\n" + out.trim() + "\n",
  );
}

// ---------------------------------------------------------------------------------------------

const sections: Record<string, () => Promise<void>> = {
  http: sectionHttp,
  observers: sectionObservers,
  profile: sectionProfile,
  sse: sectionSse,
  streams: sectionStreams,
  h2: sectionH2,
  route: sectionRoute,
  keepwarm: sectionKeepWarm,
};

const started = performance.now();
try {
  results.machine = await machine();
  const m = results.machine as Record<string, string>;
  md.push(
    `## Benchmark run ${stamp}${quick ? " (quick)" : ""}\n\nMachine: ${m.nproc} cores, ${m.cpu}, ` +
      `${m.memTotal}, Linux ${m.kernel}; Deno ${m.deno}, ${m.nginx}, ${m.wrk}, Node ${m.node}, ` +
      `@portkey-ai/gateway ${m.portkey}. Load average at start: ${m.loadavg}.\n` +
      `Proxy under test on core ${PROXY_CPU}; upstream, wrk and clients on core ${LOAD_CPU}.\n`,
  );
  for (const name of SECTIONS) {
    if (!only.includes(name)) continue;
    const t0 = performance.now();
    try {
      await sections[name]!();
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      progress(`section ${name} failed: ${msg}`);
      results[`${name}Error`] = msg;
      md.push(`### ${name}: FAILED\n\n\`\`\`\n${msg.slice(0, 2000)}\n\`\`\`\n`);
    }
    progress(`section ${name} done in ${round((performance.now() - t0) / 1000, 0)} s`);
  }
} finally {
  for (const p of procs.reverse()) await p.stop();
  disarm();
}
results.elapsedSec = round((performance.now() - started) / 1000, 0);
results.loadavgEnd = Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
md.push(
  `Run took ${results.elapsedSec} s; load average at the end: ${results.loadavgEnd}. Logs: ${tmp}\n`,
);
const text = md.join("\n");
Deno.writeTextFileSync(`${resultsDir}/${stamp}.json`, JSON.stringify(results, null, 2) + "\n");
Deno.writeTextFileSync(`${resultsDir}/${stamp}.md`, text);
// deno-lint-ignore no-console
console.log(text);
