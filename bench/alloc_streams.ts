/**
 * JavaScript allocated per SSE stream and per event (garbage included): the relay runs under
 * `alloc_main.ts` in front of `sse_load.ts --mode=delay`'s fake upstream, and V8's sampling heap
 * profiler counts while `--streams` streams (default 1,000) run, once with `--events` events each
 * (default 10) and once with five times as many, 100 ms apart. The difference gives the bytes per
 * event; what is left is per stream (request, both connections, heads, end). A garbage count that
 * tells how often the young generation fills while many streams are open.
 *
 *   deno run -A bench/alloc_streams.ts [--streams=1000] [--events=10] [--top=20]
 */
import { BENCH, freePort, numFlag, parseFlags, sseDelayLoad, startRelay } from "./common.ts";
import { type Allocation, allocation, allocationTable, sampleAllocation } from "./alloc_profile.ts";

const flags = parseFlags(Deno.args);
const streams = numFlag(flags, "streams", 1000), events = numFlag(flags, "events", 10);
const top = numFlag(flags, "top", 20);
const dir = await Deno.makeTempDir();
const ssePort = freePort(), port = freePort();
const profile = `${dir}/alloc.heapprofile`;
const relay = await startRelay("relay", {
  port,
  upstream: `http://127.0.0.1:${ssePort}`,
  cpu: "0",
  env: { ACCESS_LOG: "0", ALLOC_PROFILE: profile },
  script: `${BENCH}/alloc_main.ts`,
  logFile: `${dir}/relay.log`,
});
const load = (n: number) =>
  sseDelayLoad({
    upstreamPort: ssePort,
    streams,
    events: n,
    intervalMs: 100,
    rampMs: 2000,
    maxSec: 120,
    targets: [`relay=http://127.0.0.1:${port}/v1/chat/completions`],
    cpu: "1",
    timeoutMs: 180_000,
  });
// Each stream's body is its events, [DONE] and the end: events + 2 chunks from A.
const shapes = [events, events * 5];
const totals: number[] = [];
const runs: Allocation[] = [];
let tables = "";
try {
  await load(events); // warm: JIT, pools
  for (const n of shapes) {
    const a = allocation(await sampleAllocation(relay.pid, profile, () => load(n)));
    totals.push(a.total / streams);
    runs.push(a);
    if (n === events) {
      tables = `${
        allocationTable("allocating function", a.byFunction, streams, "stream", top)
      }\n\n${allocationTable("nearest lib/ frame", a.byOurs, streams, "stream", top)}`;
    }
  }
} finally {
  await relay.stop(5000);
}
const extraEvents = shapes[1]! - shapes[0]!;
const perEvent = (totals[1]! - totals[0]!) / extraEvents;
const fixed = totals[0]! - perEvent * (events + 2);

/**
 * The same split by key (bytes over all streams): what grows per event is the two runs'
 * difference, what each stream costs once is the short run less its chunks' share of it.
 */
function split(pick: (a: Allocation) => Map<string, number>) {
  const [short, long] = [pick(runs[0]!), pick(runs[1]!)];
  const event = new Map<string, number>(), once = new Map<string, number>();
  for (const [k, v] of short) {
    // Sampled counts: a small negative is noise.
    const e = ((long.get(k) ?? 0) - v) / extraEvents;
    event.set(k, e);
    once.set(k, v - e * (events + 2));
  }
  return { event, once };
}
const byFunction = split((a) => a.byFunction), byOurs = split((a) => a.byOurs);
const perEventTable = (title: string, m: Map<string, number>) =>
  allocationTable(title, m, streams, "event", top);
const kb = (b: number) => (b / 1024).toFixed(2);
// deno-lint-ignore no-console
console.log(
  `allocated per stream: ${kb(totals[0]!)} KB with ${events} events, ${kb(totals[1]!)} KB with ${
    shapes[1]
  } (${streams} streams)\n` +
    `per event (chunk from A): ${kb(perEvent)} KB; per stream besides its chunks: ${
      kb(fixed)
    } KB\n\n` +
    `${events} events per stream:\n\n${tables}\n\n` +
    `per event (the ${extraEvents} extra events' difference):\n\n${
      perEventTable("allocating function", byFunction.event)
    }\n\nper stream besides its chunks:\n\n${
      allocationTable("nearest lib/ frame", byOurs.once, streams, "stream", top)
    }\n\nper event, by lib/ frame:\n\n${perEventTable("nearest lib/ frame", byOurs.event)}`,
);
await Deno.remove(dir, { recursive: true });
