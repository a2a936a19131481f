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

/** The 10-event run less its chunks' share of the difference: what each stream costs once. */
function fixedPart(short: Map<string, number>, long: Map<string, number>): Map<string, number> {
  const chunks = events + 2, extra = events * 4;
  const out = new Map<string, number>();
  for (const [k, v] of short) out.set(k, v - ((long.get(k) ?? 0) - v) / extra * chunks);
  return out;
}

/** `a - b` by key (sampled counts: a small negative is noise). */
function difference(a: Map<string, number>, b: Map<string, number>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [k, v] of a) out.set(k, v - (b.get(k) ?? 0));
  return out;
}

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
const perEvent = (totals[1]! - totals[0]!) / (shapes[1]! - shapes[0]!);
const fixed = totals[0]! - perEvent * (events + 2);
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
    // What grows with the events: the difference of the two runs, per extra event.
    `per event (the ${shapes[1]! - shapes[0]!} extra events' difference):\n\n${
      allocationTable(
        "allocating function",
        difference(runs[1]!.byFunction, runs[0]!.byFunction),
        streams * (shapes[1]! - shapes[0]!),
        "event",
        top,
      )
    }\n\nper stream besides its chunks:\n\n${
      allocationTable(
        "nearest lib/ frame",
        fixedPart(runs[0]!.byOurs, runs[1]!.byOurs),
        streams,
        "stream",
        top,
      )
    }\n\nper event, by lib/ frame:\n\n${
      allocationTable(
        "nearest lib/ frame",
        difference(runs[1]!.byOurs, runs[0]!.byOurs),
        streams * (shapes[1]! - shapes[0]!),
        "event",
        top,
      )
    }`,
);
await Deno.remove(dir, { recursive: true });
