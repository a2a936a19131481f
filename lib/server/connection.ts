/**
 * @module connection
 * One client socket of the own HTTP/1.1 server: reads request heads and bodies, runs the handler,
 * has `response_writer.ts` write each response, in order, and keeps the socket's deadlines.
 *
 * States: Head (a request head is arriving; header deadline) -> Active (with the handler, or its
 * response being written; the send deadline watches each write) -> Idle (kept alive; idle
 * deadline) or Drain (reading and dropping a body the handler left unread) -> Head ...; Upgraded
 * (after a 101, owned by the upgrade) and Closed end it.
 *
 * Must never: read a request body ahead of its consumer; abort `req.signal` once a response was
 * written in full; move or replace the read buffer while a read is in flight (its bytes land at
 * the old end).
 */

import { badRequest, parseRequestHead, type RequestHead, requestUrl } from "./request_head.ts";
import { Exchange, RequestBody } from "./exchange.ts";
import { POOL_BUF, respond, type ResponseSink } from "./response_writer.ts";
import type { BodyPool } from "./body_pool.ts";
import type { WriteSlab, WriteSlabs } from "../http/mod.ts";
import { errorBytes } from "./response_head.ts";
import { takeUpgrade, type Upgrade } from "./upgrade.ts";
import type { DropReason, Http1Handler } from "./types.ts";
import { RelayError, relayError, toRelayError } from "../errors.ts";
import {
  appendAll,
  concat,
  decodeLatin1,
  encodeLatin1,
  keepSentUrl,
  lazyRequestFields,
  readConn,
  streamOf,
  withBodyRelease,
  withRequestFields,
  withWholeBody,
} from "../http/mod.ts";
import type { Slotted, Watchdog, Watched } from "../http/mod.ts";
import { CONN_SLOT, IDLE_SLOT, WATCH_SLOT } from "../http/mod.ts";
import { attachCancel, cancelHookAvailable } from "../http/mod.ts";

/** What a connection needs from its server. */
export interface ConnectionHost {
  readonly handler: Http1Handler;
  readonly maxHeadBytes: number;
  /** Host for `req.url` when the request has no Host header. */
  readonly fallbackHost: string;
  readonly headerDog: Watchdog;
  readonly idleDog: Watchdog<typeof IDLE_SLOT>;
  /** Watches the reading of a small body before its request is handled. */
  readonly bodyDog: Watchdog;
  /** Watches response writes in progress; null when there is no send deadline. */
  readonly sendDog: Watchdog | null;
  readonly closing: boolean;
  /** The response for a handler failure; never throws. */
  errorResponse(err: unknown): Promise<Response>;
  /** Reports a socket the server closed on its own. */
  dropped(reason: DropReason): void;
  /** Sends an error answer and closes after a short linger. */
  linger(conn: Deno.Conn, bytes: Uint8Array): void;
  /** Closes after the last response once the client has closed too (bounded). */
  closeAfterResponse(conn: Deno.Conn, pending: Promise<boolean> | null): void;
  /** Pooled read buffers of {@link POOL_BUF} bytes. */
  takeBuffer(): Uint8Array;
  giveBuffer(buf: Uint8Array): void;
  /** Buffers for request bodies read before their handler runs, reused once given back. */
  readonly bodies: BodyPool;
  /** Memory for small response writes. */
  readonly slabs: WriteSlabs;
  /** The connection is gone (exactly once). */
  remove(c: Connection): void;
}

/**
 * Request bodies of announced length up to this size are read whole before the handler runs, into
 * a buffer of their exact size, and handed over as bytes: no stream, no read buffer in between, no
 * chunk copies to join again (a Claude Code request is tens to hundreds of KB). The pipeline waits
 * for a body this small before forwarding it anyway (its `READ_WHOLE_MAX`, lib/pipeline/steps.ts,
 * is the same size); a larger one streams to A as it arrives.
 */
const INLINE_BODY_MAX = 256 * 1024;
/**
 * A streamed body of announced length (over {@link INLINE_BODY_MAX}) is read into buffers of its
 * own, never reused, and handed on as views of them. Read into the connection's buffer, each chunk
 * had to be copied out, because the upstream client keeps the chunks for a resend (the copy was
 * 9.7 % of busy time with 512 KB bodies). The first is {@link BODY_BUF} bytes and each next one
 * twice the last, up to this size: a client that announces a large body and sends little makes the
 * relay hold no more than twice what it sent.
 */
const ARENA_MAX = 1024 * 1024;
/** An unread request body up to this size is read and dropped after the response, to keep the connection. */
const MAX_DRAIN_BYTES = 1024 * 1024;
/**
 * The connection's own read buffer. It is what a read waiting for the client holds: for the whole
 * of a long response (noticing the client leave) and between requests. Most request heads of
 * small clients fit; a longer head moves to a pooled {@link POOL_BUF} buffer, given back once
 * the bytes in it are consumed. Bodies use {@link BODY_BUF}.
 */
