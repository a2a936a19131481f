/**
 * CPU per relayed request and req/s under `wrk -t1 -c50` (1 KB JSON answers from nginx), in
 * alternating rounds: the relay of this checkout, optionally the relay of another tree
 * (`--base=/path/to/checkout`, e.g. a `git worktree` of an older commit), deno-minimal and the
 * TCP pipe. Each proxy is pinned to core 0 and charged only its own run (`/proc` CPU time over
 * requests); wrk and nginx share core 1. A quicker A/B than `deno task bench --only=http`.
 *
 * `--close` sends `Connection: close`, so every request comes on a new connection: what a
 * connection costs (accept, setup, close), which an SSE stream pays once per stream.
 * `--body-kb=N` pads the request body to about N KB (Claude Code sends tens of KB per request), and
 * the upstream reads each body whole before it answers, as Server A does.
 * `--prof` runs this checkout's relay with `--cpu-prof` and prints where its time went.
 * `--v8=FLAGS` starts this checkout's relay with `--v8-flags=FLAGS`; with `--base=<this checkout>
 * --pair` that is an A/B of V8's settings on the same code.
 * `--env=NAME=VALUE` (repeatable) sets an environment variable for this checkout's relay only (e.g.
 * an allocator setting); with `--base=<this checkout> --pair`, an A/B of it.
 * `--deno-flags=A,B` adds Deno flags (e.g. `--no-code-cache`) to this checkout's relay only; with
 * `--base=<this checkout> --pair`, an A/B of them.
 * `--pair` (with `--base`) runs only the two relays, back to back in each round, and prints the
 * median of their per-round CPU ratios: short rounds (`--seconds=2 --rounds=20`) pair them closely
 * in time, which resolves a few per cent on this shared machine where 5-second rows of identical
 * code differed by up to 20 %.
 *
 *   deno run -A bench/http_cpu.ts [--base=TREE] [--rounds=3] [--seconds=5] [--close] [--body-kb=N] [--prof] [--v8=FLAGS] [--deno-flags=FLAGS] [--env=K=V]
 */
import {
  chatPostScript,
  cpuSeconds,
  envFlags,
  freePort,
  median,
  numFlag,
  parseFlags,
  type Proc,
  sleep,
  startCalibration,
  startRelay,
  v8FlagArgs,
  wrkPost,
} from "./common.ts";
import { startJsonUpstream } from "./nginx.ts";
import { summarise, summaryMarkdown } from "./profile_summary.ts";

const flags = parseFlags(Deno.args);
const rounds = numFlag(flags, "rounds", 3), seconds = numFlag(flags, "seconds", 5);
const base = flags.get("base");
const dir = await Deno.makeTempDir();
const bodyKb = numFlag(flags, "body-kb", 0);
// With bodies, A reads each one whole before it answers, as Server A does.
const nginx = await startJsonUpstream(dir, bodyKb > 0);
const upstream = nginx.url;
const script = chatPostScript(dir, flags.has("close"), bodyKb * 1024);

interface Row {
  name: string;
  port: number;
  proc: Proc;
}
const rows: Row[] = [];
const prof = flags.has("prof");
const pair = flags.has("pair") && base !== undefined;
const relay = async (
  name: string,
  root: string,
  denoFlags: string[] = [],
  env: Record<string, string> = {},
): Promise<void> => {
  const port = freePort();
  const proc = await startRelay(name, {
    port,
    upstream,
    cpu: "0",
    env: { ACCESS_LOG: "0", ...env },
    denoFlags,
    script: `${root}/main.ts`,
    logFile: `${dir}/${name}.log`,
  });
  rows.push({ name, port, proc });
};
const plain = async (name: string, script: string): Promise<void> => {
  const { proc, port } = await startCalibration(name, {
    script,
    upstream,
    cpu: "0",
    logFile: `${dir}/${name}.log`,
  });
  rows.push({ name, port, proc });
};
await relay(
  "relay",
  new URL("..", import.meta.url).pathname.replace(/\/$/, ""),
  [
    ...(prof ? ["--cpu-prof", `--cpu-prof-dir=${dir}/prof`] : []),
    ...v8FlagArgs(flags),
    ...(flags.get("deno-flags")?.split(",") ?? []),
  ],
  envFlags(Deno.args),
);
if (base !== undefined) await relay("relay-base", base.replace(/\/$/, ""));
if (!pair) {
  await plain("deno-minimal", "minimal_relay.ts");
  await plain("tcp-pipe", "tcp_pipe.ts");
}

