/**
 * Memory per open stream: the relay (own server), deno-minimal and `tcp_pipe.ts` with 4 KiB
 * buffers (the runtime's floor: two sockets with a read in flight, no HTTP) each hold `--streams`
 * SSE streams (default 5,000) open together for a few seconds; the row is (peak RSS − RSS before
 * the streams) / streams, both sockets of each stream included. `--env=NAME=VALUE` (repeatable) is
 * passed to every proxy, e.g. to try allocator settings. `--v8=FLAGS` starts the relay with
 * `--v8-flags=FLAGS` instead of its shipped V8 flags.
 *
 *   deno run -A bench/stream_mem.ts [--streams=5000] [--only=relay|min|pipe] [--env=K=V] [--v8=FLAGS]
 */
import {
  envFlags,
  freePort,
  memory,
  numFlag,
  parseFlags,
  type Proc,
  rssSampler,
  sleep,
  sseCapacityLoad,
  startCalibration,
  startFakeSse,
  startRelay,
  v8FlagArgs,
} from "./common.ts";

const flags = parseFlags(Deno.args);
const streams = numFlag(flags, "streams", 5000);
const only = flags.get("only");
const extraEnv = envFlags(Deno.args);
const ramp = 2500;
// Streams outlast the ramp, so all of them are open together for ~5 s.
const events = Math.ceil(streams / ramp) + 6;
const dir = await Deno.makeTempDir();
const rows: string[] = [];

/** Starts one proxy on core 0 in front of the fake upstream. */
async function startProxy(name: string, port: number, upstream: string): Promise<Proc> {
  if (name === "relay") {
    return await startRelay("relay", {
      port,
      upstream,
      cpu: "0",
      env: { ACCESS_LOG: "0", ...extraEnv },
      denoFlags: v8FlagArgs(flags),
      logFile: `${dir}/relay.log`,
    });
  }
  const { proc } = await startCalibration(name, {
    script: name === "min" ? "minimal_relay.ts" : "tcp_pipe.ts",
    upstream,
    cpu: "0",
    port,
    env: { PIPE_BUF: "4096", ...extraEnv },
    logFile: `${dir}/${name}.log`,
  });
  return proc;
}

for (const name of ["relay", "min", "pipe"]) {
  if (only !== undefined && only !== name) continue;
  const upPort = freePort(), port = freePort();
  const upstream = await startFakeSse(
    "fake-sse",
    { port: upPort, events, intervalMs: 1000, maxSec: 300, cpu: "1" },
    `${dir}/up-${name}.log`,
  );
  const proxy = await startProxy(name, port, `http://127.0.0.1:${upPort}`);
  await sleep(3000);
  const idle = memory(proxy.pid).rssMb;
  const rss = rssSampler(proxy.pid, 100);
  const out = await sseCapacityLoad({
    url: `http://127.0.0.1:${port}/v1/chat/completions`,
    streams,
    events,
    ramp,
    maxSec: events + 40,
    cpu: "1",
  });
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