const SMALL_BUF = 1024;
const BODY_BUF = 64 * 1024;
/**
 * A whole body over this size is handed to the handler as it is ({@link withWholeBody}); a smaller
 * one is given to the Request, whose copy of it costs less than a stream for it (measured: with
 * 1 KB bodies the stream cost ~2 µs per request more; with 128 KB ones the copy cost ~5 µs more).
 */
const HANDOFF_MIN = 32 * 1024;

const encoder = new TextEncoder();
const asciiDecoder = new TextDecoder();
const EMPTY = new Uint8Array(0);
const CONTINUE = encoder.encode("HTTP/1.1 100 Continue\r\n\r\n");
const FALSE = Promise.resolve(false);
const noop = (): void => {};

/** `m` names `method` as `new Request` normalises it (GET and HEAD in any case). */
function isMethod(m: string, method: "GET" | "HEAD"): boolean {
  return m === method || (m.length === method.length && m.toUpperCase() === method);
}

export function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}

export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.byteLength) off += await conn.write(off === 0 ? bytes : bytes.subarray(off));
}

const enum State {
  /** Waiting for (the rest of) a request head. */
  Head,
  /** Reading a small request body whole, before the handler runs. */
  Body,
  /** Kept alive between requests, nothing of the next one received. */
  Idle,
  /** A request is with the handler or its response is being written. */
  Active,
  /** Reading and dropping a request body the handler left unread. */
  Drain,
  /** Switched protocols: no longer HTTP, owned by the upgrade's `onSocket`. */
  Upgraded,
  Closed,
}

