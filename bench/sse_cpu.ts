/**
 * SSE CPU per event, the relay (own server) against deno-minimal, 3 alternating rounds (`--rounds`, after one uncounted warm-up round) of 1,000
 * streams x 10 events (`--streams`, `--events`, `--interval-ms` change the shape, `--ramp-ms` the time
 * over which the streams open: short, and their events coincide); each proxy is charged only its own
 * run. `--prof` adds a `--cpu-prof` summary, `--threads` each round's CPU by thread (JS main thread,
 * V8's GC helpers, the runtime's I/O threads). Each row's peak RSS over all its rounds is printed too.
 *
 * `--base=TREE` adds the relay of another tree (e.g. a `git worktree` of an older commit) to the
 * rotation, for an A/B; runs on this shared machine swing by ±15 %, so take 5 or more rounds.
 * `--v8=FLAGS` adds this tree's relay started with `--v8-flags=FLAGS` (e.g. `--single-threaded-gc`),
 * for an A/B of V8's settings. `--deno-flags=A,B` starts the `relay` row (only) with these Deno
 * flags (e.g. `--no-code-cache`); with `--base=<this checkout>`, an A/B of them. Each row's median
 * p99 event delay (ms) is printed too. `--gc` starts every row with `--trace-gc-nvp` and prints,
 * per counted round, what its collections cost (`gc_trace.ts`): the scavenges' pauses and the bytes
 * they copied, the full collections.
 *
 *   deno run -A bench/sse_cpu.ts [tree root, default this checkout] [--prof] [--gc] [--base=TREE] [--v8=FLAGS] [--deno-flags=FLAGS] [--rounds=3]
 */
import {
  cpuSeconds,
  freePort,
  median,
  memory,
  numFlag,
  parseFlags,
  sleep,
  sseDelayLoad,
  startCalibration,
  startRelay,
  threadCpuSeconds,
} from "./common.ts";
import { summarise, summaryMarkdown } from "./profile_summary.ts";
import { GC_TABLE_HEAD, gcRow, lineBufferedStdout, parseGcTrace, summariseGc } from "./gc_trace.ts";
import { RELAY_V8_FLAGS } from "../lib/ops/permissions.ts";
const root = Deno.args.find((a) => !a.startsWith("--")) ?? new URL("..", import.meta.url).pathname;
const flags = parseFlags(Deno.args);
const prof = flags.has("prof");
const threads = flags.has("threads");
const gc = flags.has("gc");
/** The relay's own V8 flag with the GC trace added (a row's `--v8-flags` replaces the shipped one). */
const withGcTrace = (v8Flags: string): string[] => gc ? [`${v8Flags},--trace-gc-nvp`] : [v8Flags];
const gcEnv = gc ? lineBufferedStdout() : {};
// More events per stream at the same total time separate the per-event cost from the per-stream one.
const events = numFlag(flags, "events", 10),
  intervalMs = numFlag(flags, "interval-ms", 500),
  streams = numFlag(flags, "streams", 1000),
  rampMs = numFlag(flags, "ramp-ms", 2000);
const ssePort = freePort();
const dir = await Deno.makeTempDir();
/** A relay of tree `tree` on core 0 in front of the SSE upstream, as row `name`. */
async function relayRow(name: string, tree: string, denoFlags: string[]) {
  const port = freePort();
  const proc = await startRelay(name, {
    port,
    upstream: `http://127.0.0.1:${ssePort}`,
    cpu: "0",
    env: { ACCESS_LOG: "0", ...gcEnv },
    denoFlags,
    script: `${tree}/main.ts`,
    logFile: `${dir}/${name}.log`,
  });
  return { proc, port };
}
const { proc: relay, port: relayPort } = await relayRow(
  "relay",
  root,
  [
    ...(prof ? ["--cpu-prof", `--cpu-prof-dir=${dir}`] : []),
    ...(gc ? withGcTrace(RELAY_V8_FLAGS) : []),
    ...(flags.get("deno-flags")?.split(",") ?? []),
  ],
);
const { proc: min, port: minPort } = await startCalibration("min", {
  script: `${root}/bench/minimal_relay.ts`,
  upstream: `http://127.0.0.1:${ssePort}`,
  cpu: "0",
  env: gcEnv,
  denoFlags: gc ? ["--v8-flags=--trace-gc-nvp"] : [],
  logFile: `${dir}/min.log`,
});
const base = flags.get("base")?.replace(/\/$/, "");
const baseRow = base === undefined
  ? null
  : await relayRow("relay-base", base, gc ? withGcTrace(RELAY_V8_FLAGS) : []);
const baseRelay = baseRow?.proc ?? null, basePort = baseRow?.port ?? 0;
const v8 = flags.get("v8");
const v8Row = v8 === undefined
  ? null
  : await relayRow("relay-v8", root, withGcTrace(`--v8-flags=${v8}`));
