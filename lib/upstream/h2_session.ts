/**
 * @module h2_session
 * An HTTP/2 client session (RFC 9113) over one TLS connection to A, written for relaying. It
 * replaces `node:http2`, with which a relay over HTTP/2 spent 1.6-1.7 times the CPU per request of
 * one over its own HTTP/1.1 client (now 1.1-1.2 times; docs/BENCHMARKS_LOG.md, "Eleventh sitting"):
 * here frames are parsed from one reused read buffer, and the frames queued in one microtask turn
 * go out in one socket write.
 *
 * Owns: the socket and its read loop, stream ids, flow control both ways (A's windows for the
 * request bodies we send; our windows, given back as the handler takes data, as back-pressure on
 * A), the write buffer, the HPACK decoder (every header block is decoded, even one for a stream
 * already gone, so that the dynamic table stays in step with A's encoder), and applying the checks
 * on A's responses (`h2_fields.ts`) before a handler sees them.
 *
 * Must never: hand a handler a field that could break the HTTP/1.1 head it is written into (CR,
 * LF or NUL in a value, a name that is not a lower-case token, a connection-specific field), body
 * bytes past the response's content-length, or any callback after the stream's last one; buffer
 * without bound what A sends or does not read; leave a stream waiting on a session that failed
 * (every connection error closes the socket and fails every open stream); or send a stream's
 * frames after telling its handler the stream was never sent.
 */

import { encodeHeaderBlock, HeaderListTooLarge, HpackDecoder } from "./hpack.ts";
import { checkHead, type H2Fields, isSensitive, Malformed } from "./h2_fields.ts";
import { BLOCKED_SLOT, IdTable, SlotSet } from "../http/mod.ts";

export type { H2Fields } from "./h2_fields.ts";

/** What {@link H2Session.connect} is given. */
export interface H2SessionOptions {
  hostname: string;
  port: number;
  caCerts?: string[] | undefined;
  /** Our per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE); default 256 KiB. */
  streamWindow?: number;
  /** Largest decoded response header list (SETTINGS_MAX_HEADER_LIST_SIZE too); default 64 KiB. */
  maxHeaderList?: number;
  /**
   * For tests only: the first stream id (odd), so that the end of the id space is reached without
   * 2^30 requests. Default 1.
   */
  firstStreamId?: number;
}

/** A stream failed: reset by A, by us, or with its session. Passed to H2Handler.onError exactly once. */
export class H2StreamError extends Error {
  /** The RST_STREAM or GOAWAY error code, when there was one. */
  readonly code: number | null;
  /** A reset this stream itself (RST_STREAM from A) while the session lives. */
  readonly byPeer: boolean;
  /**
   * A cannot have processed the request: RST_STREAM REFUSED_STREAM, or GOAWAY with last-stream-id
   * below this stream, or the stream was never sent. Safe to send again.
   */
  readonly refused: boolean;

  constructor(
    message: string,
    code: number | null,
    byPeer: boolean,
    refused: boolean,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "H2StreamError";
    this.code = code;
    this.byPeer = byPeer;
    this.refused = refused;
  }
}

/** Connecting failed (TCP, TLS, or ALPN did not choose h2). */
export class H2ConnectError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "H2ConnectError";
  }
}

/** Receives one stream's response. Calls come from the read loop: they must not block. */
export interface H2Handler {
  /**
   * The final response head (1xx heads skipped; trailers are not a head). Pseudo-headers removed,
   * fields validated, values without leading or trailing SP/HTAB. endStream: no body follows
   * (onEnd follows right after).
   */
  onHead(status: number, fields: H2Fields, endStream: boolean): void;
  /** A DATA payload (non-empty), a copy the handler owns. */
  onData(chunk: Uint8Array): void;
  /** END_STREAM received and everything before it delivered. Exactly once, or never. */
  onEnd(): void;
  /** The stream failed; exactly once, never after onEnd; it may come before onHead. */
  onError(err: H2StreamError): void;
}

// Frame types (RFC 9113 §6).
const DATA = 0x0;
const HEADERS = 0x1;
const PRIORITY = 0x2;
const RST_STREAM = 0x3;
const SETTINGS = 0x4;
const PUSH_PROMISE = 0x5;
const PING = 0x6;
const GOAWAY = 0x7;
const WINDOW_UPDATE = 0x8;
const CONTINUATION = 0x9;

// Flags.
const END_STREAM = 0x1;
const ACK = 0x1;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY_FLAG = 0x20;

// Error codes (§7).
const NO_ERROR = 0x0;
const PROTOCOL_ERROR = 0x1;
const INTERNAL_ERROR = 0x2;
const FLOW_CONTROL_ERROR = 0x3;
const FRAME_SIZE_ERROR = 0x6;
const REFUSED_STREAM = 0x7;
const CANCEL = 0x8;
const COMPRESSION_ERROR = 0x9;
const ENHANCE_YOUR_CALM = 0xb;

const PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** Largest frame payload we take: the default SETTINGS_MAX_FRAME_SIZE, which we never raise. */
const MAX_FRAME = 16384;
/** Largest window, stream id and frame size value in the protocol. */
const MAX_31 = 0x7fffffff;
/** Our connection receive window: large, since streams' windows do the back-pressure. */
const CONN_WINDOW = 16 * 1024 * 1024;
/** Connection window given back once this much arrived (one small frame per MiB). */
const CONN_UPDATE_AT = 1024 * 1024;
const DEFAULT_STREAM_WINDOW = 256 * 1024;
const DEFAULT_MAX_HEADER_LIST = 64 * 1024;
/** A header block (HEADERS + CONTINUATION) larger than this many header lists is a flood. */
const BLOCK_LISTS = 4;
/** CONTINUATION frames in one block past which it is a flood, however small they are. */
const MAX_CONTINUATIONS = 512;
/** Request body bytes queued unsent before write() asks the caller to wait for drain(). */
const QUEUE_HIGH = 64 * 1024;
/** The write buffer's fill above which no more request body is moved into it. */
const OUT_BODY_HIGH = 256 * 1024;
/** Bytes waiting for the socket past which A is taken as not reading: the session fails. */
const OUT_MAX = 4 * 1024 * 1024;
const OUT_INITIAL = 64 * 1024;
/** A write buffer grown past this is not kept for reuse. */
const OUT_KEEP = 1024 * 1024;
const READ_BUF = 64 * 1024;
/** Longest wait for a last GOAWAY to be written before the socket is closed anyway. */
const CLOSE_FLUSH_MS = 1000;

