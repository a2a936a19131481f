/**
 * Live JavaScript heap per open stream: the relay (through `heap_main.ts`) takes a heap snapshot
 * before any stream and one while `--streams` (default 1,000) SSE streams are open; the difference
 * by constructor, divided by the streams, is what each stream keeps alive. A snapshot forces a full
 * GC first, so only live objects count. The snapshot pauses the relay (its delays are meaningless).
 *
 *   deno run -A bench/heap_streams.ts [--streams=1000] [--top=30]
 */
import { BENCH, freePort, numFlag, parseFlags, sleep, sseDelayLoad, startRelay } from "./common.ts";

const flags = parseFlags(Deno.args);
const streams = numFlag(flags, "streams", 1000), top = numFlag(flags, "top", 30);
const dir = await Deno.makeTempDir();
const ssePort = freePort(), port = freePort();
const relay = await startRelay("relay", {
  port,
  upstream: `http://127.0.0.1:${ssePort}`,
  cpu: "0",
  env: { ACCESS_LOG: "0", HEAP_SNAPSHOT_DIR: dir },
  script: `${BENCH}/heap_main.ts`,
  logFile: `${dir}/relay.log`,
});
await sleep(1000);
const snapshot = async (i: number): Promise<string> => {
  const file = `${dir}/snap${i}.heapsnapshot`;
  Deno.kill(relay.pid, "SIGUSR2");
  for (let t = 0; t < 600; t++) {
    await sleep(100);
    try {
      // Written when the size stops changing.
      const a = Deno.statSync(file).size;
      await sleep(300);
      if (a > 0 && Deno.statSync(file).size === a) return file;
    } catch { /* not there yet */ }
  }
  throw new Error(`no heap snapshot in ${dir}`);
};
const before = await snapshot(0);
// Streams of 10 events 500 ms apart, opened over 2 s: all open together from 2 s to ~5 s.
const load = sseDelayLoad({
  upstreamPort: ssePort,
  streams,
  events: 10,
  intervalMs: 500,
  rampMs: 2000,
  maxSec: 60,
  targets: [`relay=http://127.0.0.1:${port}/v1/chat/completions`],
  cpu: "1",
  timeoutMs: 120_000,
});
await sleep(3500);
const during = await snapshot(1);
await load;
await relay.stop(8000);

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
  nodes: number[];
  strings: string[];
}
/** Self size and count per "type:name" (strings and code by type only). */
function byConstructor(file: string): Map<string, [number, number]> {
  const snap = JSON.parse(Deno.readTextFileSync(file)) as Snapshot;
  const fields = snap.snapshot.meta.node_fields, types = snap.snapshot.meta.node_types[0];
  const width = fields.length, iType = fields.indexOf("type"), iName = fields.indexOf("name");
  const iSize = fields.indexOf("self_size");
  const out = new Map<string, [number, number]>();
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + iType]!]!;
    const named = !(type.includes("string") || type === "code" || type === "number");
    const key = named ? `${type}:${snap.strings[snap.nodes[i + iName]!]!.slice(0, 60)}` : type;
    const entry = out.get(key) ?? [0, 0];
    entry[0] += snap.nodes[i + iSize]!;
    entry[1]++;
    out.set(key, entry);
  }
  return out;
}
const a = byConstructor(before), b = byConstructor(during);
const rows = [...b].map(([k, [size, n]]) => ({
  k,
  size: size - (a.get(k)?.[0] ?? 0),
  n: n - (a.get(k)?.[1] ?? 0),
}));
const total = rows.reduce((s, r) => s + r.size, 0);
const lines = [
  `live heap per open stream: ${(total / streams / 1024).toFixed(1)} KB (${streams} streams)`,
  "",
  "| bytes per stream | objects per stream | type:constructor |",
  "|---:|---:|---|",
];
for (const r of rows.sort((x, y) => y.size - x.size).slice(0, top)) {
  lines.push(`| ${Math.round(r.size / streams)} | ${(r.n / streams).toFixed(1)} | ${r.k} |`);
}
// deno-lint-ignore no-console
console.log(lines.join("\n"));
await Deno.remove(dir, { recursive: true });
