/**
 * @module write_slabs
 * Memory for small socket writes: the own server's heads, JSON answers and SSE events, and the
 * upstream client's request heads with a small body. Each write gets a region of a shared slab,
 * and a slab is used again once every write in it has completed.
 *
 * Why not one pooled buffer per write: a write holds its buffer until the socket op completes,
 * which is the next event-loop turn at the earliest. With 1,000 streams an event-loop turn can
 * deliver hundreds of events at once, and each write held a 16 KiB buffer of its own: past the
 * pool's 64, every write allocated one (zeroed, outside the JavaScript heap, and counted by V8 as
 * external memory that brings the next GC forward). A 300-byte event now takes 300 bytes of a
 * slab, so a burst of 1,000 events fits in a handful of slabs.
 *
 * Must never: hand out a region that overlaps one whose write has not completed.
 */

/** Default size of one slab: room for four writes of the largest size served from slabs. */
const SLAB_BYTES = 64 * 1024;
/** Slabs whose writes have all completed kept for reuse, besides the one being filled. */
const KEEP_FREE = 4;

/** One slab: a cursor into its bytes and a count of its writes still in flight. */
export class WriteSlab {
  readonly bytes: Uint8Array;
  /** Bytes handed out since the slab was last empty. */
  used = 0;
  /** Writes in this slab that have not completed. */
  pending = 0;
  /** The region of the latest {@link WriteSlabs.reserve}, valid until the next one. */
  view: Uint8Array;

  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.view = this.bytes.subarray(0, 0);
  }
}

/** Hands out regions of slabs for writes, and takes them back when the writes complete. */
export class WriteSlabs {
  readonly #size: number;
  readonly #free: WriteSlab[] = [];
  #current: WriteSlab | null = null;
  /** Slabs made so far (for tests and diagnostics). */
  made = 0;

  constructor(size = SLAB_BYTES) {
    this.#size = size;
  }

  /**
   * Reserves `n` bytes (at most the slab size) for one write: returns the slab, with the
   * region at `slab.view`. Give the slab back with {@link release} once the write has completed.
   */
  reserve(n: number): WriteSlab {
    let s = this.#current;
    // A slab whose writes have all completed starts again from 0 (release), so a slab without room
    // has writes in flight: it goes back to the free list when its last one completes.
    if (s === null || s.bytes.byteLength - s.used < n) {
      s = this.#free.pop() ?? this.#make();
      this.#current = s;
    }
    s.view = s.bytes.subarray(s.used, s.used + n);
    s.used += n;
    s.pending++;
    return s;
  }

  /** One write in `slab` has completed: its region may be handed out again. */
  release(slab: WriteSlab): void {
    if (--slab.pending > 0) return;
    slab.used = 0;
    if (slab !== this.#current && this.#free.length < KEEP_FREE) this.#free.push(slab);
  }

  #make(): WriteSlab {
    this.made++;
    return new WriteSlab(this.#size);
  }
}