export class Connection
  implements Watched, Watched<typeof IDLE_SLOT>, Slotted<typeof CONN_SLOT>, ResponseSink {
  // Declared, so that joining the watchdogs and the server's set changes no hidden class.
  [WATCH_SLOT] = -1;
  [IDLE_SLOT] = -1;
  [CONN_SLOT] = -1;
  lastTick = 0;
  readonly #server: ConnectionHost;
  readonly #conn: Deno.Conn<Deno.NetAddr>;
  readonly #remoteAddr: Deno.NetAddr;
  #state = State.Head;
  #closed = false;
  /** Set when the socket is closed by a path that writes first (408). */
  #ending = false;
  // The read buffer: bytes [#start, #end) have arrived and are not consumed yet.
  #buf = new Uint8Array(SMALL_BUF);
  /** The connection's own small buffer (kept while #buf is a larger one). */
  readonly #small = this.#buf;
  /** #buf came from the server's buffer pool. */
  #pooled = false;
  #start = 0;
  #end = 0;
  /** The read in flight; its bytes land at #end. Never replace #buf while it is set. */
  #pending: Promise<boolean> | null = null;
  #eof = false;
  // Head scanning, relative to #start so that compaction does not disturb it.
  #scanOff = 0;
  #lineOff = 0;
  #nonAscii = false;
  /** Empty lines seen before the current request line. */
  #blankLead = 0;
  /** Start of the blank line that ended the head found by #scanHead. */
  #blankAt = 0;
  #ex: Exchange | null = null;
  /** A read is kept pending to notice the client leaving while the handler works. */
  #watching = false;
  /** The current request asks to switch protocols: no read may be pending when it does. */
  #noWatch = false;
  /** Watched by the server's send watchdog while a write is in flight. */
  readonly #send: Watched = {
    lastTick: 0,
    expire: () => this.#sendTimedOut(),
    [WATCH_SLOT]: -1,
  };

  constructor(server: ConnectionHost, conn: Deno.Conn<Deno.NetAddr>) {
    this.#server = server;
    this.#conn = conn;
    this.#remoteAddr = conn.remoteAddr;
    server.headerDog.watch(this);
  }

  /** The client's address, as counted by the per-address cap. */
  get ip(): string {
    return this.#remoteAddr.hostname;
  }

  /**
   * Serves requests until the connection ends; never rejects. A chain of callbacks rather than an
   * async loop: nothing stays suspended for the life of a long response but the body's writer.
   */
  run(): Promise<void> {
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#ended = resolve;
    this.#serveNext();
    return promise;
  }

  #ended: () => void = noop;

  #serveNext(): void {
    this.#serveOne().then(this.#served, this.#failed);
  }

  /** null: the exchange goes on, and its response calls this again when written. */
  readonly #served = (more: boolean | null): void => {
    if (more === null) return;
    if (more) this.#serveNext();
    else this.#endRun();
  };

  // Only a bug gets here: drop the connection rather than the process. The exchange is settled
  // too: the relay makes a whole answer's record once `info.completed` settles.
  readonly #failed = (): void => {
    this.#ex?.abort();
    this.#endRun();
  };

  #endRun(): void {
    if (this.#state !== State.Upgraded && !this.#ending) this.#close();
    this.#ended();
  }

  /**
   * One request: false to end, or null once its response is being written (which reports to
   * #served itself). Ends early so that a long response keeps no frame or promise of it.
   */
  async #serveOne(): Promise<boolean | null> {
    const head = await this.#readHead();
    return head === null ? false : this.#exchange(head);
  }

  /** Called by the header, body, drain and idle watchdogs. */
  expire(): void {
    if (this.#closed) return;
    if (this.#state === State.Body) {
      this.#server.dropped("body_timeout");
      this.#answerAndClose(
        relayError("body_timeout", { idleTimeoutMs: this.#server.bodyDog.limitMs }),
      );
      return;
    }
    if (this.#state === State.Head) this.#server.dropped("header_timeout");
    else if (this.#state === State.Idle) this.#server.dropped("idle_timeout");
    if (this.#state === State.Head && this.#end > this.#start) {
      this.#answerAndClose(relayError("request_header_timeout"));
      return;
    }
    this.#close();
  }

  /** Writes an error answer (its head says `connection: close`), then closes. */
  #answerAndClose(err: RelayError): void {
    this.#ending = true;
    this.#state = State.Closed;
    writeAll(this.#conn, errorBytes(err)).catch(noop).finally(() => this.#close());
  }

  shutdown(): void {
    switch (this.#state) {
      case State.Idle:
      case State.Drain:
        this.#close();
        break;
      case State.Head:
        // A request that has started arriving is served (with `connection: close`).
        if (this.#end === this.#start) this.#close();
        break;
      default:
        // Active: closes after its response. Upgraded: its owner closes it.
        break;
    }
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#state = State.Closed;
    this.#watching = false;
    this.#server.headerDog.unwatch(this);
    this.#server.idleDog.unwatch(this);
    closeQuietly(this.#conn);
    this.#server.remove(this);
  }

  /**
   * A write made no progress for the send timeout: the client takes no bytes. Closing the socket
   * fails the pending write; the exchange is aborted as if the client had left, which cancels the
   * response body and with it the stream from A (its connection is closed, not pooled).
   */
  #sendTimedOut(): void {
    if (this.#closed) return;
    this.#server.dropped("send_timeout");
    this.#gone();
  }

  /** The client is gone (EOF, reset, failed write): abort the exchange and close. */
  #gone(): void {
    this.#ex?.abort();
    this.#close();
  }

  /** Answers with an error and hands the socket to the server's lingering close. */
  #refuse(err: RelayError): void {
    this.#server.dropped(err.status === 431 ? "headers_too_large" : "bad_request");
    this.#handOver((conn) => this.#server.linger(conn, errorBytes(err)));
  }

  /** Ends this connection and gives its socket to one of the server's lingering closes. */
  #handOver(lingering: (conn: Deno.Conn) => void): void {
    const server = this.#server;
    this.#closed = true;
    this.#state = State.Closed;
    this.#watching = false;
    server.headerDog.unwatch(this);
    server.idleDog.unwatch(this);
    // Lingering first: shutdown must not see a moment with neither.
    lingering(this.#conn);
    server.remove(this);
  }

  // ---- reading ----

  /** Reads more bytes to #end; false at end of stream or on error. Needs room in #buf. */
  #more(): Promise<boolean> {
    if (this.#pending !== null) return this.#pending;
    // No room would read nothing forever: callers make room first, this is the safety net.
    if (this.#eof || this.#closed || this.#end >= this.#buf.byteLength) return FALSE;
    const p = readConn(this.#conn, this.#buf.subarray(this.#end)).then(
      this.#onRead,
      this.#onReadError,
    );
    this.#pending = p;
    return p;
  }

  #onRead = (n: number | null): boolean => {
    this.#pending = null;
    if (!n) {
      this.#eof = true;
      return false;
    }
    this.#end += n;
    return true;
  };

  #onReadError = (): boolean => {
    this.#pending = null;
    this.#eof = true;
    return false;
  };

  /** Makes room after #end (compacting, or growing #buf up to `limit`); false when full. */
  #room(limit: number): boolean {
    // The read in flight fills the buffer it was given; #more() waits for it.
    if (this.#pending !== null) return true;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    if (this.#end < this.#buf.byteLength) return true;
    if (this.#start > 0) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
      return true;
    }
    const size = this.#buf.byteLength;
    if (size >= limit) return false;
    const pool = size < POOL_BUF && limit >= POOL_BUF;
    const next = pool
      ? this.#server.takeBuffer() as Uint8Array<ArrayBuffer>
      : new Uint8Array(Math.min(size * 2, limit));
    next.set(this.#buf.subarray(0, this.#end));
    this.#replace(next, pool);
    return true;
  }

  /** Puts `next` in place of #buf (no read may be in flight), a pooled one going back. */
  #replace(next: Uint8Array<ArrayBuffer>, pooled: boolean): void {
    if (this.#pooled) this.#server.giveBuffer(this.#buf);
    this.#buf = next;
    this.#pooled = pooled;
  }

  /** Goes back to the small buffer once what is left fits, unless a read is in flight. */
  #shrink(): void {
    if (this.#buf === this.#small || this.#pending !== null) return;
    const n = this.#end - this.#start;
    if (n > SMALL_BUF) return;
    this.#small.set(this.#buf.subarray(this.#start, this.#end));
    this.#replace(this.#small, false);
    this.#start = 0;
    this.#end = n;
  }

  /**
   * Scans the bytes not scanned yet for the blank line that ends the head; returns the index just
   * past it, -1 when it has not arrived yet, or -2 when the bytes cannot be a request (a control
   * byte in the request line, e.g. a TLS ClientHello on the plain port, or more than one empty line
   * before it): those are refused at once instead of waiting for the header timeout. One empty
   * line before the request line is skipped (RFC 9112 §2.2); a bare LF ends a line like CRLF does
   * (as hyper accepts).
   */
  #scanHead(): number {
    const buf = this.#buf;
    const end = this.#end;
    let i = this.#start + this.#scanOff;
    let line = this.#start + this.#lineOff;
    let nonAscii = this.#nonAscii;
    for (; i < end; i++) {
      const b = buf[i]!;
      if (b === 10) {
        const len = i - line;
        if (len === 0 || (len === 1 && buf[i - 1] === 13)) {
          if (line === this.#start) {
            if (++this.#blankLead > 1) return -2;
            this.#start = line = i + 1;
            continue;
          }
          this.#blankLead = 0;
          this.#scanOff = this.#lineOff = 0;
          this.#nonAscii = nonAscii;
          this.#blankAt = line;
          return i + 1;
        }
        line = i + 1;
      } else if (b > 127) {
        nonAscii = true;
      } else if (line === this.#start && ((b < 32 && b !== 13 && b !== 9) || b === 127)) {
        return -2;
      }
    }
    this.#scanOff = i - this.#start;
    this.#lineOff = line - this.#start;
    this.#nonAscii = nonAscii;
    return -1;
  }

  /** Reads the next request head; null when the connection should end (it was answered or closed). */
  async #readHead(): Promise<RequestHead | null> {
    const server = this.#server;
    while (true) {
      if (this.#closed || this.#ending) return null;
      const headEnd = this.#scanHead();
      if (headEnd === -2) {
        this.#refuse(badRequest("request_line"));
        return null;
      }
      if (headEnd >= 0 && headEnd - this.#start <= server.maxHeadBytes) {
        server.headerDog.unwatch(this);
        server.idleDog.unwatch(this);
        const bytes = this.#buf.subarray(this.#start, this.#blankAt);
        const nonAscii = this.#nonAscii;
        this.#nonAscii = false;
        this.#start = headEnd;
        try {
          return parseRequestHead(nonAscii ? decodeLatin1(bytes) : asciiDecoder.decode(bytes));
        } catch (err) {
          this.#refuse(err instanceof RelayError ? err : badRequest("head"));
          return null;
        }
      }
      if (headEnd >= 0 || this.#end - this.#start > server.maxHeadBytes) {
        this.#refuse(
          relayError("headers_too_large", { reason: "raw", maxBytes: server.maxHeadBytes }),
        );
        return null;
      }
      if (this.#state === State.Idle && this.#end > this.#start) {
        // The next request has started: from now on its head has a deadline.
        server.idleDog.unwatch(this);
        server.headerDog.watch(this);
        this.#state = State.Head;
      }
      if (this.#pending === null) this.#room(server.maxHeadBytes + 1);
      if (!(await this.#more())) {
        if (this.#ending) return null;
        this.#close();
        return null;
      }
    }
  }

  // ---- one exchange ----

  /**
   * Reads a body of `n` bytes, the part already here first, straight into a buffer of that size;
   * null when the client left or went silent for the body timeout (answered with `408` by
   * {@link expire}). A body over {@link BODY_BUF} bytes is read into a buffer of that size first,
   * and one of its own size taken once that is full: announcing a large body and sending nothing
   * holds no more memory than streaming one does. The buffers come from the server's
   * {@link BodyPool}; see {@link #handle} for how they go back.
   */
  async #readBody(n: number): Promise<Uint8Array<ArrayBuffer> | null> {
    const server = this.#server;
    const bodies = server.bodies;
    const staged = n > BODY_BUF;
    let out = bodies.take(staged ? BODY_BUF : n);
    let got = 0;
    let whole = false;
    const dog = server.bodyDog;
    this.#state = State.Body;
    dog.watch(this);
    try {
      while (true) {
        const take = Math.min(this.#end - this.#start, n - got, out.byteLength - got);
        if (take > 0) {
          out.set(this.#buf.subarray(this.#start, this.#start + take), got);
          this.#start += take;
          got += take;
        }
        if (got === n) break;
        if (got === out.byteLength) {
          const all = bodies.take(n);
          all.set(out);
          bodies.give(out);
          out = all;
          continue;
        }
        let ok: boolean;
        if (this.#pending !== null) {
          // The previous response's watch for a client leaving still has a read in flight into
          // #buf: the body's next bytes land there.
          ok = await this.#pending;
        } else {
          this.#start = this.#end = 0;
          let r: number | null;
          try {
            r = await readConn(this.#conn, out.subarray(got));
          } catch {
            r = null;
          }
          ok = r !== null && r > 0;
          if (ok) got += r!;
        }
        if (this.#closed || this.#ending) return null;
        if (!ok) {
          this.#close();
          return null;
        }
        this.lastTick = dog.tick;
      }
      whole = true;
    } finally {
      dog.unwatch(this);
      // A body given up on: nothing reads its buffer (a read into it has ended).
      if (!whole) bodies.give(out);
    }
    this.#state = State.Active;
    return out;
  }

  /** Runs one request through the handler and starts writing its response (then null). */
  async #exchange(head: RequestHead): Promise<boolean | null> {
    const server = this.#server;
    this.#state = State.Active;
    let url: string;
    try {
      url = requestUrl(head, server.fallbackHost);
    } catch (err) {
      this.#refuse(err instanceof RelayError ? err : badRequest("target"));
      return false;
    }
    const m = head.method;
    const isHead = isMethod(m, "HEAD");
    let framed = head.chunked || head.contentLength > 0;
    // A small body (a typical JSON request) is handed over as bytes: no stream to build and drain.
    // Not waited for on GET and HEAD, which the pipeline refuses at once for having a body.
    let whole: Uint8Array<ArrayBuffer> | null = null;
    if (
      framed && !head.chunked && !head.expectContinue && head.contentLength <= INLINE_BODY_MAX
    ) {
      const n = head.contentLength;
      if (this.#end - this.#start >= n) {
        whole = this.#buf.slice(this.#start, this.#start + n);
        this.#start += n;
      } else if (!isHead && !isMethod(m, "GET")) {
        whole = await this.#readBody(n);
        if (whole === null) return false;
      }
      if (whole !== null) framed = false;
    }
    const ex = new Exchange(this.#remoteAddr);
    const body = framed ? new RequestBody(head) : null;
    ex.body = body;
    const res = await this.#handle(head, url, whole, body, ex);
    if (res === null) return false;
    if (this.#closed) {
      // The client left while the handler worked.
      res.body?.cancel().catch(noop);
      ex.finish();
      return false;
    }
    const upgrade = takeUpgrade(res);
    if (upgrade !== undefined) {
      await this.#upgrade(upgrade, ex);
      return false;
    }
    // Decided before the head goes out, so that it can say `connection: close`.
    // A broken body (bad chunked framing) ends the connection whoever was reading it.
    const keep = head.keepAlive && !server.closing && (body === null || body.done ||
      (!body.broken && (body.started || (!(body.expect && !body.continueSent) &&
        (body.decoder !== null || body.remaining <= MAX_DRAIN_BYTES)))));
    const sent = respond(this, res, head.http10, isHead, keep, ex);
    // This frame ends here: a long stream keeps neither the request head nor the Response.
    sent.then(this.#afterResponse).then(this.#served, this.#failed);
    return null;
  }

  /** The response was written (or the client left); true to read the next request. */
  readonly #afterResponse = (keep: boolean): boolean | Promise<boolean> => {
    const ex = this.#ex!;
    const body = ex.body;
    this.#watching = false;
    ex.finish();
    this.#ex = null;
    if (this.#closed) return false;
    if (body !== null && !body.done) {
      body.detached = true;
      body.fail(new Error("the response was sent before the request body was read"));
      if (!keep) return this.#lastResponseSent(true);
      return this.#drain(body).then((ok) =>
        (ok && this.#between()) || this.#lastResponseSent(!body.done)
      );
    }
    return (keep && this.#between()) || this.#lastResponseSent(false);
  };

  /**
   * The connection ends after a response written in full. When the client may still be sending
   * (`unread`: a request body the handler left; or bytes of another request already here), a
   * lingering close, so that those bytes cannot turn into a reset that loses the response; else,
   * as nginx decides it, a plain close (measured: a lingering close for every `Connection: close`
   * request cost 2-9 % more CPU per request than closing with the watch read pending).
   */
  #lastResponseSent(unread: boolean): false {
    if (this.#closed || this.#ending) return false;
    if (this.#eof || (!unread && this.#start === this.#end)) {
      this.#close();
      return false;
    }
    const pending = this.#pending;
    this.#handOver((conn) => this.#server.closeAfterResponse(conn, pending));
    return false;
  }

  /** Readies the connection for the next request; false when it should end instead. */
  #between(): boolean {
    const server = this.#server;
    if (server.closing) return false;
    // Between requests: the idle deadline if nothing of the next request is here yet.
    if (this.#start === this.#end) {
      this.#shrink();
      this.#state = State.Idle;
      server.idleDog.watch(this);
    } else {
      this.#state = State.Head;
      server.headerDog.watch(this);
    }
    return true;
  }

  /**
   * Makes the Request and runs the handler; null when the request cannot be represented (refused).
   * Apart from #exchange so that nothing of the Request is kept while a long response streams.
   */
  async #handle(
    head: RequestHead,
    url: string,
    whole: Uint8Array<ArrayBuffer> | null,
    body: RequestBody | null,
    ex: Exchange,
  ): Promise<Response | null> {
    const server = this.#server;
    const m = head.method;
    const bodiless = isMethod(m, "GET") || isMethod(m, "HEAD");
    const init: RequestInit & { duplex?: "half" } = {};
    const handoff = whole !== null && !bodiless && whole.byteLength > HANDOFF_MIN;
    if (m !== "GET") init.method = m;
    if (!cancelHookAvailable) init.signal = ex.signal();
    // Only this or the handler reads a whole body's buffer: copied into the Request, it can be
    // used again at once; handed over, the handler gives it back once nothing reads it.
    let copied = false;
    if (!bodiless) {
      // Like Deno.serve: GET/HEAD get no body; other methods an empty one when none was framed.
      if (whole !== null) {
        if (handoff) {
          // Given as bytes, the Request would copy them; the handler takes them by the handoff.
          init.body = streamOf(whole);
          init.duplex = "half";
        } else {
          init.body = whole;
          copied = true;
        }
      } else if (body === null) init.body = EMPTY;
      else {
        init.body = this.#bodyStream(body);
        init.duplex = "half";
      }
    }
    let req: Request;
    try {
      req = new Request(url, init);
    } catch {
      // Forbidden methods (CONNECT, TRACE, TRACK) or a host the URL parser refuses.
      this.#refuse(badRequest("unrepresentable"));
      return null;
    } finally {
      if (copied) server.bodies.give(whole!);
    }
    // The parser let through only lines `Headers` accepts (token names; Latin-1 values without
    // NUL, CR or LF), so they can wait until something reads `req.headers`: the forwarding path
    // reads the lines instead.
    if (!lazyRequestFields(req, head.headers)) {
      try {
        appendAll(req.headers, head.headers);
      } catch {
        this.#refuse(badRequest("unrepresentable"));
        return null;
      }
      withRequestFields(req, head.headers);
    }
    if (handoff) withWholeBody(req, whole!, () => server.bodies.give(whole!));
    else if (body !== null && body.decoder === null) {
      withBodyRelease(req, () => this.#giveArenas(body));
    }
    if (cancelHookAvailable) attachCancel(req, ex.onCancel);
    // `new Request` normalises the URL (dot-segments, `\`, escaping, host case). Deno.serve hands
    // the target over as sent, and the relay's own checks depend on seeing it so.
    if (req.url !== url) keepSentUrl(req, url);
    this.#ex = ex;
    this.#noWatch = head.upgrade;
    if (body === null) this.#startWatch();

    let res: Response;
    try {
      res = await server.handler(req, ex);
      if (!(res instanceof Response)) throw new TypeError("the handler did not return a Response");
    } catch (err) {
      res = await server.errorResponse(err);
    }
    return res;
  }

  #startWatch(): void {
    if (this.#watching || this.#closed || this.#noWatch) return;
    this.#watching = true;
    this.#shrink();
    this.#watchNext();
  }

  #watchNext(): void {
    if (!this.#watching || this.#pending !== null || this.#eof) return;
    // Pipelined bytes fill the buffer: stop reading (and watching) until this response is done.
    if (!this.#room(Math.max(this.#server.maxHeadBytes + 1, SMALL_BUF))) return;
    this.#more().then(this.#onWatch);
  }

  #onWatch = (ok: boolean): void => {
    if (!this.#watching) return;
    if (!ok) this.#gone();
    else this.#watchNext();
  };

  #bodyStream(body: RequestBody): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>({
      start: (ctrl) => {
        body.ctrl = ctrl;
      },
      pull: (ctrl) => this.#pull(body, ctrl),
      cancel: () => {
        body.ctrl = null;
      },
    }, { highWaterMark: 0 });
  }

  /** Delivers the next piece of the request body: one socket read at most, never ahead. */
  async #pull(body: RequestBody, ctrl: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    if (body.detached || body.broken || this.#closed) {
      body.fail(new Error("the request body is no longer available"));
      return;
    }
    body.started = true;
    if (body.expect && !body.continueSent && !body.headSent) {
      body.continueSent = true;
      if (this.#start === this.#end && !(await this.write(CONTINUE))) return;
    }
    while (true) {
      if (this.#start < this.#end) {
        let chunk: Uint8Array | null;
        try {
          chunk = this.#takeBody(body, true);
        } catch {
          // A RelayError, so that the handler reading the body answers 400 rather than 499.
          body.fail(badRequest("chunked_body"));
          return;
        }
        if (body.ctrl === null) return; // cancelled meanwhile
        if (this.#deliver(body, ctrl, chunk)) return;
      }
      // A read in flight (the watch for a client leaving) lands in #buf: take it from there.
      const own = body.decoder === null && this.#pending === null;
      if (!own) this.#bodyRoom(body);
      const ok = await (own ? this.#readArena(body) : this.#more());
      if (body.detached) return;
      if (!ok) {
        body.fail(new Error("the client closed the connection before the request body ended"));
        this.#gone();
        return;
      }
      if (own) {
        const chunk = body.fresh;
        body.fresh = null;
        if (body.ctrl === null) return; // cancelled meanwhile
        if (this.#deliver(body, ctrl, chunk)) return;
      }
    }
  }

  /** Hands a body chunk on (null: none) and closes the stream at the end; true when done pulling. */
  #deliver(
    body: RequestBody,
    ctrl: ReadableStreamDefaultController<Uint8Array>,
    chunk: Uint8Array | null,
  ): boolean {
    if (chunk !== null) ctrl.enqueue(chunk);
    if (body.done) {
      body.ctrl = null;
      ctrl.close();
      if (this.#ex !== null && !this.#ex.done && this.#ex.body === body) this.#startWatch();
      return true;
    }
    return chunk !== null;
  }

  /**
   * One read of a body of announced length into its own buffer ({@link ARENA_MAX}); the bytes go
   * to `body.fresh`. Registered as the connection's read in flight, so that a drain waits for it.
   */
  #readArena(body: RequestBody): Promise<boolean> {
    let arena = body.arena;
    if (arena === null || arena.byteLength === 0) {
      const size = arena === null ? BODY_BUF : Math.min(arena.buffer.byteLength * 2, ARENA_MAX);
      // Never past the body's end: the next request's bytes belong in #buf. From the pool: the
      // handler gives them back once the body was sent (#giveArenas).
      arena = this.#server.bodies.take(Math.min(size, body.remaining));
      (body.arenas ??= []).push(arena);
    }
    const into = arena;
    const p = readConn(this.#conn, into).then((n): boolean => {
      this.#pending = null;
      if (!n) {
        this.#eof = true;
        return false;
      }
      body.remaining -= n;
      body.fresh = into.subarray(0, n);
      body.arena = into.subarray(n);
      if (body.remaining === 0) {
        body.done = true;
        // The exchange outlives its body (a long answer streams): it keeps no buffer of it.
        body.arena = null;
      }
      return true;
    }, this.#onReadError);
    this.#pending = p;
    return p;
  }

  /**
   * The release the handler gets for a streamed body: its buffers go back to the pool. Only for a
   * body read to its end (the reader's contract is to call it only then; this checks it too).
   */
  #giveArenas(body: RequestBody): void {
    const arenas = body.arenas;
    if (arenas === null || !body.done) return;
    body.arenas = null;
    const bodies = this.#server.bodies;
    for (const a of arenas) bodies.give(a);
  }

  /** Room for a body read; a bigger buffer for bulk bodies (given back after the exchange). */
  #bodyRoom(body: RequestBody): void {
    // A read in flight (the watch for a client leaving) lands at the old #end: moving or
    // replacing the buffer under it would hand out stale bytes as this body.
    if (this.#pending !== null) return;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    const big = body.decoder !== null || body.remaining > this.#buf.byteLength;
    if (big && this.#buf.byteLength < BODY_BUF && this.#start === this.#end) {
      this.#replace(new Uint8Array(BODY_BUF), false);
      return;
    }
    this.#room(BODY_BUF);
  }

  /**
   * Takes body bytes from the buffer: the payload (copied out when `keep`, so that the buffer can be
   * reused) or null when the bytes held only framing. Sets `body.done` at the end. Throws on bad
   * chunked framing.
   */
  #takeBody(body: RequestBody, keep: boolean): Uint8Array | null {
    const decoder = body.decoder;
    if (decoder === null) {
      const take = Math.min(this.#end - this.#start, body.remaining);
      const from = this.#start;
      this.#start += take;
      body.remaining -= take;
      if (body.remaining === 0) body.done = true;
      return keep && take > 0 ? this.#buf.slice(from, from + take) : null;
    }
    const pieces = decoder.push(this.#buf.subarray(this.#start, this.#end));
    if (decoder.done) {
      body.done = true;
      body.decoder = null;
      this.#start = this.#end - (decoder.rest?.byteLength ?? 0);
    } else {
      this.#start = this.#end;
    }
    if (!keep || pieces.length === 0) return null;
    return pieces.length === 1 ? pieces[0]!.slice() : concat(pieces);
  }

  /** Reads and drops what is left of a request body; true if it ended within the limits. */
  async #drain(body: RequestBody): Promise<boolean> {
    if (body.expect && !body.continueSent) return false;
    if (body.decoder === null && body.remaining > MAX_DRAIN_BYTES) return false;
    this.#state = State.Drain;
    this.#server.headerDog.watch(this);
    let budget = MAX_DRAIN_BYTES;
    try {
      while (!body.done) {
        if (this.#start < this.#end) {
          const before = this.#end - this.#start;
          this.#takeBody(body, false);
          budget -= before - (this.#end - this.#start);
          if (budget < 0) return false;
          continue;
        }
        this.#bodyRoom(body);
        if (!(await this.#more())) return false;
      }
    } catch {
      return false; // malformed chunked framing
    } finally {
      this.#server.headerDog.unwatch(this);
    }
    return !this.#closed;
  }

  // ---- writing ----

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    this.#close();
  }

  reserve(n: number): WriteSlab {
    return this.#server.slabs.reserve(n);
  }

  /**
   * Writes all of `bytes`; false (and the exchange aborted) if the client is gone. Not an async
   * function: a write the socket takes whole (nearly all of them) costs the op's promise and one
   * reaction, where an async frame per write was most of the garbage an SSE event made.
   */
  write(bytes: Uint8Array, slab?: WriteSlab): Promise<boolean> {
    this.#server.sendDog?.watch(this.#send);
    let written: Promise<number>;
    try {
      written = this.#conn.write(bytes);
    } catch {
      return Promise.resolve(this.#writeFailed());
    }
    // A failed write (rare) does not release its slab region: that slab is never used again and
    // is left to the GC once full.
    return written.then(
      (n) => n >= bytes.byteLength ? this.#wrote(slab) : this.#writeRest(bytes, n, slab),
      this.#writeFailed,
    );
  }

  /** The rest of a write the socket took only part of: the client reads slowly. */
  async #writeRest(bytes: Uint8Array, off: number, slab?: WriteSlab): Promise<boolean> {
    const dog = this.#server.sendDog;
    try {
      while (off < bytes.byteLength) {
        // Part of it was taken: the client reads, so its deadline starts again.
        if (dog !== null) this.#send.lastTick = dog.tick;
        off += await this.#conn.write(bytes.subarray(off));
      }
    } catch {
      return this.#writeFailed();
    }
    return this.#wrote(slab);
  }

  #wrote(slab: WriteSlab | undefined): boolean {
    this.#server.sendDog?.unwatch(this.#send);
    // Only now is the socket done with the bytes: the region may be filled again.
    if (slab !== undefined) this.#server.slabs.release(slab);
    return true;
  }

  readonly #writeFailed = (): boolean => {
    this.#server.sendDog?.unwatch(this.#send);
    this.#gone();
    return false;
  };

  async #upgrade(upgrade: Upgrade, ex: Exchange): Promise<void> {
    if (this.#pending !== null) {
      // A read is in flight (no Upgrade header on the request): bytes after the 101 would go to it.
      ex.finish();
      await this.write(
        errorBytes(toRelayError(new Error("upgrade on a request without an Upgrade header"))),
      );
      this.#close();
      return;
    }
    let text = "HTTP/1.1 101 Switching Protocols\r\n";
    for (const [name, value] of upgrade.headers) text += `${name}: ${value}\r\n`;
    const ok = await this.write(encodeLatin1(`${text}\r\n`));
    ex.finish();
    if (!ok || this.#closed) return;
    this.#state = State.Upgraded;
    this.#watching = false;
    const buffered = this.#buf.slice(this.#start, this.#end);
    this.#start = this.#end = 0;
    const conn = this.#conn;
    const close = conn.close.bind(conn);
    // The socket counts as a connection until its new owner closes it.
    conn.close = () => {
      try {
        close();
      } finally {
        if (!this.#closed) {
          this.#closed = true;
          this.#state = State.Closed;
          this.#server.remove(this);
        }
      }
    };
    try {
      upgrade.onSocket(conn, buffered);
    } catch {
      closeQuietly(conn);
    }
  }
}
