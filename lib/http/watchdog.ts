/**
 * @module watchdog
 * One coarse timer for every in-flight upstream exchange.
 *
 * Why: a timer per request (or per chunk) is measurable churn on the hot path. Instead each
 * exchange records the current tick on activity (a field write, no syscall) and one interval,
 * running only while something is watched, expires those silent for too long.
 * Must never: keep the process alive on its own (the interval is unref'd and stops when idle).
 */

/** Something the watchdog can expire. */
export interface Watched {
  /** Tick of the last activity; set it to {@link Watchdog.tick} whenever bytes move. */
  lastTick: number;
  /** Called once when silent for longer than the limit. */
  expire(): void;
}

/**
 * Expires watched items silent for longer than `limitMs` (resolution: `limitMs / 10`, ≤ 1 s).
 *
 * The items live in an array that only grows, each remembering its place under a key of this
 * watchdog, and leaving by swapping in the last item. Not a `Set`: items come and go once per
 * request (once per write for the send deadline), and a `Set` that churns makes a new hash table
 * now and then; V8 leaves the old table (in the old generation, as the watchdog lives long) holding
 * the items that were in it, and young-generation GCs count it as a root until the next full GC.
 * Each exchange held there kept its whole request alive: under load ~15 % of what the relay
 * allocated survived every scavenge (`docs/BENCHMARKS.md`, seventh round).
 */
export class Watchdog {
  #tick = 0;
  /** Watched items at [0, #size); null beyond. Never shrunk, so it is not reallocated in use. */
  readonly #items: Array<Watched | null> = [];
  #size = 0;
  /** Where this watchdog keeps an item's index in its array, on the item. */
  readonly #slot = Symbol("watchdog slot");
  readonly #intervalMs: number;
  readonly #limitTicks: number;
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(limitMs: number) {
    this.#intervalMs = Math.min(1000, Math.max(5, Math.floor(limitMs / 10)));
    this.#limitTicks = Math.ceil(limitMs / this.#intervalMs);
  }

  /** The current tick. */
  get tick(): number {
    return this.#tick;
  }

  /** Number of items watched. */
  get size(): number {
    return this.#size;
  }

  /** Starts watching (again, if already watched); activity counts from now. */
  watch(item: Watched): void {
    item.lastTick = this.#tick;
    if (this.#indexOf(item) < 0) {
      (item as unknown as Record<symbol, number>)[this.#slot] = this.#size;
      this.#items[this.#size++] = item;
    }
    if (this.#timer === undefined) {
      this.#timer = setInterval(() => this.#sweep(), this.#intervalMs);
      Deno.unrefTimer(this.#timer);
    }
  }

  /** Stops watching (idempotent). The timer stops at the next sweep that finds nothing. */
  unwatch(item: Watched): void {
    // Not stopping here: at low concurrency that would be a setInterval/clearInterval per request.
    const i = this.#indexOf(item);
    if (i >= 0) this.#removeAt(i);
  }

  /** Stops the timer and forgets everything. */
  close(): void {
    this.#items.fill(null, 0, this.#size);
    this.#size = 0;
    this.#stop();
  }

  /** The item's index here, or -1: its slot is only trusted when the array agrees. */
  #indexOf(item: Watched): number {
    const i = (item as unknown as Record<symbol, number | undefined>)[this.#slot];
    return i !== undefined && i < this.#size && this.#items[i] === item ? i : -1;
  }

  /** Takes out the item at `i`; the last item moves into its place. */
  #removeAt(i: number): void {
    const last = --this.#size;
    const moved = this.#items[last]!;
    this.#items[last] = null;
    if (i !== last) {
      this.#items[i] = moved;
      (moved as unknown as Record<symbol, number>)[this.#slot] = i;
    }
  }

  #stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #sweep(): void {
    const tick = ++this.#tick;
    let i = 0;
    while (i < this.#size) {
      const item = this.#items[i]!;
      if (tick - item.lastTick > this.#limitTicks) {
        // The last item moves to `i` and is looked at next. An expire() that unwatches others
        // can move one already passed over; it waits for the next sweep.
        this.#removeAt(i);
        item.expire();
      } else {
        i++;
      }
    }
    if (this.#size === 0) this.#stop();
  }
}