/** A connection error: GOAWAY with `code`, then the socket closes. */
class ConnError extends Error {
  readonly code: number;
  constructor(code: number, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "H2ConnectionError";
    this.code = code;
  }
}

const NO_CHUNKS: Array<Uint8Array | undefined> = [];

/** One stream's state; the handler-facing side is {@link H2Stream}. */
class StreamState {
  [BLOCKED_SLOT] = -1;
  readonly id: number;
  readonly core: SessionCore;
  readonly handler: H2Handler;
  /** A response to HEAD: it has no body whatever its content-length says. */
  readonly headOnly: boolean;
  /** The write-buffer generation holding our HEADERS: unchanged means they never left. */
  readonly gen: number;
  /** onEnd or onError was called (or queued): the handler hears nothing more. */
  finished = false;
  /** The final head was delivered. */
  gotHead = false;
  /** end() was called, or the request had no body. */
  endRequested: boolean;
  /** END_STREAM sent, or sending given up. */
  localDone: boolean;
  /** Bytes A lets us send on this stream. */
  sendWindow: number;
  /** Bytes we let A send on this stream. */
  recvWindow: number;
  /** Bytes received and not yet given back with WINDOW_UPDATE. */
  unacked = 0;
  paused = false;
  /** The body length A announced (0 when the response has no body), or -1. */
  contentLength = -1;
  received = 0;
  /** Request body chunks not yet framed: `queue[qHead]` from `qOff` on. */
  queue: Array<Uint8Array | undefined> = [];
  qHead = 0;
  qOff = 0;
  qBytes = 0;
  drainWaiters: Array<() => void> | null = null;

  constructor(
    core: SessionCore,
    id: number,
    handler: H2Handler,
    headOnly: boolean,
    endStream: boolean,
    sendWindow: number,
    recvWindow: number,
    gen: number,
  ) {
    this.core = core;
    this.id = id;
    this.handler = handler;
    this.headOnly = headOnly;
    this.endRequested = endStream;
    this.localDone = endStream;
    this.sendWindow = sendWindow;
    this.recvWindow = recvWindow;
    this.gen = gen;
  }
}

/** One request's stream: its body going out, and the back-pressure on its response. */
export class H2Stream {
  readonly id: number;
  readonly #s: StreamState;

  /** Made by {@link H2Session.request} only. */
  constructor(s: StreamState) {
    this.#s = s;
    this.id = s.id;
  }

  /**
   * Queues request body bytes (sent within A's stream and connection windows; the chunk is kept,
   * not copied, until it is framed). False when more than 64 KiB are queued unsent: then await
   * drain(). Ignored after the stream failed or ended.
   */
  write(chunk: Uint8Array): boolean {
    return this.#s.core.write(this.#s, chunk);
  }

  /** Resolves when the queue is below 64 KiB, or the stream is done or failed. */
  drain(): Promise<void> {
    const s = this.#s;
    if (s.finished || s.localDone || s.qBytes <= QUEUE_HIGH) return Promise.resolve();
    return new Promise<void>((resolve) => (s.drainWaiters ??= []).push(resolve));
  }

  /** Ends the request (END_STREAM) after the queued bytes. */
  end(): void {
    this.#s.core.end(this.#s);
  }

  /**
   * Resets the stream (RST_STREAM, default CANCEL) if still open; the handler then gets onError
   * (code, byPeer false) in a microtask, unless it already ended or failed.
   */
  cancel(code: number = CANCEL): void {
    this.#s.core.cancel(this.#s, code);
  }

  /**
   * Stops giving A stream window back: A stops after about one stream window (flow control as
   * back-pressure).
   */
  pause(): void {
    this.#s.paused = true;
  }

  /** Gives back the window held while paused, and resumes giving it back. */
  resume(): void {
    this.#s.core.resume(this.#s);
  }

  get paused(): boolean {
    return this.#s.paused;
  }
}

/** The session's machinery; {@link H2Session} is its public face. */
class SessionCore {
  readonly #conn: Deno.Conn;
  readonly #owner: H2Session;
  readonly #decoder = new HpackDecoder();
  /** Not a `Map` or `Set`, here or below: see IdTable and SlotSet for what a churned one keeps. */
  readonly #streams = new IdTable<StreamState>();
  readonly #streamWindow: number;
  readonly #maxHeaderList: number;
  #nextId: number;

  // A's settings and windows.
  remoteMaxStreams: number | null = null;
  #peerInitialWindow = 65535;
  #peerMaxFrame = 16384;
  #connSendWindow = 65535;
  /** Streams with queued body bytes that a window or a full write buffer holds back. */
  readonly #blocked = new SlotSet<typeof BLOCKED_SLOT, StreamState>(BLOCKED_SLOT);

  // Receiving.
  #rbuf = new Uint8Array(READ_BUF);
  #rstart = 0;
  #rend = 0;
  #connRecvWindow = CONN_WINDOW;
  #connUnacked = 0;
  #gotSettings = false;
  readonly settled: Promise<void>;
  #resolveSettled!: () => void;
  /** Scratch for checkHead's content-length. */
  readonly #length = new Float64Array(1);
  /** The header block being gathered (HEADERS without END_HEADERS, then CONTINUATION): its stream. */
  #hbId = 0;
  #hbFlags = 0;
  #hb: Uint8Array | null = null;
  #hbLen = 0;
  #hbFrames = 0;

  // Sending: frames are appended to #out and flushed once per microtask turn.
  #out = new Uint8Array(OUT_INITIAL);
  #outLen = 0;
  #spare = new Uint8Array(OUT_INITIAL);
  /** Bumped each time #out is handed to the socket (see StreamState.gen). */
  #gen = 0;
  #flushScheduled = false;
  #writing = false;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;

