/**
 * @module response_writer
 * Writes one response of the own server to its socket: the head and the first ready chunks in one
 * write, then each chunk as it comes (an SSE event is never held back), with content-length,
 * chunked or close-delimited framing decided here and never taken from the handler's headers.
 *
 * Must never: hold back a chunk that has arrived; end a broken body cleanly (the terminating chunk
 * is withheld, so the client sees a truncated body); send more bytes than a declared
 * content-length; send a body on a HEAD answer, a 1xx, 204 or 304.
 */

import { hasToken, parseLength } from "./request_head.ts";
import { errorBytes, fill, headTail, type Part, statusLine } from "./response_head.ts";
import type { Exchange } from "./exchange.ts";
import { toRelayError } from "../errors.ts";
import { type BodyReaderLike, eachFieldLine, takeDirectBody } from "../http/mod.ts";
import { staticBody } from "../http/mod.ts";
import type { WriteSlab } from "../http/mod.ts";

/** Most bytes of a response gathered into one write when several chunks are ready at once. */
const MAX_COALESCE = 128 * 1024;
/**
 * Largest write made in reserved slab memory, and the size of the pooled read buffers. A fresh
 * Uint8Array costs ~0.8 µs in Deno (off-heap, zeroed); small writes (heads, JSON answers, SSE
 * events) go through a region of a shared slab instead (http/write_slabs.ts).
 */
export const POOL_BUF = 16 * 1024;
/** Microtask turns to wait for a body chunk that a stream produces without real I/O. */
const SETTLE_TURNS = 6;

const noop = (): void => {};

/** Where a response goes: the connection, seen from the writer. */
export interface ResponseSink {
  /**
   * Writes all of `bytes`; false (and the exchange aborted) if the client is gone. `slab`, when
   * given, is the {@link reserve} slab `bytes` lives in, released once the write completed.
   */
  write(bytes: Uint8Array, slab?: WriteSlab): Promise<boolean>;
  readonly closed: boolean;
  /** Closes the socket (a broken body: the client must see the response end short). */
  close(): void;
  /**
   * `n` bytes (at most {@link POOL_BUF}) for one write, at the returned slab's `view`; given back
   * by passing the slab to {@link write}.
   */
  reserve(n: number): WriteSlab;
}

/**
 * One read on a body reader and its outcome. A writer reuses one for the whole body ({@link start}
 * begins the next read), so an event costs no object and no closures of its own.
 */
class Peek {
  ready = false;
  failed = false;
  done = false;
  value: unknown = undefined;
  error: unknown = undefined;
  wait!: Promise<void>;

  /** A read on `reader`; with null, an end of stream that is already known. */
  constructor(reader: BodyReaderLike | null) {
    if (reader !== null) {
      this.start(reader);
      return;
    }
    this.ready = this.done = true;
    this.wait = Promise.resolve();
  }

  /** Starts the next read; the previous outcome must have been taken. */
  start(reader: BodyReaderLike): this {
    this.ready = this.failed = false;
    this.value = this.error = undefined;
    this.wait = reader.read().then(this.#got, this.#failed);
    return this;
  }

  readonly #got = (r: ReadableStreamReadResult<Uint8Array>): void => {
    this.ready = true;
    this.done = r.done;
    this.value = r.value;
  };

  readonly #failed = (err: unknown): void => {
    this.ready = true;
    this.failed = true;
    this.error = err;
  };
}

/**
 * Starts a read (on `reuse` when given) and lets a few microtask turns pass: a chunk (or the end)
 * of a body that needs no I/O, such as a string or an in-memory stream, is there by then. This is
 * how a whole body is recognised and sent with `content-length`, and how chunks that are ready
 * together go out in one write, without ever waiting for a chunk that is not ready.
 */
function peek(reader: BodyReaderLike, reuse?: Peek): Peek | Promise<Peek> {
  // A reader that knows it must wait for I/O is not given turns: its chunk cannot come sooner.
  // Asked before the read starts, which may take the last chunk that was ready.
  const mustWait = reader.ready?.() === false;
  const p = reuse === undefined ? new Peek(reader) : reuse.start(reader);
  return mustWait ? p : settle(p);
}

async function settle(p: Peek): Promise<Peek> {
  for (let i = 0; i < SETTLE_TURNS && !p.ready; i++) await null;
  return p;
}

const enum Mode {
  Length,
  Chunked,
  Close,
}

/**
 * Writes gathered parts (the head and framing as strings, payload as bytes) and empties `parts`:
 * in one write through a pooled buffer when small (no allocation), a lone payload as it is,
 * else joined in writes of at most {@link MAX_COALESCE} bytes with large payloads on their own.
 */
