/**
 * JavaScript allocated per relayed request (garbage included), by function: the relay runs under
 * `alloc_main.ts`, nginx serves the JSON answer, and `latency.ts` sends `--n` POSTs one after
 * another on one connection while V8's sampling heap profiler counts. Allocation is what the
 * young-generation GC pauses grow with, and a share of the CPU per request.
 *
 *   deno run -A bench/alloc_requests.ts [--n=2000] [--top=25]
 */
import { BENCH, freePort, numFlag, parseFlags, runToEnd, startRelay } from "./common.ts";
import {
  allocation,
  allocationTable,
  type ProfileNode,
  sampleAllocation,
} from "./alloc_profile.ts";
import { startNginx, staticConfig } from "./nginx.ts";

const flags = parseFlags(Deno.args);
const n = numFlag(flags, "n", 2000), top = numFlag(flags, "top", 25);
const dir = await Deno.makeTempDir();
const upPort = freePort(), port = freePort();
const upstream = `http://127.0.0.1:${upPort}`;
const nginx = await startNginx("nginx", `${dir}/nginx`, staticConfig(`${dir}/nginx`, upPort), {
  cpu: "1",
  ports: [upPort],
});
const profile = `${dir}/alloc.heapprofile`;
const relay = await startRelay("relay", {
  port,
  upstream,
  cpu: "0",
  env: { ACCESS_LOG: "0", ALLOC_PROFILE: profile },
  script: `${BENCH}/alloc_main.ts`,
  logFile: `${dir}/relay.log`,
});
const requests = (count: number, warmup: number) =>
  runToEnd("latency", [
    "deno",
    "run",
    "-A",
    `${BENCH}/latency.ts`,
    `--url=http://127.0.0.1:${port}/v1/chat/completions`,
    `--upstream=${upstream}`,
    `--n=${count}`,
    `--warmup=${warmup}`,
    "--max-sec=60",
  ], { cpu: "1", timeoutMs: 90_000 });
let root: ProfileNode;
try {
  await requests(500, 100); // warm: connections to A, JIT
  root = await sampleAllocation(relay.pid, profile, () => requests(n, 0));
} finally {
  await relay.stop(5000);
  await nginx.stop();
}
const a = allocation(root);
// deno-lint-ignore no-console
console.log(
  `allocated per request: ${(a.total / n / 1024).toFixed(1)} KB (${n} requests)\n\n` +
    `${allocationTable("allocating function", a.byFunction, n, "request", top)}\n\n${
      allocationTable("nearest lib/ frame (what caused it)", a.byOurs, n, "request", top)
    }`,
);
await Deno.remove(dir, { recursive: true });