  // Life cycle.
  goaway = false;
  #goawayCode = NO_ERROR;
  /** close() was called. */
  #closing = false;
  #idsUsedUp = false;
  /** Failed or finished: no frame is processed, every stream has ended. */
  #dead = false;
  #socketClosed = false;
  #closeErr: Error | null = null;
  /** Socket reads that brought bytes: it moves while A is reachable. */
  reads = 0;

  constructor(
    conn: Deno.Conn,
    owner: H2Session,
    streamWindow: number,
    maxHeaderList: number,
    firstStreamId: number,
  ) {
    this.#conn = conn;
    this.#nextId = firstStreamId;
    this.#owner = owner;
    this.#streamWindow = streamWindow;
    this.#maxHeaderList = maxHeaderList;
    this.settled = new Promise<void>((resolve) => (this.#resolveSettled = resolve));
    this.#append(PREFACE);
    const p = this.#frame(SETTINGS, 0, 0, 18);
    this.#setting(p, 0x2, 0); // ENABLE_PUSH
    this.#setting(p + 6, 0x4, streamWindow); // INITIAL_WINDOW_SIZE
    this.#setting(p + 12, 0x6, maxHeaderList); // MAX_HEADER_LIST_SIZE
    this.#windowUpdate(0, CONN_WINDOW - 65535);
  }

  start(): void {
    this.#readLoop().catch(() => {});
  }

  get closed(): boolean {
    return this.#dead || this.#closing || this.goaway || this.#idsUsedUp;
  }

  get activeStreams(): number {
    return this.#streams.size;
  }

  // ---------------------------------------------------------------------------------------------
  // Requests

  request(fields: H2Fields, endStream: boolean, handler: H2Handler): H2Stream {
    if (this.closed) throw new H2StreamError("the session takes no new streams", null, false, true);
    let headOnly = false;
    for (let i = 0; i < fields.length && i < 4; i++) {
      if (fields[i]![0] === ":method") {
        headOnly = fields[i]![1] === "HEAD";
        break;
      }
    }
    // Encoded before the id is taken: a field it refuses costs no stream.
    const block = encodeHeaderBlock(fields, isSensitive);
    const id = this.#nextId;
    this.#nextId += 2;
    if (this.#nextId > MAX_31) this.#idsUsedUp = true;
    const s = new StreamState(
      this,
      id,
      handler,
      headOnly,
      endStream,
      this.#peerInitialWindow,
      this.#streamWindow,
      this.#gen,
    );
    this.#streams.set(id, s);
    const flags = endStream ? END_STREAM : 0;
    const max = this.#peerMaxFrame;
    if (block.length <= max) {
      const p = this.#frame(HEADERS, flags | END_HEADERS, id, block.length);
      this.#out.set(block, p);
    } else {
      for (let off = 0; off < block.length; off += max) {
        const n = Math.min(max, block.length - off);
        const last = off + n === block.length ? END_HEADERS : 0;
        const p = off === 0
          ? this.#frame(HEADERS, flags | last, id, n)
          : this.#frame(CONTINUATION, last, id, n);
        this.#out.set(block.subarray(off, off + n), p);
      }
    }
    return new H2Stream(s);
  }

  write(s: StreamState, chunk: Uint8Array): boolean {
    if (s.finished || s.endRequested || this.#dead) return true;
    if (chunk.length > 0) {
      s.queue.push(chunk);
      s.qBytes += chunk.length;
      if (this.#pump(s)) this.#blocked.add(s);
    }
    return s.qBytes <= QUEUE_HIGH;
  }

  end(s: StreamState): void {
    if (s.finished || s.endRequested || this.#dead) return;
    s.endRequested = true;
    if (this.#pump(s)) this.#blocked.add(s);
  }

  cancel(s: StreamState, code: number): void {
    if (s.finished || this.#dead) return;
    s.finished = true;
    this.#remove(s);
    this.#rst(s.id, code);
    queueMicrotask(() => {
      try {
        s.handler.onError(new H2StreamError(`stream cancelled (code ${code})`, code, false, false));
      } catch { /* the handler's own failure; nothing to undo here */ }
    });
    this.#maybeFinish();
  }

  resume(s: StreamState): void {
    if (!s.paused) return;
    s.paused = false;
    if (!s.finished && !this.#dead && s.unacked > 0) this.#giveBack(s);
  }

  ping(): void {
    if (this.#dead) return;
    const p = this.#frame(PING, 0, 0, 8);
    this.#out.fill(0, p, p + 8);
  }

  close(): void {
    if (this.#dead || this.#closing) return;
    this.#closing = true;
    this.#goawayFrame(NO_ERROR);
    this.#maybeFinish();
  }

  destroy(err: Error | null): void {
    this.#shutdown(err, null, true);
  }

  // ---------------------------------------------------------------------------------------------
  // Sending

  /**
   * Moves the stream's queued body into DATA frames as far as A's windows and the write buffer
   * allow. True when bytes (or END_STREAM) are still held back.
   */
  #pump(s: StreamState): boolean {
    let held = false;
    while (s.qBytes > 0) {
      if (this.#outLen >= OUT_BODY_HIGH) {
        held = true;
        break;
      }
      const chunk = s.queue[s.qHead]!;
      const left = chunk.length - s.qOff;
      const n = Math.min(left, s.sendWindow, this.#connSendWindow, this.#peerMaxFrame);
      if (n <= 0) {
        held = true;
        break;
      }
      const last = s.endRequested && n === s.qBytes;
      const p = this.#frame(DATA, last ? END_STREAM : 0, s.id, n);
      this.#out.set(n === chunk.length ? chunk : chunk.subarray(s.qOff, s.qOff + n), p);
      s.sendWindow -= n;
      this.#connSendWindow -= n;
      s.qBytes -= n;
      if (n === left) {
        s.queue[s.qHead++] = undefined;
        s.qOff = 0;
        if (s.qHead === s.queue.length) {
          s.queue.length = 0;
          s.qHead = 0;
        }
      } else {
        s.qOff += n;
      }
      if (last) s.localDone = true;
    }
    if (!held && s.endRequested && !s.localDone) {
      this.#frame(DATA, END_STREAM, s.id, 0);
      s.localDone = true;
    }
    if (s.drainWaiters !== null && (s.qBytes <= QUEUE_HIGH || s.localDone)) this.#wakeDrain(s);
    return held;
  }

  #unblock(): void {
    const blocked = this.#blocked;
    for (let i = 0; i < blocked.size;) {
      if (this.#connSendWindow <= 0 || this.#outLen >= OUT_BODY_HIGH) return;
      // A stream that is through leaves, and the last one takes its index: look there again.
      if (this.#pump(blocked.at(i))) i++;
      else blocked.deleteAt(i);
    }
  }

  #wakeDrain(s: StreamState): void {
    const waiters = s.drainWaiters;
    s.drainWaiters = null;
    if (waiters !== null) { for (const w of waiters) w(); }
  }

  #ensure(n: number): void {
    const need = this.#outLen + n;
    if (need <= this.#out.length) return;
    let size = this.#out.length * 2;
    while (size < need) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.#out.subarray(0, this.#outLen));
    this.#out = b;
  }

  #append(bytes: Uint8Array): void {
    this.#ensure(bytes.length);
    this.#out.set(bytes, this.#outLen);
    this.#outLen += bytes.length;
    this.#scheduleFlush();
  }

  #put32(p: number, v: number): void {
    const o = this.#out;
    o[p] = v >>> 24;
    o[p + 1] = v >>> 16;
    o[p + 2] = v >>> 8;
    o[p + 3] = v;
  }

  /** Appends a frame header with room for `len` payload bytes; returns where the payload goes. */
  #frame(type: number, flags: number, id: number, len: number): number {
    this.#ensure(9 + len);
    const o = this.#out;
    const p = this.#outLen;
    o[p] = len >>> 16;
    o[p + 1] = len >>> 8;
    o[p + 2] = len;
    o[p + 3] = type;
    o[p + 4] = flags;
    this.#put32(p + 5, id);
    this.#outLen = p + 9 + len;
    this.#scheduleFlush();
    return p + 9;
  }

  #setting(p: number, key: number, value: number): void {
    this.#out[p] = key >>> 8;
    this.#out[p + 1] = key;
    this.#put32(p + 2, value);
  }

  #windowUpdate(id: number, inc: number): void {
    this.#put32(this.#frame(WINDOW_UPDATE, 0, id, 4), inc);
  }

  #rst(id: number, code: number): void {
    this.#put32(this.#frame(RST_STREAM, 0, id, 4), code);
  }

  #goawayFrame(code: number): void {
    // We accept no streams from A (push is off): the last one we processed is 0.
    const p = this.#frame(GOAWAY, 0, 0, 8);
    this.#put32(p, 0);
    this.#put32(p + 4, code);
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#socketClosed) return;
    this.#flushScheduled = true;
    queueMicrotask(this.#flush);
  }

  /** Writes what is queued, one write loop at a time; frames added meanwhile go in the next. */
  readonly #flush = async (): Promise<void> => {
    this.#flushScheduled = false;
    if (this.#socketClosed) return;
    if (this.#outLen > OUT_MAX) {
      this.#shutdown(new Error("A does not read what the relay sends"), null, true);
      return;
    }
    if (this.#writing) return;
    this.#writing = true;
    try {
      while (this.#outLen > 0 && !this.#socketClosed) {
        const buf = this.#out;
        const len = this.#outLen;
        this.#out = this.#spare;
        this.#outLen = 0;
        this.#gen++;
        let off = 0;
        while (off < len) off += await this.#conn.write(buf.subarray(off, len));
        this.#spare = buf.length > OUT_KEEP ? new Uint8Array(OUT_INITIAL) : buf;
        if (this.#blocked.size > 0 && !this.#dead) this.#unblock();
        if (this.#outLen > OUT_MAX) {
          this.#writing = false;
          this.#shutdown(new Error("A does not read what the relay sends"), null, true);
          return;
        }
      }
    } catch (err) {
      this.#writing = false;
      if (this.#dead) this.#closeSocket();
      else this.#shutdown(new Error("write to A failed", { cause: err }), null, true);
      return;
    }
    this.#writing = false;
    if (this.#dead) this.#closeSocket();
  };

  // ---------------------------------------------------------------------------------------------
  // Life cycle

  /** Closes the socket once nothing is left to wait for (close() called, or GOAWAY from A). */
  #maybeFinish(): void {
    if (this.#dead || this.#streams.size > 0 || !(this.#closing || this.goaway)) return;
    const err = this.goaway && this.#goawayCode !== NO_ERROR
      ? new Error(`A sent GOAWAY (code ${this.#goawayCode})`)
      : null;
    this.#shutdown(err, null, false);
  }

  /**
   * Ends the session: with `code`, a GOAWAY is sent first (best effort); every open stream fails;
   * the socket closes after the last write (`now`: at once).
   */
  #shutdown(err: Error | null, code: number | null, now: boolean): void {
    if (this.#dead) return;
    this.#dead = true;
    this.#closeErr = err;
    this.#hb = null;
    if (this.#streams.size > 0 || code !== null) {
      // Frames not yet handed to the socket go nowhere: HEADERS among them belong to streams
      // reported below as never sent.
      this.#outLen = 0;
    }
    if (code !== null) this.#goawayFrame(code);
    const message = err?.message ?? "session closed";
    for (const s of this.#byAge()) {
      s.finished = true;
      s.queue = NO_CHUNKS;
      s.qBytes = 0;
      this.#wakeDrain(s);
      const e = new H2StreamError(message, code, false, s.gen === this.#gen, { cause: err });
      try {
        s.handler.onError(e);
      } catch { /* the session is gone either way */ }
    }
    this.#streams.clear();
    this.#blocked.clear();
    this.#resolveSettled();
    if (now || (this.#outLen === 0 && !this.#writing)) {
      this.#closeSocket();
    } else {
      this.#scheduleFlush();
      this.#closeTimer = setTimeout(() => this.#closeSocket(), CLOSE_FLUSH_MS);
    }
  }

  #closeSocket(): void {
    if (this.#socketClosed) return;
    this.#socketClosed = true;
    this.#dead = true;
    clearTimeout(this.#closeTimer);
    this.#outLen = 0;
    try {
      this.#conn.close();
    } catch { /* already closed */ }
    const onClose = this.#owner.onClose;
    if (onClose !== null) {
      try {
        onClose(this.#closeErr);
      } catch { /* the owner's failure */ }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Reading

  async #readLoop(): Promise<void> {
    while (!this.#dead) {
      let n: number | null;
      try {
        n = await this.#conn.read(this.#rbuf.subarray(this.#rend));
      } catch (err) {
        this.#shutdown(new Error("read from A failed", { cause: err }), null, true);
        return;
      }
      if (this.#dead) return;
      if (n === null) {
        const orderly = this.#streams.size === 0 && (this.goaway || this.#closing);
        this.#shutdown(orderly ? null : new Error("A closed the connection"), null, true);
        return;
      }
      this.#rend += n;
      this.reads++;
      try {
        this.#parse();
      } catch (err) {
        if (err instanceof ConnError) this.#shutdown(err, err.code, false);
        else {
          this.#shutdown(
            new Error("session failed", { cause: err }),
            INTERNAL_ERROR,
            false,
          );
        }
        return;
      }
    }
  }

  #parse(): void {
    const b = this.#rbuf;
    let p = this.#rstart;
    const end = this.#rend;
    while (end - p >= 9 && !this.#dead) {
      const len = (b[p]! << 16) | (b[p + 1]! << 8) | b[p + 2]!;
      if (len > MAX_FRAME) throw new ConnError(FRAME_SIZE_ERROR, `a frame of ${len} bytes`);
      if (end - p < 9 + len) break;
      const id = ((b[p + 5]! & 0x7f) << 24) | (b[p + 6]! << 16) | (b[p + 7]! << 8) | b[p + 8]!;
      this.#onFrame(b[p + 3]!, b[p + 4]!, id, p + 9, p + 9 + len);
      p += 9 + len;
    }
    if (p === end) {
      this.#rstart = 0;
      this.#rend = 0;
    } else if (b.length - end < 9 + MAX_FRAME) {
      // Room for one whole frame after the partial one is kept by moving it to the front.
      b.copyWithin(0, p, end);
      this.#rstart = 0;
      this.#rend = end - p;
    } else {
      this.#rstart = p;
    }
  }

  #u32(p: number): number {
    const b = this.#rbuf;
    return ((b[p]! << 24) | (b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!) >>> 0;
  }

  /** A stream id that is not open: closed (ignored) or never opened (a connection error). */
  #checkClosed(id: number): void {
    if ((id & 1) === 0 || id >= this.#nextId) {
      throw new ConnError(PROTOCOL_ERROR, `a frame on stream ${id}, which we never opened`);
    }
  }

  #onFrame(type: number, flags: number, id: number, start: number, end: number): void {
    if (this.#hbId !== 0 && type !== CONTINUATION) {
      throw new ConnError(PROTOCOL_ERROR, "a frame inside a header block");
    }
    if (!this.#gotSettings && type !== SETTINGS) {
      throw new ConnError(PROTOCOL_ERROR, "A's first frame was not SETTINGS");
    }
    switch (type) {
      case DATA:
        return this.#onData(flags, id, start, end);
      case HEADERS:
        return this.#onHeaders(flags, id, start, end);
      case CONTINUATION:
        return this.#onContinuation(flags, id, start, end);
      case RST_STREAM:
        return this.#onRst(id, start, end);
      case SETTINGS:
        return this.#onSettings(flags, id, start, end);
      case PING: {
        if (id !== 0) throw new ConnError(PROTOCOL_ERROR, "PING on a stream");
        if (end - start !== 8) throw new ConnError(FRAME_SIZE_ERROR, "PING of a bad length");
        if ((flags & ACK) !== 0) return;
        const p = this.#frame(PING, ACK, 0, 8);
        this.#out.set(this.#rbuf.subarray(start, end), p);
        return;
      }
      case GOAWAY:
        return this.#onGoaway(id, start, end);
      case WINDOW_UPDATE:
        return this.#onWindowUpdate(id, start, end);
      case PUSH_PROMISE:
        throw new ConnError(PROTOCOL_ERROR, "PUSH_PROMISE with push disabled");
      case PRIORITY:
        if (id === 0) throw new ConnError(PROTOCOL_ERROR, "PRIORITY on stream 0");
        return;
      default:
        return; // unknown frame types are ignored (§5.5)
    }
  }

  #onSettings(flags: number, id: number, start: number, end: number): void {
    if (id !== 0) throw new ConnError(PROTOCOL_ERROR, "SETTINGS on a stream");
    const len = end - start;
    if ((flags & ACK) !== 0) {
      // Nothing waits on A's ACK of our SETTINGS (RFC 9113 §6.5.3 allows a timeout; we set none).
      if (len !== 0) throw new ConnError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload");
      return;
    }
    if (len % 6 !== 0) throw new ConnError(FRAME_SIZE_ERROR, "SETTINGS of a bad length");
    const b = this.#rbuf;
    for (let p = start; p < end; p += 6) {
      const key = (b[p]! << 8) | b[p + 1]!;
      const v = this.#u32(p + 2);
      switch (key) {
        case 0x2: // ENABLE_PUSH: a server has nothing to say here but 0 (or 1, from RFC 7540 days).
          if (v > 1) throw new ConnError(PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH");
          break;
        case 0x3:
          this.remoteMaxStreams = v;
          break;
        case 0x4: {
          if (v > MAX_31) {
            throw new ConnError(FLOW_CONTROL_ERROR, "bad SETTINGS_INITIAL_WINDOW_SIZE");
          }
          const delta = v - this.#peerInitialWindow;
          this.#peerInitialWindow = v;
          for (const s of this.#streams.toArray()) {
            s.sendWindow += delta;
            if (s.sendWindow > MAX_31) {
              throw new ConnError(FLOW_CONTROL_ERROR, "a stream window past 2^31-1");
            }
          }
          break;
        }
        case 0x5:
          if (v < 16384 || v > 16777215) {
            throw new ConnError(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE");
          }
          this.#peerMaxFrame = v;
          break;
        default:
          // HEADER_TABLE_SIZE: our encoder never indexes. MAX_HEADER_LIST_SIZE: advisory.
          break;
      }
    }
    this.#frame(SETTINGS, ACK, 0, 0);
    if (!this.#gotSettings) {
      this.#gotSettings = true;
      this.#resolveSettled();
    }
    if (this.#blocked.size > 0) this.#unblock();
  }

  #onWindowUpdate(id: number, start: number, end: number): void {
    if (end - start !== 4) throw new ConnError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a bad length");
    const inc = this.#u32(start) & MAX_31;
    if (id === 0) {
      if (inc === 0) throw new ConnError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
      this.#connSendWindow += inc;
      if (this.#connSendWindow > MAX_31) {
        throw new ConnError(FLOW_CONTROL_ERROR, "connection window past 2^31-1");
      }
      if (this.#blocked.size > 0) this.#unblock();
      return;
    }
    const s = this.#streams.get(id);
    if (s === undefined) return this.#checkClosed(id);
    if (inc === 0) return this.#reset(s, PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
    s.sendWindow += inc;
    if (s.sendWindow > MAX_31) {
      return this.#reset(s, FLOW_CONTROL_ERROR, "stream window past 2^31-1");
    }
    if (this.#blocked.has(s) && !this.#pump(s)) this.#blocked.delete(s);
  }

  #onRst(id: number, start: number, end: number): void {
    if (id === 0) throw new ConnError(PROTOCOL_ERROR, "RST_STREAM on stream 0");
    if (end - start !== 4) throw new ConnError(FRAME_SIZE_ERROR, "RST_STREAM of a bad length");
    const s = this.#streams.get(id);
    if (s === undefined) return this.#checkClosed(id);
    const code = this.#u32(start);
    s.finished = true;
    this.#remove(s);
    if (code === NO_ERROR && s.gotHead && s.contentLength >= 0 && s.received === s.contentLength) {
      // A reset instead of END_STREAM, but the body is whole by its length (Deno's own HTTP/2
      // server does this for a body that waited on our window): as good as an end. Without a
      // length, a reset could have cut the body short, and it stays an error.
      s.localDone = true;
      try {
        s.handler.onEnd();
      } catch { /* the stream ended either way */ }
      return this.#maybeFinish();
    }
    const err = new H2StreamError(
      `A reset the stream (code ${code})`,
      code,
      true,
      code === REFUSED_STREAM,
    );
    try {
      s.handler.onError(err);
    } catch { /* the stream is gone either way */ }
    this.#maybeFinish();
  }

  #onGoaway(id: number, start: number, end: number): void {
    if (id !== 0) throw new ConnError(PROTOCOL_ERROR, "GOAWAY on a stream");
    if (end - start < 8) throw new ConnError(FRAME_SIZE_ERROR, "GOAWAY too short");
    const last = this.#u32(start) & MAX_31;
    const code = this.#u32(start + 4);
    const first = !this.goaway;
    this.goaway = true;
    this.#goawayCode = code;
    if (first) {
      // Before the refused streams fail: whoever resends them must see this session going.
      const onGoaway = this.#owner.onGoaway;
      if (onGoaway !== null) {
        try {
          onGoaway();
        } catch { /* the owner's failure */ }
      }
    }
    for (const s of this.#byAge()) {
      if (s.id <= last || s.finished) continue;
      s.finished = true;
      this.#remove(s);
      const err = new H2StreamError(`A is going away (GOAWAY code ${code})`, code, false, true);
      try {
        s.handler.onError(err);
      } catch { /* the stream is gone either way */ }
    }
    this.#maybeFinish();
  }

  #onHeaders(flags: number, id: number, start: number, end: number): void {
    if (id === 0) throw new ConnError(PROTOCOL_ERROR, "HEADERS on stream 0");
    if (!this.#streams.has(id)) this.#checkClosed(id);
    const b = this.#rbuf;
    let s0 = start;
    let e0 = end;
    if ((flags & PADDED) !== 0) {
      if (e0 - s0 < 1) throw new ConnError(PROTOCOL_ERROR, "HEADERS too short for its padding");
      const pad = b[s0++]!;
      if (pad > e0 - s0) throw new ConnError(PROTOCOL_ERROR, "HEADERS padding past the frame");
      e0 -= pad;
    }
    if ((flags & PRIORITY_FLAG) !== 0) {
      if (e0 - s0 < 5) throw new ConnError(PROTOCOL_ERROR, "HEADERS too short for its priority");
      s0 += 5;
    }
    if ((flags & END_HEADERS) !== 0) return this.#headerBlock(id, flags, b.subarray(s0, e0));
    this.#hbId = id;
    this.#hbFlags = flags;
    this.#hbLen = 0;
    this.#hbFrames = 0;
    this.#gather(s0, e0);
  }

  #onContinuation(flags: number, id: number, start: number, end: number): void {
    if (this.#hbId === 0 || id !== this.#hbId) {
      throw new ConnError(PROTOCOL_ERROR, "CONTINUATION outside a header block");
    }
    if (++this.#hbFrames > MAX_CONTINUATIONS) {
      throw new ConnError(ENHANCE_YOUR_CALM, "too many CONTINUATION frames");
    }
    this.#gather(start, end);
    if ((flags & END_HEADERS) === 0) return;
    this.#hbId = 0;
    const block = this.#hb!.subarray(0, this.#hbLen);
    // A large block's buffer is not kept for the session's life.
    if (this.#hb!.length > 64 * 1024) this.#hb = null;
    this.#headerBlock(id, this.#hbFlags, block);
  }

  /** Appends a header block fragment, within the flood limit. */
  #gather(start: number, end: number): void {
    const n = end - start;
    const need = this.#hbLen + n;
    if (need > BLOCK_LISTS * this.#maxHeaderList) {
      throw new ConnError(ENHANCE_YOUR_CALM, "a header block too large");
    }
    let hb = this.#hb;
    if (hb === null || hb.length < need) {
      const grown = new Uint8Array(Math.max(need, (hb?.length ?? 8192) * 2));
      if (hb !== null) grown.set(hb.subarray(0, this.#hbLen));
      hb = this.#hb = grown;
    }
    hb.set(this.#rbuf.subarray(start, end), this.#hbLen);
    this.#hbLen = need;
  }

  #headerBlock(id: number, flags: number, block: Uint8Array): void {
    let fields: H2Fields | null = null;
    try {
      fields = this.#decoder.decode(block, this.#maxHeaderList);
    } catch (err) {
      if (!(err instanceof HeaderListTooLarge)) {
        throw new ConnError(COMPRESSION_ERROR, "a header block that cannot be decoded", {
          cause: err,
        });
      }
    }
    const s = this.#streams.get(id);
    // A stream already gone: the block was decoded for the table's sake only.
    if (s === undefined) return;
    if (fields === null) return this.#reset(s, PROTOCOL_ERROR, "response header list too large");
    const endStream = (flags & END_STREAM) !== 0;
    if (s.gotHead) {
      // Trailers: they end the stream; their content is not relayed.
      if (!endStream) return this.#reset(s, PROTOCOL_ERROR, "a second head without END_STREAM");
      for (let i = 0; i < fields.length; i++) {
        if (fields[i]![0].charCodeAt(0) === 0x3a) {
          return this.#reset(s, PROTOCOL_ERROR, "a pseudo-header in trailers");
        }
      }
      return this.#remoteEnd(s);
    }
    let status: number;
    try {
      status = checkHead(fields, this.#length);
    } catch (err) {
      if (err instanceof Malformed) {
        return this.#reset(s, PROTOCOL_ERROR, `malformed response: ${err.message}`);
      }
      throw err;
    }
    if (status < 200) {
      if (status === 101) return this.#reset(s, PROTOCOL_ERROR, "101 over HTTP/2");
      if (endStream) return this.#reset(s, PROTOCOL_ERROR, "an interim head with END_STREAM");
      return;
    }
    s.gotHead = true;
    const noBody = s.headOnly || status === 204 || status === 304;
    s.contentLength = noBody ? 0 : this.#length[0]!;
    if (endStream && s.contentLength > 0) {
      return this.#reset(s, PROTOCOL_ERROR, "END_STREAM before the content-length was sent");
    }
    try {
      s.handler.onHead(status, fields, endStream);
    } catch (err) {
      return this.#reset(s, CANCEL, "the stream's handler threw", err);
    }
    if (endStream && !s.finished) this.#remoteEnd(s);
  }

  #onData(flags: number, id: number, start: number, end: number): void {
    if (id === 0) throw new ConnError(PROTOCOL_ERROR, "DATA on stream 0");
    const flen = end - start;
    if (flen > this.#connRecvWindow) {
      throw new ConnError(FLOW_CONTROL_ERROR, "DATA beyond the connection window");
    }
    // The connection window is given back as data arrives, whoever it was for: the streams'
    // windows are what holds A back.
    this.#connRecvWindow -= flen;
    this.#connUnacked += flen;
    if (this.#connUnacked >= CONN_UPDATE_AT) {
      this.#windowUpdate(0, this.#connUnacked);
      this.#connRecvWindow += this.#connUnacked;
      this.#connUnacked = 0;
    }
    let s0 = start;
    let e0 = end;
    if ((flags & PADDED) !== 0) {
      if (flen < 1) throw new ConnError(PROTOCOL_ERROR, "DATA too short for its padding");
      const pad = this.#rbuf[s0++]!;
      if (pad > e0 - s0) throw new ConnError(PROTOCOL_ERROR, "DATA padding past the frame");
      e0 -= pad;
    }
    const s = this.#streams.get(id);
    if (s === undefined) return this.#checkClosed(id);
    if (flen > s.recvWindow) {
      return this.#reset(s, FLOW_CONTROL_ERROR, "DATA beyond the stream window");
    }
    s.recvWindow -= flen;
    if (!s.gotHead) return this.#reset(s, PROTOCOL_ERROR, "DATA before the response head");
    const n = e0 - s0;
    if (n > 0) {
      s.received += n;
      if (s.contentLength >= 0 && s.received > s.contentLength) {
        return this.#reset(s, PROTOCOL_ERROR, "a body longer than its content-length");
      }
      try {
        s.handler.onData(this.#rbuf.slice(s0, e0));
      } catch (err) {
        return this.#reset(s, CANCEL, "the stream's handler threw", err);
      }
      if (s.finished) return;
    }
    if ((flags & END_STREAM) !== 0) return this.#remoteEnd(s);
    s.unacked += flen;
    if (!s.paused && s.unacked >= this.#streamWindow >>> 1) this.#giveBack(s);
  }

  #giveBack(s: StreamState): void {
    this.#windowUpdate(s.id, s.unacked);
    s.recvWindow += s.unacked;
    s.unacked = 0;
  }

  /** END_STREAM from A: the response is complete (if its length agrees). */
  #remoteEnd(s: StreamState): void {
    if (s.contentLength >= 0 && s.received !== s.contentLength) {
      return this.#reset(s, PROTOCOL_ERROR, "a body shorter than its content-length");
    }
    s.finished = true;
    this.#remove(s);
    if (!s.localDone) {
      // A answered before our body was all sent (§8.1): the rest is not wanted.
      s.localDone = true;
      this.#rst(s.id, NO_ERROR);
    }
    try {
      s.handler.onEnd();
    } catch { /* the stream ended either way */ }
    this.#maybeFinish();
  }

  /** A stream error we found (or its handler threw): RST_STREAM to A, onError to the handler. */
  #reset(s: StreamState, code: number, message: string, cause?: unknown): void {
    if (s.finished) return;
    s.finished = true;
    this.#remove(s);
    this.#rst(s.id, code);
    try {
      const options = cause === undefined ? undefined : { cause };
      s.handler.onError(new H2StreamError(message, code, false, false, options));
    } catch { /* the stream is gone either way */ }
    this.#maybeFinish();
  }

  /** The open streams, oldest first: failed in that order, they are resent in that order. */
  #byAge(): StreamState[] {
    return this.#streams.toArray().sort((a, b) => a.id - b.id);
  }

  /** Forgets a finished stream: no more frames from it or for it. */
  #remove(s: StreamState): void {
    this.#streams.delete(s.id);
    this.#blocked.delete(s);
    s.queue = NO_CHUNKS;
    s.qHead = 0;
    s.qBytes = 0;
    this.#wakeDrain(s);
  }
}

/** Throws RangeError for a window or header-list limit HTTP/2 cannot express, or a bad stream id. */
function checkOptions(opts: H2SessionOptions): void {
  const window = opts.streamWindow ?? DEFAULT_STREAM_WINDOW;
  const maxList = opts.maxHeaderList ?? DEFAULT_MAX_HEADER_LIST;
  if (!Number.isInteger(window) || window < 1 || window > MAX_31) {
    throw new RangeError(`stream window ${window}`);
  }
  if (!Number.isInteger(maxList) || maxList < 1 || maxList > MAX_31) {
    throw new RangeError(`header list limit ${maxList}`);
  }
  const first = opts.firstStreamId ?? 1;
  if (!Number.isInteger(first) || first < 1 || first > MAX_31 || first % 2 !== 1) {
    throw new RangeError(`first stream id ${first}`);
  }
}

/** One HTTP/2 connection to A, carrying many concurrent requests. */
export class H2Session {
  readonly #c: SessionCore;
  /** Resolves when A's first SETTINGS frame was applied, or when the session closed first. Never rejects. */
  readonly settled: Promise<void>;
  /** Called once when A sends GOAWAY (first one). */
  onGoaway: (() => void) | null = null;
  /** Called once when the socket is closed, for any reason (err null for an orderly close). */
  onClose: ((err: Error | null) => void) | null = null;

  private constructor(conn: Deno.Conn, opts: H2SessionOptions) {
    const window = opts.streamWindow ?? DEFAULT_STREAM_WINDOW;
    const maxList = opts.maxHeaderList ?? DEFAULT_MAX_HEADER_LIST;
    this.#c = new SessionCore(conn, this, window, maxList, opts.firstStreamId ?? 1);
    this.settled = this.#c.settled;
  }

  /**
   * TCP (no Nagle), then TLS offering only "h2" by ALPN; throws H2ConnectError unless A chose it.
   * Then queues the preface, our SETTINGS and the connection window's raise, and starts reading.
   * Resolves when TLS is up, without waiting for A's SETTINGS (see `settled`). No timeout of its
   * own: the caller races it.
   */
  static async connect(opts: H2SessionOptions): Promise<H2Session> {
    checkOptions(opts);
    let tcp: Deno.TcpConn;
    try {
      tcp = await Deno.connect({ hostname: opts.hostname, port: opts.port });
    } catch (err) {
      throw new H2ConnectError(`connect failed: ${(err as Error).name}`, { cause: err });
    }
    // Nagle would hold a small frame back until the previous write's ACK arrives.
    tcp.setNoDelay(true);
    let tls: Deno.TlsConn;
    try {
      // rustls sends no SNI for an IP address by itself.
      tls = await Deno.startTls(tcp, {
        hostname: opts.hostname,
        alpnProtocols: ["h2"],
        ...(opts.caCerts ? { caCerts: opts.caCerts } : {}),
      });
    } catch (err) {
      try {
        tcp.close();
      } catch { /* already closed by startTls */ }
      throw new H2ConnectError(`TLS failed: ${(err as Error).name}`, { cause: err });
    }
    let alpn: string | null;
    try {
      alpn = (await tls.handshake()).alpnProtocol;
    } catch (err) {
      try {
        tls.close();
      } catch { /* closed */ }
      throw new H2ConnectError(`TLS handshake failed: ${(err as Error).name}`, { cause: err });
    }
    if (alpn !== "h2") {
      try {
        tls.close();
      } catch { /* closed */ }
      throw new H2ConnectError(`A did not choose h2 by ALPN (${alpn ?? "none"})`);
    }
    return H2Session.over(tls, opts);
  }

  /**
   * A session on a connection that is already up and chose "h2" by ALPN (the relay's first
   * connection to an upstream asks A which protocol it speaks; that connection becomes the first
   * session instead of being closed). Nothing may have been read from or written to it yet.
   */
  static over(conn: Deno.Conn, opts: H2SessionOptions): H2Session {
    checkOptions(opts);
    const session = new H2Session(conn, opts);
    session.#c.start();
    return session;
  }

  /** A's SETTINGS_MAX_CONCURRENT_STREAMS, or null while A did not send one. */
  get remoteMaxStreams(): number | null {
    return this.#c.remoteMaxStreams;
  }

  /** A sent GOAWAY. */
  get goaway(): boolean {
    return this.#c.goaway;
  }

  /** No new streams: closing, closed, GOAWAY seen, stream ids used up, or failed. */
  get closed(): boolean {
    return this.#c.closed;
  }

  /** Streams open now. */
  get activeStreams(): number {
    return this.#c.activeStreams;
  }

  /** Socket reads that brought bytes from A so far: unchanged over a PING's round trip, A is gone. */
  get reads(): number {
    return this.#c.reads;
  }

  /**
   * Opens a stream: `fields` are the request's pseudo-headers (:method, :scheme, :authority,
   * :path, in that order) then regular fields, names lower-case. endStream: no body. Throws
   * H2StreamError (refused) when `closed`. The HEADERS frame (and CONTINUATION frames past A's
   * MAX_FRAME_SIZE) go out with everything else queued in the same microtask turn, in one write.
   */
  request(fields: H2Fields, endStream: boolean, handler: H2Handler): H2Stream {
    return this.#c.request(fields, endStream, handler);
  }

  /**
   * Sends a PING: keeps an idle session from looking idle to A, and its ACK, like any bytes from A,
   * moves {@link reads}.
   */
  ping(): void {
    this.#c.ping();
  }

  /**
   * Graceful: no new streams; sends GOAWAY (NO_ERROR) and closes the socket once no stream is
   * open (at once if none).
   */
  close(): void {
    this.#c.close();
  }

  /** Closes the socket now; every open stream gets onError (refused only if never sent). */
  destroy(err?: Error): void {
    this.#c.destroy(err ?? null);
  }
}
