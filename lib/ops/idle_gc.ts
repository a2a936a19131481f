/**
 * @module idle_gc
 * One full garbage collection when the relay goes idle after traffic, so that V8 gives its heap
 * back on every server path.
 *
 * V8's memory reducer (the GCs that shrink the heap once a process is idle) runs once about 30 s
 * after start, and after that only when a mark-compact has re-armed it. The own HTTP/1.1 server
 * promotes enough during a burst to reach one; the `Deno.serve` path (`HTTP_SERVER=deno`), whose
 * bodies stay in Rust, stays under the 64 MB old generation (`RELAY_V8_FLAGS`) and got none:
 * after its second burst it kept ~115 MiB for as long as it stayed idle, against ~60 for the own
 * server (docs/BENCHMARKS_LOG.md, fourteenth sitting). Idle means no request arrived for a whole
 * interval; a few streams still open do not hold it off, or a long generation or a WebSocket would
 * keep the burst's memory for its whole life (116 MiB on the `Deno.serve` path, against 60
 * collected; fifteenth sitting). Without `--expose-gc` (Deno Deploy, a hand-made `deno run`) there
 * is no `gc` and nothing runs.
 */

/**
 * Most requests in flight for which a collection still runs. It pauses every open stream once:
 * 17-32 ms with 10 or 100 streams open, 65-97 ms with 1,000 (fifteenth sitting).
 */
export const IDLE_GC_MAX_IN_FLIGHT = 100;

/** What {@link idleGcStep} remembers between two looks. */
export interface IdleGcState {
  /** The request count at the last look. */
  readonly seen: number;
  /** Whether requests arrived since the last collection. */
  readonly pending: boolean;
}

/** The state before the first look: nothing pending. */
export const IDLE_GC_START: IdleGcState = { seen: 0, pending: false };

/**
 * One look: `requests` is the count of requests that arrived so far, `inFlight` those not yet
 * finished. Collects when requests came since the last collection, none arrived since the last
 * look (a whole interval of quiet), and at most {@link IDLE_GC_MAX_IN_FLIGHT} are in flight.
 */
export function idleGcStep(
  state: IdleGcState,
  requests: number,
  inFlight: number,
): { state: IdleGcState; collect: boolean } {
  if (requests !== state.seen) return { state: { seen: requests, pending: true }, collect: false };
  if (!state.pending || inFlight > IDLE_GC_MAX_IN_FLIGHT) return { state, collect: false };
  return { state: { seen: requests, pending: false }, collect: true };
}

/** What {@link startIdleGc} reads and calls. */
export interface IdleGcDeps {
  requests(): number;
  inFlight(): number;
  /** A full collection: `globalThis.gc` under `--expose-gc`. */
  gc(): void;
  /** Milliseconds between looks (default 10 s: idle means a whole interval without a request). */
  everyMs?: number;
}

/** Looks every `everyMs` (a timer that does not keep the process alive); `stop` ends it. */
export function startIdleGc(deps: IdleGcDeps): { stop(): void } {
  let state = IDLE_GC_START;
  const timer = setInterval(() => {
    const step = idleGcStep(state, deps.requests(), deps.inFlight());
    state = step.state;
    if (step.collect) deps.gc();
  }, deps.everyMs ?? 10_000);
  Deno.unrefTimer(timer);
  return { stop: () => clearInterval(timer) };
}

/**
 * V8's `gc` when the relay runs with `--expose-gc` (its shipped flags), else null. The "last-resort"
 * flavour collects and gives unused pages back at once: a plain full collection re-armed the
 * memory reducer on the own server but not on the `Deno.serve` path, which stayed at ~115 MiB; with
 * this it was back at ~61 MiB within 20 s of the burst.
 */
export function exposedGc(): (() => void) | null {
  const gc = (globalThis as { gc?: unknown }).gc;
  if (typeof gc !== "function") return null;
  const options = { type: "major", execution: "sync", flavor: "last-resort" };
  return () => (gc as (o: typeof options) => void)(options);
}
