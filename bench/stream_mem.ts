/**
 * Memory per open stream: the relay (own server) and deno-minimal each hold `--streams` SSE
 * streams (default 5,000) open together for a few seconds; the row is (peak RSS − RSS before the
 * streams) / streams, both sockets of each stream included. `--env=NAME=VALUE` (repeatable) is
 * passed to both proxies, e.g. to try allocator settings.
 *
 *   deno run -A bench/stream_mem.ts [--streams=5000] [--only=relay|min] [--env=K=V]
 */
import { freePort, memory, rssSampler, runToEnd, sleep, spawn, waitForPort } from "./common.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const arg = (name: string): string | undefined =>
  Deno.args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
const streams = Number(arg("streams") ?? 5000);
const only = arg("only");
const extraEnv: Record<string, string> = {};
for (const a of Deno.args.filter((a) => a.startsWith("--env="))) {
  const [k, ...v] = a.slice(6).split("=");
  extraEnv[k!] = v.join("=");
}
const ramp = 2500;
// Streams outlast the ramp, so all of them are open together for ~5 s.
const events = Math.ceil(streams / ramp) + 6;
const dir = await Deno.makeTempDir();
const rows: string[] = [];

for (const name of ["relay", "min", "pipe"]) {
  if (only !== undefined && only !== name) continue;
  const upPort = freePort(), port = freePort();
  const upstream = spawn("fake-sse", [
    "taskset",
    "-c",
    "1",
    "deno",
    "run",
    "-A",
    `${ROOT}/bench/fake_sse.ts`,
    `--port=${upPort}`,
    `--events=${events}`,
    "--interval-ms=1000",
    "--max-sec=300",
  ], { logFile: `${dir}/up-${name}.log` });
  await waitForPort(upPort, 30000, upstream);
  const proxy = name === "relay"
    ? spawn("relay", [
      "taskset",
      "-c",
      "0",
      "deno",
      "run",
      "--unstable-no-legacy-abort",
      "-A",
      `${ROOT}/main.ts`,
    ], {
      env: {
        UPSTREAM_SERVER_A: `http://127.0.0.1:${upPort}`,
        PORT: String(port),
        ACCESS_LOG: "0",
        ...extraEnv,
      },
      logFile: `${dir}/relay.log`,
    })
    : spawn(name, [
      "taskset",
      "-c",
      "0",
      "deno",
      "run",
      "-A",
      `${ROOT}/bench/${name === "min" ? "minimal_relay" : "tcp_pipe"}.ts`,
    ], {
      // The pipe with 4 KiB buffers, like the relay's: what two sockets with a read in flight
      // cost in this runtime before any HTTP.
      env: {
        UPSTREAM: `http://127.0.0.1:${upPort}`,
        PORT: String(port),
        PIPE_BUF: "4096",
        ...extraEnv,
      },
      logFile: `${dir}/${name}.log`,
    });
  await waitForPort(port, 30000, proxy);
  await sleep(3000);
  const idle = memory(proxy.pid).rssMb;
  const rss = rssSampler(proxy.pid, 100);
  const out = await runToEnd("sse", [
    "taskset",
    "-c",
    "1",
    "deno",
    "run",
    "-A",
    `${ROOT}/bench/sse_load.ts`,
    "--mode=capacity",
    `--url=http://127.0.0.1:${port}/v1/chat/completions`,
    `--streams=${streams}`,
    `--events=${events}`,
    `--ramp=${ramp}`,
    `--max-sec=${events + 40}`,
  ], { timeoutMs: (events + 90) * 1000 });
  const peak = rss.stop();
  const r = JSON.parse(out) as { completed: number; peakOpen: number };
  const perStream = (peak - idle) * 1024 / streams;
  rows.push(
    `| ${name} | ${streams} | ${r.completed} | ${r.peakOpen} | ${idle.toFixed(1)} MB | ${
      peak.toFixed(1)
    } MB | ${perStream.toFixed(1)} KB |`,
  );
  await proxy.stop(8000);
  await upstream.stop(3000);
  await sleep(1000);
}
// deno-lint-ignore no-console
console.log(
  `| proxy | streams | completed | peak open | RSS before | RSS peak | per stream |\n` +
    `|---|---:|---:|---:|---:|---:|---:|\n${rows.join("\n")}`,
);
