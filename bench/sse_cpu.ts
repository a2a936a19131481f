/**
 * SSE CPU per event, the relay (own server) against deno-minimal, 3 alternating rounds (`--rounds`, after one uncounted warm-up round) of 1,000
 * streams x 10 events (`--streams`, `--events`, `--interval-ms` change the shape); each proxy is charged only its own run. `--prof` adds a `--cpu-prof` summary.
 *
 *   deno run -A bench/sse_cpu.ts [tree root, default this checkout] [--prof]
 */
import { cpuSeconds, freePort, runToEnd, sleep, spawn, waitForPort } from "./common.ts";
import { summarise, summaryMarkdown } from "./profile_summary.ts";
const root = Deno.args.find((a) => !a.startsWith("--")) ?? new URL("..", import.meta.url).pathname;
const prof = Deno.args.includes("--prof");
const flag = (name: string, def: number): number => {
  const a = Deno.args.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.slice(name.length + 3)) : def;
};
// More events per stream at the same total time separate the per-event cost from the per-stream one.
const events = flag("events", 10),
  intervalMs = flag("interval-ms", 500),
  streams = flag("streams", 1000);
const ssePort = freePort(), relayPort = freePort(), minPort = freePort();
const dir = await Deno.makeTempDir();
const relay = spawn("relay", [
  "taskset",
  "-c",
  "0",
  "deno",
  "run",
  "--unstable-no-legacy-abort",
  ...(prof ? ["--cpu-prof", `--cpu-prof-dir=${dir}`] : []),
  "-A",
  `${root}/main.ts`,
], {
  env: {
    UPSTREAM_SERVER_A: `http://127.0.0.1:${ssePort}`,
    PORT: String(relayPort),
    ACCESS_LOG: "0",
  },
  logFile: `${dir}/relay.log`,
});
const min = spawn("min", [
  "taskset",
  "-c",
  "0",
  "deno",
  "run",
  "-A",
  `${root}/bench/minimal_relay.ts`,
], {
  env: { UPSTREAM: `http://127.0.0.1:${ssePort}`, PORT: String(minPort) },
  logFile: `${dir}/min.log`,
});
await waitForPort(relayPort, 30000, relay);
await waitForPort(minPort, 30000, min);
await sleep(1000);
const res: Record<string, number[]> = { relay: [], min: [] };
/** Numeric median (a bare sort() orders numbers as strings). */
function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
const rounds = flag("rounds", 3);
// Round 0 warms both up (JIT, pools) and is not counted.
for (let k = 0; k <= rounds; k++) {
  for (
    const [name, port, pid] of (k % 2
      ? [["min", minPort, min.pid], ["relay", relayPort, relay.pid]]
      : [["relay", relayPort, relay.pid], ["min", minPort, min.pid]]) as [string, number, number][]
  ) {
    const c0 = cpuSeconds(pid);
    const out = await runToEnd("sse", [
      "taskset",
      "-c",
      "1",
      "deno",
      "run",
      "-A",
      `${root}/bench/sse_load.ts`,
      "--mode=delay",
      `--upstream-port=${ssePort}`,
      `--streams=${streams}`,
      `--events=${events}`,
      `--interval-ms=${intervalMs}`,
      "--ramp-ms=2000",
      "--max-sec=60",
      `--target=${name}=http://127.0.0.1:${port}/v1/chat/completions`,
    ], { timeoutMs: 120000 });
    const us = (cpuSeconds(pid) - c0) * 1e6 / (streams * (events + 2));
    if (k > 0) {
      res[name]!.push(Math.round(us * 10) / 10);
    }
    // deno-lint-ignore no-console
    console.log(name, "cpu µs/event", us.toFixed(1), out.slice(0, 300).replace(/\n/g, " "));
  }
}
// deno-lint-ignore no-console
console.log(
  JSON.stringify(res),
  "ratio medians",
  (median(res.relay!) / median(res.min!)).toFixed(2),
);
await relay.stop(8000);
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