const wrk = async (port: number, seconds: number): Promise<number> =>
  (await wrkPost(port, { conns: 50, seconds, script })).requests;
const us: Record<string, number[]> = {}, rps: Record<string, number[]> = {};
try {
  for (const r of rows) await wrk(r.port, 1); // warm-up: JIT, connections to nginx
  for (let k = 0; k < rounds; k++) {
    // Each round in another order, so no row always follows the same neighbour.
    const order = rows.map((_, i) => rows[(i + k) % rows.length]!);
    for (const r of order) {
      await sleep(500);
      const c0 = cpuSeconds(r.proc.pid);
      const n = await wrk(r.port, seconds);
      (us[r.name] ??= []).push((cpuSeconds(r.proc.pid) - c0) * 1e6 / n);
      (rps[r.name] ??= []).push(n / seconds);
    }
  }
} finally {
  // A relay writes its profile as it exits: give it time.
  for (const r of rows) await r.proc.stop(8000);
  await nginx.proc.stop();
}
const m = (xs: number[]) => median(xs);
if (pair) {
  const a = us["relay"]!, b = us["relay-base"]!;
  const ratios = a.map((x, i) => x / b[i]!);
  // deno-lint-ignore no-console
  console.log(
    [
      `wrk -t1 -c50 -d${seconds}s, ${rounds} rounds of relay and relay-base back to back`,
      `relay CPU µs/request: median ${m(a).toFixed(1)} (${a.map((x) => x.toFixed(1)).join(", ")})`,
      `relay-base CPU µs/request: median ${m(b).toFixed(1)} (${
        b.map((x) => x.toFixed(1)).join(", ")
      })`,
      `relay / relay-base per round: median ${m(ratios).toFixed(3)}; relay lower in ${
        ratios.filter((r) => r < 1).length
      } of ${ratios.length} rounds`,
    ].join("\n"),
  );
  Deno.exit(0);
}
const pipe = m(rps["tcp-pipe"]!), minimal = m(us["deno-minimal"]!);
const lines = [
  `wrk -t1 -c50 -d${seconds}s${flags.has("close") ? ", Connection: close" : ""}${
    bodyKb > 0 ? `, ${bodyKb} KB request bodies` : ""
  }, ${rounds} rounds, medians (each round's value in brackets)`,
  "",
  "| row | req/s | × tcp-pipe req/s | CPU µs/request | × deno-minimal CPU |",
  "|---|---:|---:|---:|---:|",
];
for (const r of rows) {
  const R = rps[r.name]!, U = us[r.name]!;
  lines.push(
    `| ${r.name} | ${Math.round(m(R))} (${R.map(Math.round).join(", ")}) | ${
      (m(R) / pipe).toFixed(2)
    } | ${m(U).toFixed(1)} (${U.map((x) => x.toFixed(1)).join(", ")}) | ${
      (m(U) / minimal).toFixed(2)
    } |`,
  );
}
if (prof) {
  const found = [...Deno.readDirSync(`${dir}/prof`)].find((e) => e.name.endsWith(".cpuprofile"));
  lines.push(
    "",
    found === undefined
      ? "no .cpuprofile was written (the relay did not exit cleanly)"
      : summaryMarkdown(
        summarise(JSON.parse(Deno.readTextFileSync(`${dir}/prof/${found.name}`))),
        25,
      ),
  );
}
// deno-lint-ignore no-console
console.log(lines.join("\n"));
await Deno.remove(dir, { recursive: true });
