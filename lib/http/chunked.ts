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
  Size,
  Data,
  DataEnd,
  Trailer,
  Done,
}

/** Incremental `Transfer-Encoding: chunked` decoder; yields payload slices without copying. */
export class ChunkedDecoder {
  #state = ChunkState.Size;
  /** Set after a framing error seen before the body stream existed. */
  poisoned = false;

  /** Marks the body as broken (the error surfaces on the first read). */
  poison(): void {
    this.poisoned = true;
  }

  #line = "";
  #remaining = 0;
  /** Bytes after the terminating chunk (a pipelined response we never asked for). */
  rest: Uint8Array | null = null;

  get done(): boolean {
    return this.#state === ChunkState.Done;
  }

  /** Feeds bytes; returns the payload slices they complete. Throws UpstreamError("protocol"). */
  push(bytes: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    let i = 0;
    const n = bytes.byteLength;
    while (i < n) {
      switch (this.#state) {
        case ChunkState.Data: {
          const take = Math.min(this.#remaining, n - i);
          out.push(bytes.subarray(i, i + take));
          i += take;
          this.#remaining -= take;
          if (this.#remaining === 0) this.#state = ChunkState.DataEnd;
          break;
        }
        case ChunkState.Size:
        case ChunkState.DataEnd:
        case ChunkState.Trailer: {
          const b = bytes[i++]!;
          if (b !== 0x0a) {
            if (this.#line.length > 4096) {
              throw new FramingError("chunk line too long");
            }
            this.#line += String.fromCharCode(b);
            break;
          }
          const line = this.#line.endsWith("\r") ? this.#line.slice(0, -1) : this.#line;
          this.#line = "";
          this.#onLine(line);
          break;
        }
        case ChunkState.Done:
          this.rest = bytes.subarray(i);
          return out;
      }
    }
    return out;
  }

  #onLine(line: string): void {
    if (this.#state === ChunkState.DataEnd) {
      if (line !== "") throw new FramingError("missing CRLF after chunk");
      this.#state = ChunkState.Size;
      return;
    }
    if (this.#state === ChunkState.Trailer) {
      if (line === "") this.#state = ChunkState.Done;
      return;
    }
    const m = /^([0-9A-Fa-f]{1,12})[ \t]*(;.*)?$/.exec(line);
    if (m === null) throw new FramingError("bad chunk size");
    this.#remaining = parseInt(m[1]!, 16);
    this.#state = this.#remaining === 0 ? ChunkState.Trailer : ChunkState.Data;
  }
}