function flush(sink: ResponseSink, parts: Part[], total: number): Promise<boolean> {
  const only = parts.length === 1 ? parts[0]! : null;
  if (only !== null && typeof only !== "string") {
    parts.length = 0;
    return sink.write(only);
  }
  if (total <= POOL_BUF) {
    const slab = sink.reserve(total);
    const view = slab.view;
    const n = fill(view, parts);
    parts.length = 0;
    // The sink releases the slab when the write is done: no closure and no promise of its own
    // per SSE event.
    return sink.write(n === total ? view : view.subarray(0, n), slab);
  }
  if (total <= MAX_COALESCE || parts.length === 1) {
    const out = new Uint8Array(total);
    fill(out, parts);
    parts.length = 0;
    return sink.write(out);
  }
  return flushLarge(sink, parts);
}

/** Writes more than {@link MAX_COALESCE} bytes of parts: joined in groups, large payloads alone. */
async function flushLarge(sink: ResponseSink, parts: Part[]): Promise<boolean> {
  const all = parts.splice(0);
  let group: Part[] = [];
  let size = 0;
  for (const p of all) {
    const len = typeof p === "string" ? p.length : p.byteLength;
    if (size + len > MAX_COALESCE && group.length > 0) {
      if (!(await flush(sink, group, size))) return false;
      group = [];
      size = 0;
    }
    group.push(p);
    size += len;
  }
  return group.length === 0 || await flush(sink, group, size);
}

const alwaysFalse = (): boolean => false;

/** `written`, or false when the connection is not kept (no closure made per response). */
function andKeep(written: Promise<boolean>, keep: boolean): Promise<boolean> {
  return keep ? written : written.then(alwaysFalse);
}

/**
 * Writes the response: the head and the first ready chunks in one write, then each chunk as it
 * comes. Returns whether the connection can carry another request.
 */
export function respond(
  sink: ResponseSink,
  res: Response,
  http10: boolean,
  isHead: boolean,
  keep: boolean,
  ex: Exchange,
): Promise<boolean> {
  const status = res.status;
  let text = statusLine(status, http10);
  let declared = -1;
  let hasDate = false;
  let eventStream = false;
  eachFieldLine(res, (value, name) => {
    switch (name) {
      case "content-type":
        eventStream = value.trimStart().toLowerCase().startsWith("text/event-stream");
        break;
      case "content-length": {
        const n = parseLength(value);
        if (n >= 0) declared = n;
        return; // written below, with the framing
      }
      case "connection":
        if (hasToken(value.toLowerCase(), "close")) keep = false;
        return;
      case "transfer-encoding":
      case "keep-alive":
        return; // framing and connection management are the server's
      case "date":
        hasDate = true;
    }
    text += `${name}: ${value}\r\n`;
  });
  const noBody = status === 204 || status === 304 || status < 200;
  // A body given as bytes or text goes out with the head in one write, without a stream.
  const fixed = noBody ? null : staticBody(res);
  if (fixed !== null) {
    if (isHead) {
      text += `content-length: ${declared >= 0 ? declared : fixed.byteLength}\r\n`;
      return andKeep(writeHead(sink, text, hasDate, keep, http10, ex), keep);
    }
    text += `content-length: ${fixed.byteLength}\r\n`;
    text += headTail(hasDate, keep, http10);
    if (ex.body !== null) ex.body.headSent = true;
    return andKeep(flush(sink, [text, fixed], text.length + fixed.byteLength), keep);
  }
  const stream = res.body;
  if (stream === null || noBody) {
    stream?.cancel().catch(noop);
    if (noBody) {
      // RFC 9110 §8.6: no content-length on a 1xx or 204; on a 304 it would only describe a
      // body that is not there, and some clients wait for it.
    } else if (isHead) {
      if (declared >= 0) text += `content-length: ${declared}\r\n`;
    } else {
      text += "content-length: 0\r\n";
    }
    return andKeep(writeHead(sink, text, hasDate, keep, http10, ex), keep);
  }
  // A body the upstream client can hand over without a stream is read directly.
  let reader: BodyReaderLike | null = takeDirectBody(res);
  if (reader === null) {
    try {
      reader = stream.getReader();
    } catch {
      // A body already read or locked: nothing was written yet, so answer 500.
      return sink.write(errorBytes(toRelayError(new TypeError("response body is unusable"))))
        .then(() => {
          sink.close();
          return false;
        });
    }
  }
  ex.reader = reader;
  return writeBody(sink, reader, text, declared, eventStream, hasDate, keep, http10, isHead, ex);
}

/**
 * Writes the head and a streamed body read from `reader`. Apart from {@link respond}, which
 * holds the Response, so that a long stream keeps nothing of it.
 */
