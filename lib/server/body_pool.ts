/**
 * @module body_pool
 * Buffers for request bodies the own server reads (whole up to 256 KiB; a larger one of announced
 * length streams through buffers of up to 1 MiB), reused once whoever read the bytes last gives
 * them back.
 *
 * Why: a fresh buffer per body is allocated, zeroed and later collected; at 128 KB bodies that
 * was 9 % of busy time, and V8 collects more often as such buffers add up ("external memory
 * pressure"). Reusing them cut CPU per request there by ~6 % (docs/BENCHMARKS.md).
 * Must never: hand out a buffer something still reads. A buffer comes back only through
 * {@link BodyPool.give}, called by the one party that knows nothing reads it any more (the
 * server once `new Request` has copied a small body; the upstream client once a body is sent in
 * full and answered). Anything else is never given back and left to the garbage collector.
 * At 1 MB bodies, fresh buffers were ~1 GB/s of allocation and V8 ran a mark-compact every ~80 ms
 * for their "external memory" (GC 23.5 % of busy time).
 */

/** Smallest pooled size; a smaller body gets a buffer of its own (cheap, and never given back). */
export const POOL_MIN = 4 * 1024;
/** Largest pooled size: the largest buffer a streamed body is read into. */
export const POOL_MAX = 1024 * 1024;
/**
 * Buffers kept per size: enough for the bodies that arrive at once on a small VPS, and no more
 * than {@link KEEP_BYTES} of one size (2 of 1 MiB): at most ~8 MiB kept in all.
 */
const KEEP = 8;
const KEEP_BYTES = 2 * 1024 * 1024;

/** Power-of-two size classes from {@link POOL_MIN} to {@link POOL_MAX}. */
export class BodyPool {
  readonly #free: Uint8Array<ArrayBuffer>[][] = [];

  constructor() {
    for (let size = POOL_MIN; size <= POOL_MAX; size *= 2) this.#free.push([]);
  }

  /**
   * A buffer of `n` bytes (a view of the start of a pooled one). Its contents are whatever was
   * there: the caller fills all `n` bytes before anyone reads them.
   */
  take(n: number): Uint8Array<ArrayBuffer> {
    const cls = classOf(n);
    if (cls < 0) return new Uint8Array(n);
    const buf = this.#free[cls]!.pop() ?? new Uint8Array(POOL_MIN << cls);
    return n === buf.byteLength ? buf : buf.subarray(0, n);
  }

  /**
   * Gives back the buffer under `bytes` (any view of it), to be handed out again. Only for bytes
   * nothing reads any more; a buffer not of a pooled size is ignored.
   */
  give(bytes: Uint8Array): void {
    const buffer = bytes.buffer;
    if (!(buffer instanceof ArrayBuffer)) return;
    const size = buffer.byteLength;
    const cls = classOf(size);
    if (cls < 0 || POOL_MIN << cls !== size) return;
    const free = this.#free[cls]!;
    if (free.length < KEEP && (free.length + 1) * size <= KEEP_BYTES) {
      free.push(new Uint8Array(buffer));
    }
  }

  /** Buffers kept now, for tests and debugging. */
  get kept(): number {
    let n = 0;
    for (const f of this.#free) n += f.length;
    return n;
  }
}

/** Index of the smallest class that holds `n` bytes; -1 outside the pooled range. */
function classOf(n: number): number {
  if (n < POOL_MIN || n > POOL_MAX) return -1;
  let cls = 0;
  while (POOL_MIN << cls < n) cls++;
  return cls;
}
