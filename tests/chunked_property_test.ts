/**
 * The byte-level chunked decoder (lib/http/chunked.ts) against the string-based decoder it
 * replaced (kept below as the oracle, verbatim but for names): for any mix of valid and broken
 * framing cut into any pieces, both give the same payload, the same end, the same bytes after the
 * end, and throw at the same piece.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { cutAt, enc } from "./helpers.ts";
import { ChunkedDecoder, FramingError } from "../lib/http/chunked.ts";

const enum OracleState {
  Size,
  Data,
  DataEnd,
  Trailer,
  Done,
}

/** The decoder as of 00621e4: lines gathered as strings, sizes matched by a regular expression. */
class OracleDecoder {
  #state = OracleState.Size;
  #line = "";
  #remaining = 0;
  rest: Uint8Array | null = null;

  get done(): boolean {
    return this.#state === OracleState.Done;
  }

  push(bytes: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    let i = 0;
    const n = bytes.byteLength;
    while (i < n) {
      switch (this.#state) {
        case OracleState.Data: {
          const take = Math.min(this.#remaining, n - i);
          out.push(bytes.subarray(i, i + take));
          i += take;
          this.#remaining -= take;
          if (this.#remaining === 0) this.#state = OracleState.DataEnd;
          break;
        }
        case OracleState.Size:
        case OracleState.DataEnd:
        case OracleState.Trailer: {
          const b = bytes[i++]!;
          if (b !== 0x0a) {
            if (this.#line.length > 4096) throw new FramingError("chunk line too long");
            this.#line += String.fromCharCode(b);
            break;
          }
          const line = this.#line.endsWith("\r") ? this.#line.slice(0, -1) : this.#line;
          this.#line = "";
          this.#onLine(line);
          break;
        }
        case OracleState.Done:
          this.rest = bytes.subarray(i);
          return out;
      }
    }
    return out;
  }

  #onLine(line: string): void {
    if (this.#state === OracleState.DataEnd) {
      if (line !== "") throw new FramingError("missing CRLF after chunk");
      this.#state = OracleState.Size;
      return;
    }
    if (this.#state === OracleState.Trailer) {
      if (line === "") this.#state = OracleState.Done;
      return;
    }
    const m = /^([0-9A-Fa-f]{1,12})[ \t]*(;.*)?$/.exec(line);
    if (m === null) throw new FramingError("bad chunk size");
    this.#remaining = parseInt(m[1]!, 16);
    this.#state = this.#remaining === 0 ? OracleState.Trailer : OracleState.Data;
  }
}

interface Outcome {
  payload: number[];
  done: boolean;
  rest: number[] | null;
  /** Index of the piece that threw, and the error's message. */
  threw: [number, string] | null;
}

function run(
  d: { push(b: Uint8Array): readonly Uint8Array[]; done: boolean; rest: Uint8Array | null },
  pieces: Uint8Array[],
): Outcome {
  const payload: number[] = [];
  for (let k = 0; k < pieces.length; k++) {
    try {
      for (const p of d.push(pieces[k]!)) payload.push(...p);
    } catch (err) {
      assert.ok(err instanceof FramingError);
      return { payload, done: d.done, rest: null, threw: [k, err.message] };
    }
  }
  return { payload, done: d.done, rest: d.rest === null ? null : [...d.rest], threw: null };
}

/** Framing fragments, good and bad, that a decoder must tell apart. */
const fragment = fc.oneof(
  fc.constantFrom(
    "5\r\nhello\r\n",
    "5\nhello\n",
    "a;x=1\r\n0123456789\r\n",
    "3 \t;ext\r\nabc\r\n",
    "00000000001\r\nZ\r\n",
    "1234567890ab\r\n",
    "1234567890abc\r\n",
    "0\r\n\r\n",
    "0\r\nX-T: 1\r\n\r\n",
    "0\r\nX-T: 1\r\r\n\r\n",
    "0\n\n",
    "\r\n",
    "\r",
    "\n",
    " 5\r\n",
    "5 x\r\n",
    "5;a\rb\r\n",
    "5\r\r\n",
    "0x5\r\n",
    "-1\r\n",
    "FfE;\r\n",
    "zz\r\n",
    "hello",
    ";",
    " ",
    "\t",
  ),
  fc.string({ maxLength: 8 }),
  fc.constantFrom("x".repeat(4095), "y".repeat(4097), "1".repeat(5000)),
);

Deno.test("ChunkedDecoder matches the string-based decoder on any framing cut anywhere", () => {
  fc.assert(
    fc.property(
      fc.array(fragment, { maxLength: 12 }),
      fc.array(fc.nat(), { maxLength: 8 }),
      (parts, points) => {
        const pieces = cutAt(enc.encode(parts.join("")), points);
        assert.deepEqual(run(new ChunkedDecoder(), pieces), run(new OracleDecoder(), pieces));
      },
    ),
    { numRuns: 3000 },
  );
});

/** Bytes mostly from the framing's own alphabet, so that short runs reach deep states. */
const framingBytes = fc.array(
  fc.oneof(
    fc.constantFrom(...enc.encode("0123456789aAfFgx ;\t\r\n\r\n\r\n00")),
    fc.integer({ min: 0, max: 255 }),
  ),
  { maxLength: 64 },
).map((a) => new Uint8Array(a));

Deno.test("ChunkedDecoder matches the string-based decoder on any bytes", () => {
  fc.assert(
    fc.property(
      framingBytes,
      fc.array(fc.nat(), { maxLength: 4 }),
      (bytes, points) => {
        const pieces = cutAt(bytes, points);
        assert.deepEqual(run(new ChunkedDecoder(), pieces), run(new OracleDecoder(), pieces));
      },
    ),
    { numRuns: 3000 },
  );
});
