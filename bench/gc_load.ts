/**
 * What the relay's garbage collector does under load: the relay of this checkout (and, with
 * `--base=TREE`, of another tree) runs with `--v8-flags=--trace-gc-nvp` in front of nginx while
 * `wrk -t1` sends the benchmark's POST at each concurrency of `--c` (default 1,10,50) for
 * `--seconds` (default 5) after a 2 s warm-up; `--close` sends `Connection: close`. Per row: req/s
 * and, per scavenge (young-generation GC), the median bytes that survived it, that it promoted to
 * the old generation, and its pause; and GC pause time per request.
 *
 * Survivors are what a scavenge costs: it copies them. A relay whose requests leave nothing behind
 * has few, whatever the load; one whose finished requests are still referenced from somewhere (the
 * seventh round in docs/BENCHMARKS.md: churned `Set`s) has them grow with the load.
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

const flags = parseFlags(Deno.args);
const seconds = numFlag(flags, "seconds", 5);
const levels = (flags.get("c") ?? "1,10,50").split(",").map(Number);
const trees: Array<[string, string]> = [["relay", new URL("..", import.meta.url).pathname]];
const base = flags.get("base");
if (base !== undefined) trees.push(["relay-base", base]);
const dir = await Deno.makeTempDir();
const nginx = await startJsonUpstream(dir);
const script = chatPostScript(dir, flags.has("close"));

interface Nvp {
  gc: string;
  pause: number;
  new_space_survived: number;
  promoted: number;
}
/** The scavenges (`"gc":"s"`) and full GCs V8 printed into `log` from line `from` on. */
function gcsIn(log: string, from: number): { scavenges: Nvp[]; full: Nvp[]; lines: number } {
  const lines = Deno.readTextFileSync(log).split("\n");
  const scavenges: Nvp[] = [], full: Nvp[] = [];
  for (const line of lines.slice(from)) {
    const at = line.indexOf('{"pause"');
    if (at < 0) continue;
    try {
      const e = JSON.parse(line.slice(at)) as Nvp;
      (e.gc === "s" ? scavenges : full).push(e);
    } catch { /* a line cut short */ }
  }
  return { scavenges, full, lines: lines.length };
}

const rows: string[] = [];
for (const c of levels) {
  for (const [name, tree] of trees) {
    const port = freePort(), log = `${dir}/${name}-${c}.log`;
    const proc = await startRelay(name, {
      port,
      upstream: nginx.url,
      cpu: "0",
      env: { ACCESS_LOG: "0" },
      denoFlags: ["--v8-flags=--trace-gc-nvp"],
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
    const from = gcsIn(log, 0).lines;
    const out = await wrk(seconds);
    await proc.stop(8000);
    const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0);
    const { scavenges, full } = gcsIn(log, from);
    const mb = (xs: number[]) => (median(xs) / 1e6).toFixed(2);
    const pauseMs = [...scavenges, ...full].reduce((t, e) => t + e.pause, 0);
    rows.push(
      `| ${name} | ${c} | ${Math.round(requests / seconds)} | ${scavenges.length} | ${
        mb(scavenges.map((e) => e.new_space_survived))
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
