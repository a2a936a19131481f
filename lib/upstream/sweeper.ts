/**
 * @module sweeper
 * The idle sweeper both upstream pools share: a timer that ticks every quarter of the idle
 * timeout while the pool has something to watch (idle connections, spares to keep or to open),
 * and stops by itself when it has nothing.
 *
 * Owns: the timer's lifecycle (start once, period, unref, stop). Must never: decide what is idle
 * or stale (that is each pool's `tick`), or keep the process alive (the timer is unref'd).
 */

/** A pool's sweep: closes what went idle, refreshes spares; false when nothing is left to watch. */
export type SweepTick = (now: number) => boolean;

/** Runs a pool's {@link SweepTick} on a timer while it returns true. */
export class IdleSweeper {
  readonly #every: number;
  readonly #tick: SweepTick;
  #timer: ReturnType<typeof setInterval> | undefined;

  /**
   * A quarter of `idleTimeoutMs` (at least 50 ms) between ticks: a connection is closed at most a
   * quarter of the timeout after it expired, before A's own keep-alive is likely to close it.
   */
  constructor(idleTimeoutMs: number, tick: SweepTick) {
    this.#every = Math.max(50, Math.floor(idleTimeoutMs / 4));
    this.#tick = tick;
  }

  /** Starts ticking, unless already running. */
  start(): void {
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(() => {
      if (!this.#tick(Date.now())) this.stop();
    }, this.#every);
    Deno.unrefTimer(this.#timer);
  }

  /** Stops ticking; a later {@link start} resumes. */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
