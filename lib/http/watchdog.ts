/**
 * @module watchdog
 * One coarse timer for every in-flight upstream exchange.
 *
 * Why: a timer per request (or per chunk) is measurable churn on the hot path. Instead each
 * exchange records the current tick on activity (a field write, no syscall) and one interval,
 * running only while something is watched, expires those silent for too long.
 * Must never: keep the process alive on its own (the interval is unref'd and stops when idle).
 */

import { SlotSet, type Slotted, WATCH_SLOT } from "./slot_set.ts";

/**
 * Something a watchdog can expire. Its class declares the watchdog's key (`[WATCH_SLOT] = -1`
 * unless the watchdog was made with another): see `slot_set.ts` for why.
 */
export type Watched<K extends symbol = typeof WATCH_SLOT> = Slotted<K> & {
  /** Tick of the last activity; set it to {@link Watchdog.tick} whenever bytes move. */
  lastTick: number;
  /** Called once when silent for longer than the limit. */
  expire(): void;
};

/**
 * Expires watched items silent for longer than `limitMs` (resolution: `limitMs / 10`, <= 1 s).
 * The items are a {@link SlotSet}, not a `Set`: they come and go once per request (once per write
 * for the send deadline), and a churned `Set` kept them alive through young-generation GCs.
 */
export class Watchdog<K extends symbol = typeof WATCH_SLOT> {
  #tick = 0;
  readonly #items: SlotSet<K, Watched<K>>;
  readonly #intervalMs: number;
  readonly #limitTicks: number;
  /** The silence, in ms, after which an item expires. */
  readonly limitMs: number;
  #timer: ReturnType<typeof setInterval> | undefined;

  /** `key`: where the items keep their index; {@link WATCH_SLOT} unless an item can be under two. */
  constructor(limitMs: number, key: K = WATCH_SLOT as K) {
    this.#items = new SlotSet(key);
    this.limitMs = limitMs;
    this.#intervalMs = Math.min(1000, Math.max(5, Math.floor(limitMs / 10)));
    this.#limitTicks = Math.ceil(limitMs / this.#intervalMs);
  }

  /** The current tick. */
  get tick(): number {
    return this.#tick;
  }

  /** Number of items watched. */
  get size(): number {
    return this.#items.size;
  }

  /** Starts watching (again, if already watched); activity counts from now. */
  watch(item: Watched<K>): void {
    item.lastTick = this.#tick;
    this.#items.add(item);
    if (this.#timer === undefined) {
      this.#timer = setInterval(() => this.#sweep(), this.#intervalMs);
      Deno.unrefTimer(this.#timer);
    }
  }

  /** Stops watching (idempotent). The timer stops at the next sweep that finds nothing. */
  unwatch(item: Watched<K>): void {
    // Not stopping here: at low concurrency that would be a setInterval/clearInterval per request.
    this.#items.delete(item);
  }

  /** Stops the timer and forgets everything. */
  close(): void {
    this.#items.clear();
    this.#stop();
  }

  #stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #sweep(): void {
    const tick = ++this.#tick;
    const items = this.#items;
    let i = 0;
    while (i < items.size) {
      const item = items.at(i);
      if (tick - item.lastTick > this.#limitTicks) {
        // The last item moves to `i` and is looked at next. An expire() that unwatches others
        // can move one already passed over; it waits for the next sweep.
        items.deleteAt(i);
        item.expire();
      } else {
        i++;
      }
    }
    if (items.size === 0) this.#stop();
  }
}
