/**
 * JavaScript allocated per relayed request (garbage included), by function: the relay runs under
 * `alloc_main.ts`, nginx serves the JSON answer, and `latency.ts` sends `--n` POSTs one after
 * another on one connection while V8's sampling heap profiler counts. Allocation is what the
 * young-generation GC pauses grow with, and a share of the CPU per request.
 *
 *   deno run -A bench/alloc_requests.ts [--n=2000] [--top=25]
 */
import { BENCH, freePort, numFlag, parseFlags, runToEnd, sleep, startRelay } from "./common.ts";
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
try {
  await requests(500, 100); // warm: connections to A, JIT
  Deno.kill(relay.pid, "SIGUSR2");
  await sleep(300);
  await requests(n, 0);
  Deno.kill(relay.pid, "SIGUSR2");
  for (let i = 0; i < 50; i++) {
    await sleep(200);
    try {
      if (Deno.statSync(profile).size > 0) break;
    } catch { /* not written yet */ }
  }
  await sleep(500);
} finally {
  await relay.stop(5000);
  await nginx.stop();
}

interface Node {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: Node[];
}
const root = (JSON.parse(Deno.readTextFileSync(profile)) as { head: Node }).head;
const byFunction = new Map<string, number>(), byOurs = new Map<string, number>();
let total = 0;
const walk = (node: Node, ours: string): void => {
  const f = node.callFrame;
  const name = `${f.functionName || "(anonymous)"} ${f.url.replace(/^.*?\/(lib|bench)\//, "$1/")}:${
    f.lineNumber + 1
  }`;
  if (/\blib\//.test(name)) ours = name;
  if (node.selfSize > 0) {
    total += node.selfSize;
    byFunction.set(name, (byFunction.get(name) ?? 0) + node.selfSize);
    byOurs.set(ours, (byOurs.get(ours) ?? 0) + node.selfSize);
  }
  for (const c of node.children) walk(c, ours);
};
walk(root, "(outside lib/)");
const table = (title: string, m: Map<string, number>): string =>
  [`| ${title} | bytes per request |`, "|---|---:|"].concat(
    [...m].sort((a, b) => b[1] - a[1]).slice(0, top).map(([k, v]) =>
      `| \`${k}\` | ${Math.round(v / n)} |`
    ),
  ).join("\n");
// deno-lint-ignore no-console
console.log(
  `allocated per request: ${(total / n / 1024).toFixed(1)} KB (${n} requests)\n\n` +
    `${table("allocating function", byFunction)}\n\n${
      table("nearest lib/ frame (what caused it)", byOurs)
    }`,
);
await Deno.remove(dir, { recursive: true });