async function writeBody(
  sink: ResponseSink,
  reader: BodyReaderLike,
  text: string,
  declared: number,
  eventStream: boolean,
  hasDate: boolean,
  keep: boolean,
  http10: boolean,
  isHead: boolean,
  ex: Exchange,
): Promise<boolean> {
  let pk = await peek(reader);
  let first: Uint8Array | null = null;
  let mode = Mode.Length;
  if (declared < 0) {
    mode = http10 ? Mode.Close : Mode.Chunked;
    // An event stream keeps the chunked framing A sent, even when it is all there already.
    if (pk.ready && !pk.failed && !eventStream) {
      if (pk.done) {
        declared = 0;
        mode = Mode.Length;
      } else if (pk.value instanceof Uint8Array) {
        // The whole body, if the stream ends right after its first chunk. The read below may
        // reuse a lent chunk's buffer.
        first = reader.lent ? pk.value.slice() : pk.value;
        pk = await peek(reader);
        if (pk.ready && !pk.failed && pk.done) {
          declared = first.byteLength;
          mode = Mode.Length;
        }
      }
    }
  }
  if (sink.closed) return false;
  if (isHead) {
    reader.cancel().catch(noop);
    if (declared >= 0) text += `content-length: ${declared}\r\n`;
    return await writeHead(sink, text, hasDate, keep, http10, ex) && keep;
  }
  if (mode === Mode.Length) text += `content-length: ${declared}\r\n`;
  else if (mode === Mode.Chunked) text += "transfer-encoding: chunked\r\n";
  else keep = false;
  text += headTail(hasDate, keep, http10);
  if (ex.body !== null) ex.body.headSent = true;
  const parts: Part[] = [text];
  let total = text.length;
  // The head goes out with the first flush; this frame lives as long as the stream.
  text = "";
  let sent = 0;
  /** Adds a chunk with its framing; false when it went past the declared length. */
  const add = (chunk: Uint8Array): boolean => {
    if (chunk.byteLength === 0) return true;
    if (mode === Mode.Length) {
      const room = declared - sent;
      const over = chunk.byteLength > room;
      if (over) chunk = chunk.subarray(0, room);
      sent += chunk.byteLength;
      parts.push(chunk);
      total += chunk.byteLength;
      return !over;
    }
    if (mode === Mode.Chunked) {
      const size = `${chunk.byteLength.toString(16)}\r\n`;
      parts.push(size, chunk, "\r\n");
      total += size.length + chunk.byteLength + 2;
    } else {
      parts.push(chunk);
      total += chunk.byteLength;
    }
    return true;
  };
  const lent = reader.lent === true;
  if (first !== null && !add(first)) pk = stopBody(reader);
  while (true) {
    if (!pk.ready) {
      // Nothing more is ready: what is gathered goes out now (an SSE event is never held).
      if (parts.length > 0 && !(await flush(sink, parts, total))) return false;
      total = 0;
      await pk.wait;
      if (sink.closed) return false;
    }
    if (pk.failed || (!pk.done && !(pk.value instanceof Uint8Array))) {
      // A broken body: send what came before it, then close without a clean end.
      if (!pk.failed) reader.cancel().catch(noop);
      if (parts.length > 0) await flush(sink, parts, total);
      sink.close();
      return false;
    }
    if (pk.done) break;
    if (!add(pk.value as Uint8Array)) {
      // More than the declared content-length: the rest is dropped.
      pk = stopBody(reader);
      break;
    }
    if (total >= MAX_COALESCE || (lent && reader.ready?.() === false)) {
      // A lent chunk lives in the reader's buffer, which its next socket read reuses: what is
      // gathered goes out (the write awaited) before that read starts.
      if (!(await flush(sink, parts, total))) return false;
      total = 0;
    }
    // The outcome was taken (added above): the same Peek carries the next read.
    const next = peek(reader, pk);
    pk = next instanceof Peek ? next : await next;
  }
  if (mode === Mode.Chunked) {
    parts.push("0\r\n\r\n");
    total += 5;
  }
  if (parts.length > 0 && !(await flush(sink, parts, total))) return false;
  // A body shorter than its content-length leaves the client waiting: closing tells it.
  return keep && (mode !== Mode.Length || sent === declared);
}

/** Writes a response head without a body. */
function writeHead(
  sink: ResponseSink,
  text: string,
  hasDate: boolean,
  keep: boolean,
  http10: boolean,
  ex: Exchange,
): Promise<boolean> {
  if (ex.body !== null) ex.body.headSent = true;
  const head = text + headTail(hasDate, keep, http10);
  return flush(sink, [head], head.length);
}

/** Cancels the rest of a response body; the read in flight (if any) is not waited for. */
function stopBody(reader: BodyReaderLike): Peek {
  reader.cancel().catch(noop);
  return new Peek(null);
}
