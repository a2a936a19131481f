/**
 * What the relay's garbage collector does under load: the relay of this checkout (and, with
 * `--base=TREE`, of another tree) runs with its V8 flag and `--trace-gc-nvp` in front of nginx while
 * `wrk -t1` sends the benchmark's POST at each concurrency of `--c` (default 1,10,50) for
 * `--seconds` (default 5) after a 2 s warm-up; `--close` sends `Connection: close`. Per row: req/s
 * and, per scavenge (young-generation GC), the median bytes that survived it, that it promoted to
 * the old generation, and its pause; and GC pause time per request.
 *
 * Survivors are what a scavenge costs: it copies them. A relay whose requests leave nothing behind
 * has few, whatever the load; one whose finished requests are still referenced from somewhere (the
 * seventh round in docs/BENCHMARKS_LOG.md: churned `Set`s) has them grow with the load.
 *
 *   deno run -A bench/gc_load.ts [--base=TREE] [--c=1,10,50] [--seconds=5] [--close]
 */
import {
  chatPostScript,
  freePort,
  median,
  numFlag,
  parseFlags,
  runToEnd,
  startRelay,
} from "./common.ts";
import { startJsonUpstream } from "./nginx.ts";
import { type GcEvent, isYoung, lineBufferedStdout, parseGcTrace } from "./gc_trace.ts";
import { RELAY_V8_FLAGS } from "../lib/ops/permissions.ts";

const flags = parseFlags(Deno.args);
const seconds = numFlag(flags, "seconds", 5);
const levels = (flags.get("c") ?? "1,10,50").split(",").map(Number);
const trees: Array<[string, string]> = [["relay", new URL("..", import.meta.url).pathname]];
const base = flags.get("base");
if (base !== undefined) trees.push(["relay-base", base]);
const dir = await Deno.makeTempDir();
const nginx = await startJsonUpstream(dir);
const script = chatPostScript(dir, flags.has("close"));

/** The collections V8 printed into `log` from byte `from` on: young ones and full ones apart. */
function gcsIn(log: string, from: number): { scavenges: GcEvent[]; full: GcEvent[] } {
  const text = new TextDecoder().decode(Deno.readFileSync(log).subarray(from));
  const all = parseGcTrace(text);
  return { scavenges: all.filter(isYoung), full: all.filter((e) => !isYoung(e)) };
}
/** Line-buffered, so the warm-up's collections are in the log before the measured run begins. */
const gcEnv = lineBufferedStdout();

const rows: string[] = [];
for (const c of levels) {
  for (const [name, tree] of trees) {
    const port = freePort(), log = `${dir}/${name}-${c}.log`;
    const proc = await startRelay(name, {
      port,
      upstream: nginx.url,
      cpu: "0",
      env: { ACCESS_LOG: "0", ...gcEnv },
      // As shipped (its V8 flag), with the trace added.
      denoFlags: [`${RELAY_V8_FLAGS},--trace-gc-nvp`],
      script: `${tree}/main.ts`,
      logFile: log,
    });
    const url = `http://127.0.0.1:${port}/v1/chat/completions`;
    const wrk = (s: number) =>
      runToEnd("wrk", ["wrk", "-t1", `-c${c}`, `-d${s}s`, "-s", script, url], {
        cpu: "1",
        timeoutMs: (s + 30) * 1000,
      });
    await wrk(2);
    const from = Deno.statSync(log).size;
    const out = await wrk(seconds);
    await proc.stop(8000);
    const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0);
    const { scavenges, full } = gcsIn(log, from);
    const mb = (xs: number[]) => (median(xs) / 1e6).toFixed(2);
    const pauseMs = [...scavenges, ...full].reduce((t, e) => t + e.pause, 0);
    rows.push(
      `| ${name} | ${c} | ${Math.round(requests / seconds)} | ${scavenges.length} | ${
        mb(scavenges.map((e) => e.survived))
      } | ${mb(scavenges.map((e) => e.promoted))} | ${
        median(scavenges.map((e) => e.pause)).toFixed(2)
      } | ${full.length} | ${requests > 0 ? (pauseMs * 1000 / requests).toFixed(1) : "-"} |`,
    );
  }
}
await nginx.proc.stop();
// deno-lint-ignore no-console
console.log(
  [
    `wrk -t1, ${seconds} s per row${
      flags.has("close") ? ", Connection: close" : ""
    }; medians per scavenge`,
    "",
    "| row | c | req/s | scavenges | survived MB | promoted MB | pause ms | full GCs | GC pause µs/request |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...rows,
  ].join("\n"),
);
await Deno.remove(dir, { recursive: true });
