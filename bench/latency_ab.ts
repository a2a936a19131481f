/**
 * c=1 latency A/B: this tree's relay and another tree's (`--base`, e.g. a `git worktree` of an
 * older commit), next to direct, the TCP pipe and deno-minimal, in alternating rounds of
 * `bench/latency.ts` (`--n` sequential POSTs on one keep-alive connection after 300 warm-up ones).
 * Proxies on core 0, nginx (the ~1 KB JSON upstream) on core 1; the client runs in this process, so
 * start it on core 1 too (`taskset -c 1`, below). Prints each row's
 * median p50 and p99 over the rounds, every round's p50, and in how many rounds this tree's p50
 * was below the base's. Single rounds swing by ±10 % on this shared machine: take 8 or more.
 * `--v8=FLAGS` starts this tree's relay with `--v8-flags=FLAGS` (replacing the shipped V8 flags);
 * with `--base=<this tree>`, an A/B of V8's settings.
 *
 *   taskset -c 1 deno run -A bench/latency_ab.ts [--base=TREE] [--rounds=8] [--n=3000] [--v8=FLAGS]
 */

import {
  freePort,
  HOST,
  killAllStarted,
  median,
  numFlag,
  parseFlags,
  type Proc,
  ROOT,
  startCalibration,
  startRelay,
  tempDir,
  v8FlagArgs,
} from "./common.ts";
import { startJsonUpstream } from "./nginx.ts";
import { measureLatency } from "./latency.ts";

const flags = parseFlags(Deno.args);
const rounds = numFlag(flags, "rounds", 8), n = numFlag(flags, "n", 3000);
const base = flags.get("base");
const dir = tempDir("latency-ab");

const up = await startJsonUpstream(dir);
const procs: Proc[] = [up.proc];
const rows: { name: string; port: number }[] = [
  { name: "direct", port: Number(new URL(up.url).port) },
];
try {
  for (const [name, tree] of [["relay", ROOT], ...(base ? [["relay-base", base]] : [])]) {
    const port = freePort();
    procs.push(
      await startRelay(name!, {
        port,
        upstream: up.url,
        cpu: "0",
        env: { ACCESS_LOG: "0" },
        denoFlags: name === "relay" ? v8FlagArgs(flags) : [],
        script: `${tree}/main.ts`,
        logFile: `${dir}/${name}.log`,
      }),
    );
    rows.push({ name: name!, port });
  }
  for (
    const [name, script] of [["tcp-pipe", "tcp_pipe.ts"], ["deno-minimal", "minimal_relay.ts"]]
  ) {
    const { proc, port } = await startCalibration(name!, {
      script: script!,
      upstream: up.url,
      cpu: "0",
      logFile: `${dir}/${name}.log`,
    });
    procs.push(proc);
    rows.push({ name: name!, port });
  }

  const p50: Record<string, number[]> = {}, p99: Record<string, number[]> = {};
  for (let r = 0; r < rounds; r++) {
    for (const row of rows) {
      const l = await measureLatency(`http://${HOST}:${row.port}/v1/chat/completions`, {
        upstream: up.url,
        n,
        warmup: 300,
        maxSec: 60,
      });
      (p50[row.name] ??= []).push(l.p50);
      (p99[row.name] ??= []).push(l.p99);
    }
  }

  const ms = (x: number) => x.toFixed(3);
  const lines = [
    `c=1, ${n} POSTs per round, ${rounds} rounds; ms`,
    "",
    "| row | p50 (median) | p99 (median) | p50 per round |",
    "|---|---:|---:|---|",
  ];
  for (const row of rows) {
    const a = p50[row.name]!;
    lines.push(
      `| ${row.name} | ${ms(median(a))} | ${ms(median(p99[row.name]!))} | ${
        a.map(ms).join(", ")
      } |`,
    );
  }
  if (base) {
    const a = p50["relay"]!, b = p50["relay-base"]!;
    const lower = a.filter((x, i) => x < b[i]!).length;
    lines.push("", `relay p50 below relay-base's in ${lower} of ${rounds} rounds`);
  }
  // deno-lint-ignore no-console
  console.log(lines.join("\n"));
} finally {
  for (const p of procs) await p.stop();
  killAllStarted();
}
