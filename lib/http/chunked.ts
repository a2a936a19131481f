/**
 * @module chunked
 * `Transfer-Encoding: chunked` decoding, for request bodies (the own server) and response bodies
 * (the upstream client) alike. Pure and incremental: slices of the input come out, nothing is
 * copied. Must never: accept a size it cannot represent exactly, or let bytes after the last chunk
 * count as payload (they stay in `rest`).
 */

/** Malformed chunked framing; each end maps it to its own error (400 from a client, 502 from A). */
export class FramingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FramingError";
  }
}

const enum ChunkState {
  /** A size line: its hex digits, then blanks, then an extension. */
  Size,
  Data,
  /** The line that ends a chunk's data: empty. */
  DataEnd,
  Trailer,
  Done,
}

/** The longest framing line taken (size line with extensions, trailer line), in bytes. */
const MAX_LINE = 4096;
/** Most hex digits in a chunk size: 16^12 - 1 is still an exact double. */
const MAX_DIGITS = 12;
/** What a push that completes no payload returns: shared, so callers never change it. */
const NONE: readonly Uint8Array[] = [];

/** The value of an ASCII hex digit, or -1. */
function hexValue(b: number): number {
  if (b >= 0x30 && b <= 0x39) return b - 0x30;
  const lower = b | 0x20;
  return lower >= 0x61 && lower <= 0x66 ? lower - 0x57 : -1;
}

/**
 * Incremental `Transfer-Encoding: chunked` decoder; yields payload slices without copying.
 *
 * Framing lines are read byte by byte into a few numbers, never into strings: this runs for every
 * event of every stream. A line ends at LF, one CR before it dropped. A size line is 1 to 12 hex
 * digits, blanks (SP, HTAB), then optionally `;` and an extension without CR; the line after a
 * chunk's data is empty; trailer lines are skipped up to the empty one. Any other line is a
 * framing error, thrown at its LF (or once it passes {@link MAX_LINE} bytes).
 */
export class ChunkedDecoder {
  #state = ChunkState.Size;
  /** Set after a framing error seen before the body stream existed. */
  poisoned = false;

  /** Marks the body as broken (the error surfaces on the first read). */
  poison(): void {
    this.poisoned = true;
  }

  /** Bytes of the current line so far (LF not counted). */
  #lineLen = 0;
  /** The line so far breaks the grammar (reported at its end). */
  #bad = false;
  /** The previous byte of the line was CR: only LF may follow it. */
  #cr = false;
  /** Size line: hex digits read, their value, and whether blanks or `;` came after them. */
  #digits = 0;
  #size = 0;
  #afterDigits = false;
  #inExtension = false;
  #remaining = 0;
  /** Bytes after the terminating chunk (a pipelined response we never asked for). */
  rest: Uint8Array | null = null;

  get done(): boolean {
    return this.#state === ChunkState.Done;
  }

  /** Feeds bytes; returns the payload slices they complete. Throws UpstreamError("protocol"). */
  push(bytes: Uint8Array): readonly Uint8Array[] {
    let out: readonly Uint8Array[] | Uint8Array[] = NONE;
    let i = 0;
    const n = bytes.byteLength;
    while (i < n) {
      const state = this.#state;
      if (state === ChunkState.Data) {
        const take = Math.min(this.#remaining, n - i);
        if (out === NONE) out = [];
        (out as Uint8Array[]).push(bytes.subarray(i, i + take));
        i += take;
        this.#remaining -= take;
        if (this.#remaining === 0) this.#state = ChunkState.DataEnd;
        continue;
      }
      if (state === ChunkState.Done) {
        this.rest = bytes.subarray(i);
        return out;
      }
      const b = bytes[i++]!;
      if (b === 0x0a) {
        this.#endLine();
        continue;
      }
      if (this.#lineLen > MAX_LINE) throw new FramingError("chunk line too long");
      this.#lineLen++;
      if (this.#cr) this.#bad = true; // a CR inside the line
      this.#cr = b === 0x0d;
      if (this.#cr || state === ChunkState.Trailer) continue;
      if (state === ChunkState.DataEnd) this.#bad = true;
      else this.#sizeByte(b);
    }
    return out;
  }

  /** One byte (not CR or LF) of a size line. */
  #sizeByte(b: number): void {
    if (this.#inExtension) return;
    if (b === 0x3b) {
      this.#inExtension = true;
      if (this.#digits === 0) this.#bad = true;
      return;
    }
    if (b === 0x20 || b === 0x09) {
      this.#afterDigits = true;
      if (this.#digits === 0) this.#bad = true;
      return;
    }
    const v = hexValue(b);
    if (v < 0 || this.#afterDigits || this.#digits === MAX_DIGITS) {
      this.#bad = true;
      return;
    }
    this.#digits++;
    this.#size = this.#size * 16 + v;
  }

  #endLine(): void {
    const state = this.#state;
    const empty = this.#lineLen === 0 || (this.#lineLen === 1 && this.#cr);
    const bad = this.#bad;
    const digits = this.#digits, size = this.#size;
    this.#lineLen = this.#digits = this.#size = 0;
    this.#bad =
      this.#cr =
      this.#afterDigits =
      this.#inExtension =
        false;
    if (state === ChunkState.DataEnd) {
      if (!empty) throw new FramingError("missing CRLF after chunk");
      this.#state = ChunkState.Size;
    } else if (state === ChunkState.Trailer) {
      if (empty) this.#state = ChunkState.Done;
    } else {
      if (bad || digits === 0) throw new FramingError("bad chunk size");
      this.#remaining = size;
      this.#state = size === 0 ? ChunkState.Trailer : ChunkState.Data;
    }
  }
}
