/**
 * SSE CPU per event, the relay (own server) against deno-minimal, 3 alternating rounds of 1,000
 * streams x 10 events; each proxy is charged only its own run. `--prof` adds a `--cpu-prof` summary.
 *
 *   deno run -A bench/sse_cpu.ts [tree root, default this checkout] [--prof]
 */
import { cpuSeconds, freePort, runToEnd, sleep, spawn, waitForPort } from "./common.ts";
import { summarise, summaryMarkdown } from "./profile_summary.ts";
const root = Deno.args.find((a) => !a.startsWith("--")) ?? new URL("..", import.meta.url).pathname;
const prof = Deno.args.includes("--prof");
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
for (let k = 0; k < 3; k++) {
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
      "--streams=1000",
      "--events=10",
      "--interval-ms=500",
      "--ramp-ms=2000",
      "--max-sec=60",
      `--target=${name}=http://127.0.0.1:${port}/v1/chat/completions`,
    ], { timeoutMs: 120000 });
    const us = (cpuSeconds(pid) - c0) * 1e6 / (1000 * 12);
    res[name]!.push(Math.round(us * 10) / 10);
    // deno-lint-ignore no-console
    console.log(name, "cpu µs/event", us.toFixed(1), out.slice(0, 300).replace(/\n/g, " "));
  }
}
// deno-lint-ignore no-console
console.log(
  JSON.stringify(res),
  "ratio medians",
  (res.relay!.sort()[1]! / res.min!.sort()[1]!).toFixed(2),
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
