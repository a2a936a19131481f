/**
 * The own server's response writer (lib/server/response_writer.ts) against a body reader that
 * lends its chunks (`lent: true`): each read overwrites the one buffer every chunk is a view of,
 * as a socket read that completes at once does. Whatever the framing and however the chunks come
 * (one at a time, several ready together, the whole body in one), the client must get A's bytes.
 */

import assert from "node:assert/strict";
import { respond, type ResponseSink } from "../lib/server/response_writer.ts";
import { Exchange } from "../lib/server/exchange.ts";
import { type WriteSlab, WriteSlabs } from "../lib/http/write_slabs.ts";
import { type BodyReaderLike, withDirectBody, withFieldLines } from "../lib/http/mod.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Collects what is written; writes complete at once unless `slow`. */
class Sink implements ResponseSink {
  readonly out: number[] = [];
  /** Each write's bytes as text. */
  readonly writes: string[] = [];
  closed = false;
  constructor(readonly slow = false) {}
  async write(bytes: Uint8Array, slab?: WriteSlab): Promise<boolean> {
    if (this.slow) await new Promise((r) => setTimeout(r, 1));
    this.out.push(...bytes);
    this.writes.push(dec.decode(bytes));
    if (slab !== undefined) {
      assert.equal(bytes.buffer, slab.bytes.buffer, "the bytes written are in the slab released");
      assert.ok(this.lent > 0, "a slab region is released once");
      this.lent--;
      this.slabs.release(slab);
    }
    return true;
  }
  close(): void {
    this.closed = true;
  }
  /** Slab regions reserved and not released yet. */
  lent = 0;
  readonly slabs = new WriteSlabs();
  reserve(n: number): WriteSlab {
    this.lent++;
    return this.slabs.reserve(n);
  }
  text(): string {
    return dec.decode(new Uint8Array(this.out));
  }
}

/**
 * Lends `groups` of chunks: every read that needs "I/O" (a new group) first overwrites the one
 * buffer with that group's bytes, then hands out its chunks one per read as views of it.
 */
function lendingReader(groups: string[][]): BodyReaderLike {
  const buf = new Uint8Array(64 * 1024);
  let g = -1;
  const queue: Uint8Array[] = [];
  return {
    lent: true,
    ready: () => queue.length > 0 || g + 1 >= groups.length,
    read() {
      if (queue.length === 0) {
        g++;
        if (g >= groups.length) {
          return Promise.resolve({ done: true } as ReadableStreamReadResult<Uint8Array>);
        }
        buf.fill(0x23); // what a careless writer would send instead of the old chunk
        let off = 0;
        for (const c of groups[g]!) {
          const bytes = enc.encode(c);
          buf.set(bytes, off);
          queue.push(buf.subarray(off, off + bytes.byteLength));
          off += bytes.byteLength;
        }
      }
      return Promise.resolve({ done: false, value: queue.shift()! });
    },
    cancel: () => Promise.resolve(),
  };
}

function response(contentType: string, groups: string[][], length?: number): Response {
  const res = new Response(new ReadableStream(), { status: 200 });
  const fields: [string, string][] = [["content-type", contentType]];
  if (length !== undefined) fields.push(["content-length", String(length)]);
  for (const [n, v] of fields) res.headers.append(n, v);
  withFieldLines(res, fields);
  return withDirectBody(res, lendingReader(groups));
}

function bodyOf(wire: string): string {
  return wire.slice(wire.indexOf("\r\n\r\n") + 4);
}

const GROUPS: Record<string, string[][]> = {
  "one chunk per read": [["data: a\n\n"], ["data: bb\n\n"], ["data: ccc\n\n"]],
  "several chunks ready together": [["data: a\n\n", "data: bb\n\n"], ["x"], ["yy", "zzz"]],
  "a whole body in one read": [['{"ok":true}']],
  "a first chunk, then more": [['{"a":'], ["1}"]],
};

for (const [shape, groups] of Object.entries(GROUPS)) {
  const expected = groups.flat().join("");
  for (const slow of [false, true]) {
    const how = slow ? ", slow writes" : "";
    Deno.test(`lent chunks reach the client intact: event stream, ${shape}${how}`, async () => {
      const sink = new Sink(slow);
      await respond(sink, response("text/event-stream", groups), false, false, true, ex());
      const body = bodyOf(sink.text());
      // Chunked framing: strip the size lines.
      assert.equal(unchunk(body), expected);
      assert.equal(sink.lent, 0, "every reserved slab region was released");
    });
    Deno.test(`lent chunks reach the client intact: JSON, ${shape}${how}`, async () => {
      const sink = new Sink(slow);
      await respond(sink, response("application/json", groups), false, false, true, ex());
      const wire = sink.text();
      const body = bodyOf(wire);
      assert.equal(/transfer-encoding: chunked/.test(wire) ? unchunk(body) : body, expected);
      assert.equal(sink.lent, 0, "every reserved slab region was released");
    });
    Deno.test(`lent chunks reach the client intact: content-length, ${shape}${how}`, async () => {
      const sink = new Sink(slow);
      const length = enc.encode(expected).byteLength;
      await respond(sink, response("application/json", groups, length), false, false, true, ex());
      assert.equal(bodyOf(sink.text()), expected);
      assert.equal(sink.lent, 0, "every reserved slab region was released");
    });
  }
}

function ex(): Exchange {
  return new Exchange({ transport: "tcp", hostname: "127.0.0.1", port: 1 });
}

function unchunk(body: string): string {
  let out = "";
  let i = 0;
  while (true) {
    const eol = body.indexOf("\r\n", i);
    const size = parseInt(body.slice(i, eol), 16);
    if (size === 0) return out;
    out += body.slice(eol + 2, eol + 2 + size);
    i = eol + 2 + size + 2;
  }
}

Deno.test("chunks that are ready together go out in one write, with the head", async () => {
  const sink = new Sink();
  const groups = [["data: a\n\n", "data: bb\n\n", "data: ccc\n\n"], ["data: d\n\n"]];
  await respond(sink, response("text/event-stream", groups), false, false, true, ex());
  assert.match(sink.writes[0]!, /^HTTP\/1\.1 200 /);
  assert.equal(unchunk(bodyOf(sink.writes[0]!) + "0\r\n\r\n"), groups[0]!.join(""));
  assert.equal(unchunk(bodyOf(sink.text())), groups.flat().join(""));
});