const v8Relay = v8Row?.proc ?? null, v8Port = v8Row?.port ?? 0;
await sleep(1000);
const res: Record<string, number[]> = { relay: [], min: [] };
const p99s: Record<string, number[]> = {};
const rows: [string, number, number][] = [["relay", relayPort, relay.pid], [
  "min",
  minPort,
  min.pid,
]];
if (baseRelay !== null) {
  rows.push(["relay-base", basePort, baseRelay.pid]);
  res["relay-base"] = [];
}
if (v8Relay !== null) {
  rows.push(["relay-v8", v8Port, v8Relay.pid]);
  res["relay-v8"] = [];
}
const rounds = numFlag(flags, "rounds", 3);
/** Each counted round's GC table row, with `--gc`. */
const gcRows: string[] = [];
/** The bytes of `name`'s log (where V8 prints its trace) up to now. */
const logSize = (name: string): number => {
  try {
    return Deno.statSync(`${dir}/${name}.log`).size;
  } catch {
    return 0;
  }
};
// Round 0 warms both up (JIT, pools) and is not counted.
for (let k = 0; k <= rounds; k++) {
  // Each round in another order, so no row always follows the same neighbour.
  for (const [name, port, pid] of rows.map((_, i) => rows[(i + k) % rows.length]!)) {
    const c0 = cpuSeconds(pid);
    const t0 = threads ? threadCpuSeconds(pid) : null;
    const log0 = gc ? logSize(name) : 0;
    const out = await sseDelayLoad({
      upstreamPort: ssePort,
      streams,
      events,
      intervalMs,
      rampMs,
      maxSec: 60,
      targets: [`${name}=http://127.0.0.1:${port}/v1/chat/completions`],
      cpu: "1",
      timeoutMs: 120_000,
    });
    const us = (cpuSeconds(pid) - c0) * 1e6 / (streams * (events + 2));
    if (k > 0) {
      res[name]!.push(Math.round(us * 10) / 10);
      try {
        const p99 = (JSON.parse(out) as Record<string, { p99?: number }>)[name]?.p99;
        if (p99 !== undefined) (p99s[name] ??= []).push(p99);
      } catch { /* no JSON: the line above shows what came instead */ }
    }
    // deno-lint-ignore no-console
    console.log(name, "cpu µs/event", us.toFixed(1), out.slice(0, 300).replace(/\n/g, " "));
    if (gc && k > 0) {
      const log = Deno.readFileSync(`${dir}/${name}.log`).subarray(log0);
      const s = summariseGc(parseGcTrace(new TextDecoder().decode(log)));
      gcRows.push(gcRow(`${name} round ${k}`, s));
    }
    if (t0 !== null) {
      const per = [...threadCpuSeconds(pid)].map(([t, s]) => [t, s - (t0.get(t) ?? 0)] as const)
        .filter(([, s]) => s > 0).sort((a, b) => b[1] - a[1]);
      // deno-lint-ignore no-console
      console.log(
        "  by thread, µs/event:",
        per.map(([t, s]) => `${t} ${(s * 1e6 / (streams * (events + 2))).toFixed(1)}`).join("; "),
      );
    }
  }
}
// deno-lint-ignore no-console
console.log(
  JSON.stringify(res),
  "ratio medians",
  (median(res.relay!) / median(res.min!)).toFixed(2),
  ...(baseRelay === null
    ? []
    : ["base", (median(res["relay-base"]!) / median(res.min!)).toFixed(2)]),
  ...(v8Relay === null ? [] : ["v8", (median(res["relay-v8"]!) / median(res.min!)).toFixed(2)]),
);
// deno-lint-ignore no-console
console.log(
  "median p99 event delay, ms:",
  Object.entries(p99s).map(([name, xs]) => `${name} ${median(xs)} (${xs.join(", ")})`).join("; "),
);
if (gc) {
  // deno-lint-ignore no-console
  console.log(
    `\nGC per counted round (${streams} streams x ${events} events):\n\n${GC_TABLE_HEAD}`,
  );
  // deno-lint-ignore no-console
  for (const row of gcRows) console.log(row);
}
// deno-lint-ignore no-console
console.log(
  "peak RSS over all rounds, MB:",
  rows.map(([name, , pid]) => `${name} ${memory(pid).peakMb}`).join("; "),
);
await relay.stop(8000);
await baseRelay?.stop(8000);
await v8Relay?.stop(8000);
await min.stop(3000);
await sleep(2000);
if (prof) {
  const f = [...Deno.readDirSync(dir)].find((e) => e.name.endsWith(".cpuprofile"));
  if (f) {
    // deno-lint-ignore no-console
    console.log(
      summaryMarkdown(summarise(JSON.parse(Deno.readTextFileSync(`${dir}/${f.name}`))), 25),
    );
  }
}
