/**
 * @module server
 * An HTTP/1.1 server on `Deno.listen`, for the relay's plain-HTTP listener.
 *
 * Why not `Deno.serve` (2.9.6, measured): it has no header-read timeout, no idle keep-alive
 * timeout and no accept hook, so slowloris sockets (one header byte a second) are held open for as
 * long as the client likes, a connection cap can only count requests in flight (not sockets), and
 * an accept failure (EMFILE) ends its serve loop. Here every socket is counted and capped at
 * accept, has a deadline while a request head arrives and while it idles between requests, and
 * accept failures are retried with back-off. TLS stays on `Deno.serve`.
 *
 * Owns: accepting, the socket cap and the per-address socket cap; request-head reading, parsing
 * and validation; request-body framing (content-length, chunked) with back-pressure and
 * `Expect: 100-continue`; response framing (content-length, chunked, close-delimited for
 * HTTP/1.0); keep-alive and pipelining; the client-gone signal; the send deadline; upgrades (101);
 * graceful shutdown.
 * Must never: read a request body ahead of its consumer; hold back a response chunk that has
 * arrived (SSE is written chunk by chunk); end a broken response body cleanly (the terminating
 * chunk is withheld, so the client sees a truncated body); abort `req.signal` once a response was
 * written in full; let an accept or socket error become an unhandled rejection; use a timer per
 * request (four shared {@link Watchdog} sweeps cover every deadline).
 *
 * Like `Deno.serve`: `req.url` is `http://<Host><target>` with the target exactly as sent (no
 * dot-segment or escape normalisation; the relay's own path checks depend on that); GET/HEAD have
 * `req.body === null`, other methods an empty body when none was framed; `req.signal` aborts only
 * when the client leaves before the response was written in full (`--unstable-no-legacy-abort`).
 * Differences a client can see: abusive sockets are closed (408, 431, idle close, 503 at the cap,
 * 429 over the per-address cap, no progress on a response write);
 * methods are normalised by `new Request` (`get` → `GET`) and `CONNECT`/`TRACE`/`TRACK` get 400;
 * a Host header that would change the URL's structure (`a/b`, `u@x`) gets 400; an absolute-form
 * target contributes only its path and query (the Host header names the host); header bytes above
 * 0x7f arrive as Latin-1 characters; a body that a stream delivers whole at once is sent with
 * `content-length` instead of chunked.
 *
 * A client that stops taking response bytes (a write makes no progress for `sendTimeoutMs`, like
 * nginx's `send_timeout`) is closed and its exchange aborted, so that it cannot hold the response
 * body's source (a stream from Server A) open. Progress is a write, or part of one, completing as
 * the kernel reports it (like nginx): Linux wakes a blocked writer once about a third of the send
 * buffer has drained, so a reader must take about that much per `sendTimeoutMs` (measured on
 * loopback: ~2.5 MB/s of reading resumed blocked writes every 0.6–0.7 s). A response that waits
 * for its source (SSE between events) has no write pending, so it is not watched.
 *
 * Not covered here: a client that sends its body slowly (the relay's body timeout watches that);
 * sockets after a 101 (their new owner reads and writes them).
 *
 * One Deno internal is used, checked once at start with a public-API fallback: the Request's lazy
 * signal is driven through its inner `onCancel` hook ({@link cancelHook}). When `new Request`
 * normalised the URL, `req.url` is set to the raw one with `Object.defineProperty` (clones made
 * with `new Request(req)` see the normalised URL).
 */

import { overloaded, PerIpCap, tooManyConnections } from "./conn_limit.ts";
import {
  badRequest,
  hasToken,
  parseLength,
  parseRequestHead,
  type RequestHead,
  requestUrl,
} from "./request_head.ts";
import { errorBody, errorResponse, RelayError, relayError, toRelayError } from "../errors.ts";
import { concat, decodeLatin1, encodeLatin1 } from "../http/mod.ts";
import { ChunkedDecoder } from "../http/mod.ts";
import { Watchdog, type Watched } from "../http/mod.ts";

/** What the handler learns about the exchange besides the request. */
export interface ServeInfo {
  /** The client's address. */
  remoteAddr: Deno.NetAddr;
  /**
   * Resolves once the exchange is over: the response was written in full, or it could not be (the
   * client left, the body stream failed). Unlike `Deno.serve`'s it never rejects; `req.signal`
   * tells the two apart (it aborts only when the client left before the end of the response).
   */
  completed: Promise<void>;
  /** Switches this connection to another protocol: see {@link upgradeResponse}. */
  upgrade: typeof upgradeResponse;
}

/** Options of {@link serveHttp1}. */
export interface Http1ServerOptions {
  hostname: string;
  port: number;
  /**
   * The whole request head must arrive within this many ms of the first byte of that request (of
   * accept, for the first request). On expiry: `408` and close if some bytes arrived, else just
   * close. Default 20,000.
   */
  headerTimeoutMs?: number;
  /** A kept-alive connection with no request in progress is closed after this many ms. Default 75,000. */
  idleTimeoutMs?: number;
  /**
   * Most open client sockets (upgraded ones included). A socket accepted above it gets `503` with
   * `connection: close` once its request head is in (at most 1 s), and is closed; its request is
   * never handled. 0 = unlimited.
   */
  maxConnections?: number;
  /**
   * Most open sockets from one client address (the socket's peer address). One more gets
   * `429 too_many_connections` with `connection: close`, like a socket over `maxConnections`.
   * 0 = unlimited.
   */
  maxConnectionsPerIp?: number;
  /**
   * A response write that makes no progress for this many ms (the client takes none of the bytes
   * offered) closes the socket and aborts the exchange: `req.signal` aborts and the response body
   * is cancelled. Default 60,000; 0 = no deadline.
   */
  sendTimeoutMs?: number;
  /** Largest request head (request line and headers) in bytes; over it `431`. Default 64 KiB. */
  maxHeadBytes?: number;
  onListen?: (addr: Deno.NetAddr) => void;
  /** Turns a handler failure into a response. Default: the relay's JSON `500 internal_error`. */
  onError?: (err: unknown) => Response | Promise<Response>;
  /**
   * Called when accepting fails (e.g. EMFILE "Too many open files"). The server keeps running: it
   * waits (100 ms, doubling up to 2 s) and accepts again.
   */
  onAcceptError?: (err: unknown) => void;
  /** Told each time the server closes a client socket on its own, and why (for metrics). */
  onDrop?: (reason: DropReason) => void;
}

/** Why the server closed a client socket itself. */
export type DropReason =
  | "header_timeout"
  | "idle_timeout"
  | "over_capacity"
  | "over_ip_capacity"
  | "send_timeout"
  | "bad_request"
  | "headers_too_large";

/** A running server. */
export interface Http1Server {
  readonly addr: Deno.NetAddr;
  /** Resolves after {@link shutdown} once every connection is closed. */
  readonly finished: Promise<void>;
  /** Open client sockets, upgraded ones included. */
  readonly connections: number;
  /**
   * Stops accepting, closes idle connections at once, lets requests in flight finish (each
   * connection closes after its current response) and resolves when all connections are gone.
   * Upgraded sockets count until their owner closes them.
   */
  shutdown(): Promise<void>;
}

/**
 * The symbol under which Deno keeps a `Headers` object's entry list, found once and checked: the
 * list keeps repeated fields (two `www-authenticate` lines) apart, as `Deno.serve` sends them,
 * where iteration would join them with ", ". Null when a Deno upgrade changes it: then iteration.
 */
const HEADER_LIST: symbol | null = (() => {
  try {
    const h = new Headers([["x-a", "1"]]);
    h.append("x-a", "2");
    const sym = Object.getOwnPropertySymbols(h).find((s) => s.description === "header list");
    if (sym === undefined) return null;
    const list = (h as unknown as Record<symbol, unknown>)[sym];
    const ok = Array.isArray(list) && list.length === 2 && list[1]?.[0] === "x-a" &&
      list[1]?.[1] === "2";
    return ok ? sym : null;
  } catch {
    return null;
  }
})();

/** Calls `fn` for each header field as it will go on the wire (lower-case name). */
function eachHeader(headers: Headers, fn: (value: string, name: string) => void): void {
  const list = HEADER_LIST === null
    ? undefined
    : (headers as unknown as Record<symbol, unknown>)[HEADER_LIST];
  if (Array.isArray(list)) {
    for (const entry of list as [string, string][]) fn(entry[1], entry[0].toLowerCase());
    return;
  }
  headers.forEach(fn);
}

/**
 * Request bodies up to this size that arrived in the same reads as their head are handed over as
 * bytes, with no stream. Not the relay's `READ_WHOLE_MAX` (lib/relay.ts), which decides when the
 * pipeline waits for a whole body before forwarding it.
 */
const INLINE_BODY_MAX = 64 * 1024;

const utf8 = new TextEncoder();

/**
 * Where Deno keeps a Response's inner state and a lazily made static body, found once and checked
 * with known responses: a body given as bytes or a string can then be written directly instead of
 * through a stream made just to be read once. Null when a Deno upgrade changes them: streams then.
 */
const RESPONSE_INTERNALS: { inner: symbol; lazy: symbol | undefined } | null = (() => {
  try {
    const probe = new Response(new Uint8Array([7, 8]));
    const syms = Object.getOwnPropertySymbols(probe);
    const inner = syms.find((x) => x.description === "response");
    const lazy = syms.find((x) => x.description === "lazy static body");
    if (inner === undefined) return null;
    const internals = { inner, lazy };
    const bytes = staticBodyWith(probe, internals);
    if (bytes === null || bytes.byteLength !== 2 || bytes[1] !== 8) return null;
    const text = staticBodyWith(new Response("hé"), internals);
    if (text !== null && (text.byteLength !== 3 || text[2] !== 0xa9)) return null;
    const streamed = new Response(new ReadableStream());
    if (staticBodyWith(streamed, internals) !== null) return null;
    return internals;
  } catch {
    return null;
  }
})();

function staticBodyWith(
  res: Response,
  internals: { inner: symbol; lazy: symbol | undefined },
): Uint8Array | null {
  const r = res as unknown as Record<symbol, unknown>;
  const inner = r[internals.inner] as { body?: unknown } | undefined;
  const body = inner?.body as
    | { streamOrStatic?: unknown; source?: unknown }
    | null
    | undefined;
  if (body === null || body === undefined) {
    const lazy = internals.lazy === undefined ? undefined : r[internals.lazy];
    if (typeof lazy === "string") return utf8.encode(lazy);
    if (lazy instanceof Uint8Array) return lazy;
    return null;
  }
  const sos = body.streamOrStatic as { body?: unknown; consumed?: unknown } | undefined;
  if (
    sos === undefined || sos === null || sos instanceof ReadableStream || sos.consumed !== false
  ) {
    return null;
  }
  return sos.body instanceof Uint8Array ? sos.body : null;
}

/** The response's body when it was given as bytes or text (not yet read), else null. */
function staticBody(res: Response): Uint8Array | null {
  if (RESPONSE_INTERNALS === null) return null;
  // `bodyUsed` covers a body someone already read through the public API.
  if (res.bodyUsed) return null;
  return staticBodyWith(res, RESPONSE_INTERNALS);
}

/** A request handler. */
export type Http1Handler = (req: Request, info: ServeInfo) => Response | Promise<Response>;

interface Upgrade {
  onSocket: (conn: Deno.Conn, buffered: Uint8Array) => void;
  headers: Headers;
}

const upgrades = new WeakMap<Response, Upgrade>();

/**
 * A response that switches protocols (e.g. WebSocket). When the handler returns it,
 * {@link serveHttp1} writes `HTTP/1.1 101 Switching Protocols` with `headers`, stops all HTTP
 * processing on the socket and calls `onSocket` with the socket and the bytes that already
 * arrived after the request head. The socket stays counted as a connection until
 * `conn.close()` is called: call it when done, even after using `conn.readable`/`writable`.
 *
 * Use it only for requests that carry an `Upgrade` header (for others a read is already pending
 * on the socket and the server answers 500 instead). Served by anything else (e.g. `Deno.serve`),
 * the placeholder is a 500 JSON error.
 */
export function upgradeResponse(
  onSocket: (conn: Deno.Conn, buffered: Uint8Array) => void,
  headers: HeadersInit,
): Response {
  const res = errorResponse(
    relayError("internal_error", { reason: "upgrade_unsupported" }),
  );
  upgrades.set(res, { onSocket, headers: new Headers(headers) });
  return res;
}

/** Starts serving on `hostname:port`; throws like `Deno.listen` (e.g. `AddrInUse`). */
export function serveHttp1(options: Http1ServerOptions, handler: Http1Handler): Http1Server {
  return new Server(options, handler);
}

const DEFAULT_HEADER_TIMEOUT_MS = 20_000;
const DEFAULT_IDLE_TIMEOUT_MS = 75_000;
const DEFAULT_SEND_TIMEOUT_MS = 60_000;
const DEFAULT_MAX_HEAD_BYTES = 64 * 1024;
/** An unread request body up to this size is read and dropped after the response, to keep the connection. */
const MAX_DRAIN_BYTES = 1024 * 1024;
/** Per-connection read buffer; heads grow it up to `maxHeadBytes`, bodies use {@link BODY_BUF}. */
const SMALL_BUF = 4096;
const BODY_BUF = 64 * 1024;
/** Most bytes of a response gathered into one write when several chunks are ready at once. */
const MAX_COALESCE = 128 * 1024;
/**
 * Size of the pooled write buffers. A fresh Uint8Array costs ~0.8 µs in Deno (off-heap, zeroed);
 * small writes (heads, JSON answers, SSE events) go through a buffer taken from a pool instead.
 */
const POOL_BUF = 16 * 1024;
/** Pooled write buffers kept for reuse (each is in use only while its write is in flight). */
const POOL_KEEP = 64;
/** After an error answer: how long and how much of the client's data is read before closing. */
const LINGER_MS = 1000;
const LINGER_BYTES = 64 * 1024;
/**
 * Most sockets kept lingering at once. Each holds a descriptor for up to {@link LINGER_MS}; past
 * this a refused socket is closed at once, without its error answer, so that a client reconnecting
 * in a loop cannot hold more descriptors than the cap allows.
 */
const LINGER_MAX = 256;
/** Microtask turns to wait for a body chunk that a stream produces without real I/O. */
const SETTLE_TURNS = 6;

const encoder = new TextEncoder();
const asciiDecoder = new TextDecoder();
const EMPTY = new Uint8Array(0);
const CONTINUE = encoder.encode("HTTP/1.1 100 Continue\r\n\r\n");
/** Where lingering sockets' bytes go; the contents are never looked at. */
const DISCARD = new Uint8Array(16 * 1024);
const FALSE = Promise.resolve(false);
const noop = (): void => {};

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.byteLength) off += await conn.write(off === 0 ? bytes : bytes.subarray(off));
}

class Server implements Http1Server {
  readonly addr: Deno.NetAddr;
  readonly finished: Promise<void>;
  readonly handler: Http1Handler;
  readonly maxConnections: number;
  readonly maxHeadBytes: number;
  /** Host for `req.url` when the request has no Host header. */
  readonly fallbackHost: string;
  readonly headerDog: Watchdog;
  readonly idleDog: Watchdog;
  /** Watches response writes in progress; null when there is no send deadline. */
  readonly sendDog: Watchdog | null;
  readonly perIp: PerIpCap;
  readonly lingerDog: Watchdog = new Watchdog(LINGER_MS);
  readonly conns: Set<Connection> = new Set();
  /** See {@link cancelHook}. */
  readonly cancelHook: symbol | null = cancelHook();
  readonly #lingering = new Set<Deno.Conn>();
  readonly #pool: Uint8Array[] = [];
  readonly #listener: Deno.TcpListener;
  readonly #onError: ((err: unknown) => Response | Promise<Response>) | undefined;
  readonly #onAcceptError: ((err: unknown) => void) | undefined;
  readonly #onDrop: ((reason: DropReason) => void) | undefined;
  closing = false;
  #acceptDone = false;
  #resolveFinished!: () => void;
  #backoff: { timer: ReturnType<typeof setTimeout>; wake: () => void } | null = null;

  constructor(options: Http1ServerOptions, handler: Http1Handler) {
    this.handler = handler;
    this.maxConnections = options.maxConnections ?? 0;
    this.maxHeadBytes = options.maxHeadBytes ?? DEFAULT_MAX_HEAD_BYTES;
    this.headerDog = new Watchdog(options.headerTimeoutMs ?? DEFAULT_HEADER_TIMEOUT_MS);
    this.idleDog = new Watchdog(options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS);
    const sendMs = options.sendTimeoutMs ?? DEFAULT_SEND_TIMEOUT_MS;
    this.sendDog = sendMs > 0 ? new Watchdog(sendMs) : null;
    this.perIp = new PerIpCap(options.maxConnectionsPerIp ?? 0);
    this.#onError = options.onError;
    this.#onAcceptError = options.onAcceptError;
    this.#onDrop = options.onDrop;
    this.finished = new Promise((r) => (this.#resolveFinished = r));
    this.#listener = Deno.listen({ hostname: options.hostname, port: options.port });
    this.addr = this.#listener.addr;
    const h = this.addr.hostname;
    this.fallbackHost = `${h.includes(":") ? `[${h}]` : h}:${this.addr.port}`;
    options.onListen?.(this.addr);
    void this.#acceptLoop();
  }

  get connections(): number {
    return this.conns.size;
  }

  /** Reports a socket the server closed on its own; a failing reporter is ignored. */
  dropped(reason: DropReason): void {
    try {
      this.#onDrop?.(reason);
    } catch { /* metrics must not break serving */ }
  }

  async #acceptLoop(): Promise<void> {
    let delay = 100;
    while (!this.closing) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch (err) {
        if (this.closing) break;
        try {
          this.#onAcceptError?.(err);
        } catch { /* a failing reporter must not stop the server */ }
        await new Promise<void>((wake) => {
          this.#backoff = { timer: setTimeout(wake, delay), wake };
        });
        this.#backoff = null;
        delay = Math.min(delay * 2, 2000);
        continue;
      }
      delay = 100;
      if (this.maxConnections > 0 && this.conns.size >= this.maxConnections) {
        this.dropped("over_capacity");
        this.linger(conn, errorBytes(overloaded()), true);
        continue;
      }
      if (this.perIp.max > 0 && !this.perIp.take(conn.remoteAddr.hostname)) {
        this.dropped("over_ip_capacity");
        this.linger(conn, errorBytes(tooManyConnections(this.perIp.max)), true);
        continue;
      }
      try {
        conn.setNoDelay(true);
      } catch { /* the client already left: the first read says so */ }
      const c = new Connection(this, conn);
      this.conns.add(c);
      void c.run();
    }
    this.#acceptDone = true;
    this.#checkFinished();
  }

  /** The response for a handler failure; never throws. */
  async errorResponse(err: unknown): Promise<Response> {
    if (this.#onError !== undefined) {
      try {
        const res = await this.#onError(err);
        if (res instanceof Response) return res;
      } catch { /* fall through to the default */ }
    }
    return errorResponse(toRelayError(err));
  }

  /**
   * Sends `bytes` (an error answer), then reads and drops what the client sends for a short while
   * before closing: closing with unread data would reset the connection, and the client could lose
   * the answer. Bounded by {@link LINGER_MS} and {@link LINGER_BYTES}.
   *
   * With `afterHead` (a socket refused at accept), the answer waits until the client's request
   * head has arrived (or the same bounds run out): an HTTP client that gets a response before it
   * has sent its request treats it as a broken connection (hyper: "received unexpected message
   * from connection") instead of reading the 503.
   */
  linger(conn: Deno.Conn, bytes: Uint8Array, afterHead = false): void {
    if (this.#lingering.size >= LINGER_MAX) {
      closeQuietly(conn);
      return;
    }
    this.#lingering.add(conn);
    const item: Watched = { lastTick: 0, expire: () => closeQuietly(conn) };
    this.lingerDog.watch(item);
    (async () => {
      try {
        let total = 0;
        if (afterHead) {
          // A blank line ends the head: count line feeds with nothing but CR between them.
          let lf = 0;
          scan: while (total < LINGER_BYTES) {
            const n = await conn.read(DISCARD);
            if (n === null) break;
            total += n;
            for (let i = 0; i < n; i++) {
              const b = DISCARD[i];
              if (b === 10) {
                if (++lf === 2) break scan;
              } else if (b !== 13) {
                lf = 0;
              }
            }
          }
        }
        await writeAll(conn, bytes);
        await conn.closeWrite();
        while (total < LINGER_BYTES) {
          const n = await conn.read(DISCARD);
          if (n === null) break;
          total += n;
        }
      } catch { /* gone, or closed by the linger deadline */ }
      this.lingerDog.unwatch(item);
      closeQuietly(conn);
      this.#lingering.delete(conn);
      this.#checkFinished();
    })();
  }

  /** A write buffer of {@link POOL_BUF} bytes; give it back once its write has completed. */
  takeBuffer(): Uint8Array {
    return this.#pool.pop() ?? new Uint8Array(POOL_BUF);
  }

  giveBuffer(buf: Uint8Array): void {
    if (this.#pool.length < POOL_KEEP) this.#pool.push(buf);
  }

  remove(c: Connection): void {
    // Exactly once per connection, whichever path closes it.
    if (this.conns.delete(c) && this.perIp.max > 0) this.perIp.release(c.ip);
    if (this.closing) this.#checkFinished();
  }

  #checkFinished(): void {
    if (!this.closing || !this.#acceptDone || this.conns.size > 0 || this.#lingering.size > 0) {
      return;
    }
    this.headerDog.close();
    this.idleDog.close();
    this.sendDog?.close();
    this.lingerDog.close();
    this.#resolveFinished();
  }

  shutdown(): Promise<void> {
    if (!this.closing) {
      this.closing = true;
      try {
        this.#listener.close();
      } catch { /* already closed */ }
      if (this.#backoff !== null) {
        clearTimeout(this.#backoff.timer);
        this.#backoff.wake();
      }
      for (const conn of this.#lingering) closeQuietly(conn);
      for (const c of [...this.conns]) c.shutdown();
      this.#checkFinished();
    }
    return this.finished;
  }
}

const enum State {
  /** Waiting for (the rest of) a request head. */
  Head,
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

/** One exchange's state; also the `info` the handler gets. */
class Exchange implements ServeInfo {
  readonly remoteAddr: Deno.NetAddr;
  readonly upgrade = upgradeResponse;
  reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  body: RequestBody | null = null;
  done = false;
  aborted = false;
  #completed: Promise<void> | null = null;
  #resolve: (() => void) | null = null;
  #onAbort: (() => void)[] | null = null;
  #ac: AbortController | null = null;

  constructor(remoteAddr: Deno.NetAddr) {
    this.remoteAddr = remoteAddr;
  }

  get completed(): Promise<void> {
    // Made only when asked for: most handlers never look.
    if (this.#completed === null) {
      this.#completed = this.done
        ? Promise.resolve()
        : new Promise<void>((r) => (this.#resolve = r));
    }
    return this.#completed;
  }

  /** The Request's lazy signal registers here (see {@link cancelHook}). */
  readonly onCancel = (abort: () => void): void => {
    if (this.aborted) abort();
    else (this.#onAbort ??= []).push(abort);
  };

  /** A signal for `new Request`, when the lazy one cannot be used. */
  signal(): AbortSignal {
    return (this.#ac ??= new AbortController()).signal;
  }

  finish(): void {
    if (this.done) return;
    this.done = true;
    this.#resolve?.();
  }

  /** The client left before the response was written in full. */
  abort(): void {
    if (this.done) return;
    this.aborted = true;
    this.#ac?.abort();
    for (const abort of this.#onAbort ?? []) {
      try {
        abort();
      } catch { /* an abort listener's failure is not the server's */ }
    }
    this.reader?.cancel().catch(noop);
    this.body?.fail(new Error("the client closed the connection"));
    this.finish();
  }
}

type InnerRequest = { onCancel?: (abort: () => void) => void };
let innerRequestKey: symbol | null | undefined;

/**
 * The key of a Request's inner state when its signal can be driven through it, else null.
 *
 * Passing `signal` to `new Request` costs ~3.5 µs per request (a dependent AbortSignal with weak
 * references), about a tenth of this server's whole cost per request. Deno's Request (2.9) makes
 * its signal lazily on first access and then registers it with its inner request's `onCancel`,
 * which is how `Deno.serve` aborts it; clones (`new Request(req)`, `fetch(req)`) follow it. This
 * checks once that the mechanism behaves so; if a Deno upgrade changes it, requests get an
 * AbortController's signal instead (same behaviour, slower).
 */
function cancelHook(): symbol | null {
  if (innerRequestKey !== undefined) return innerRequestKey;
  innerRequestKey = null;
  try {
    const req = new Request("http://probe.invalid/");
    const key = Object.getOwnPropertySymbols(req).find((s) => s.description === "request");
    if (key === undefined) return null;
    const inner = (req as unknown as Record<symbol, InnerRequest | undefined>)[key];
    if (typeof inner !== "object" || inner === null || "onCancel" in inner) return null;
    let abort: (() => void) | undefined;
    inner.onCancel = (f) => (abort = f);
    const signal = req.signal;
    const clone = new Request(req);
    if (signal.aborted || abort === undefined) return null;
    abort();
    if (signal.aborted && clone.signal.aborted) innerRequestKey = key;
  } catch { /* not available: use the fallback */ }
  return innerRequestKey;
}

/** A request body being read from the connection. */
class RequestBody {
  /** Bytes still to come (content-length framing). */
  remaining: number;
  /** Set for chunked framing. */
  decoder: ChunkedDecoder | null;
  readonly expect: boolean;
  continueSent = false;
  /** The response head went out: a `100 Continue` can no longer be sent. */
  headSent = false;
  /** The consumer has asked for data at least once. */
  started = false;
  done = false;
  /** The exchange is over: reads by the handler now fail, the connection reads the rest itself. */
  detached = false;
  /** Malformed framing or the client left: the connection cannot be reused. */
  broken = false;
  ctrl: ReadableStreamDefaultController<Uint8Array> | null = null;

  constructor(head: RequestHead) {
    this.remaining = head.chunked ? 0 : head.contentLength;
    this.decoder = head.chunked ? new ChunkedDecoder() : null;
    this.expect = head.expectContinue;
  }

  fail(err: Error): void {
    this.broken = true;
    const ctrl = this.ctrl;
    this.ctrl = null;
    if (ctrl === null || this.done) return;
    try {
      ctrl.error(err);
    } catch { /* cancelled by the consumer */ }
  }
}

/** A stream read that may already have completed (see {@link peek}). */
class Peek {
  ready = false;
  failed = false;
  done = false;
  value: unknown = undefined;
  error: unknown = undefined;
  readonly wait: Promise<void>;

  /** A read on `reader`; with null, an end of stream that is already known. */
  constructor(reader: ReadableStreamDefaultReader<Uint8Array> | null) {
    if (reader === null) {
      this.ready = this.done = true;
      this.wait = Promise.resolve();
      return;
    }
    this.wait = reader.read().then((r) => {
      this.ready = true;
      this.done = r.done;
      this.value = r.value;
    }, (err) => {
      this.ready = true;
      this.failed = true;
      this.error = err;
    });
  }
}

/**
 * Starts a read and lets a few microtask turns pass: a chunk (or the end) of a body that needs no
 * I/O, such as a string or an in-memory stream, is there by then. This is how a whole body is
 * recognised and sent with `content-length`, and how chunks that are ready together go out in one
 * write, without ever waiting for a chunk that is not ready.
 */
async function peek(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<Peek> {
  const p = new Peek(reader);
  for (let i = 0; i < SETTLE_TURNS && !p.ready; i++) await null;
  return p;
}

const enum Mode {
  Length,
  Chunked,
  Close,
}

/** One client socket: reads requests, runs the handler, writes responses, in order. */
class Connection implements Watched {
  lastTick = 0;
  readonly #server: Server;
  readonly #conn: Deno.TcpConn;
  readonly #remoteAddr: Deno.NetAddr;
  #state = State.Head;
  #closed = false;
  /** Set when the socket is closed by a path that writes first (408). */
  #ending = false;
  // The read buffer: bytes [#start, #end) have arrived and are not consumed yet.
  #buf = new Uint8Array(SMALL_BUF);
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
  readonly #send: Watched = { lastTick: 0, expire: () => this.#sendTimedOut() };

  constructor(server: Server, conn: Deno.TcpConn) {
    this.#server = server;
    this.#conn = conn;
    this.#remoteAddr = conn.remoteAddr;
    server.headerDog.watch(this);
  }

  /** The client's address, as counted by the per-address cap. */
  get ip(): string {
    return this.#remoteAddr.hostname;
  }

  /** Serves requests until the connection ends; never rejects. */
  async run(): Promise<void> {
    try {
      while (true) {
        const head = await this.#readHead();
        if (head === null) break;
        if (!(await this.#exchange(head))) break;
      }
    } catch {
      // Only a bug gets here: drop the connection rather than the process.
    }
    if (this.#state !== State.Upgraded && !this.#ending) this.#close();
  }

  /** Called by the header, drain and idle watchdogs. */
  expire(): void {
    if (this.#closed) return;
    if (this.#state === State.Head) this.#server.dropped("header_timeout");
    else if (this.#state === State.Idle) this.#server.dropped("idle_timeout");
    if (this.#state === State.Head && this.#end > this.#start) {
      this.#ending = true;
      this.#state = State.Closed;
      const bytes = errorBytes(
        relayError("request_header_timeout"),
      );
      writeAll(this.#conn, bytes).catch(noop).finally(() => this.#close());
      return;
    }
    this.#close();
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
    this.#closed = true;
    this.#state = State.Closed;
    this.#server.headerDog.unwatch(this);
    this.#server.idleDog.unwatch(this);
    // Lingering first: shutdown must not see a moment with neither.
    this.#server.linger(this.#conn, errorBytes(err));
    this.#server.remove(this);
  }

  // ---- reading ----

  /** Reads more bytes to #end; false at end of stream or on error. Needs room in #buf. */
  #more(): Promise<boolean> {
    if (this.#pending !== null) return this.#pending;
    // No room would read nothing forever: callers make room first, this is the safety net.
    if (this.#eof || this.#closed || this.#end >= this.#buf.byteLength) return FALSE;
    const p = this.#conn.read(this.#buf.subarray(this.#end)).then(this.#onRead, this.#onReadError);
    this.#pending = p;
    return p;
  }

  #onRead = (n: number | null): boolean => {
    this.#pending = null;
    if (n === null) {
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
    if (this.#buf.byteLength >= limit) return false;
    const next = new Uint8Array(Math.min(this.#buf.byteLength * 2, limit));
    next.set(this.#buf.subarray(0, this.#end));
    this.#buf = next;
    return true;
  }

  /** Goes back to a small buffer after a large body, unless a read is in flight. */
  #shrink(): void {
    if (this.#buf.byteLength <= SMALL_BUF || this.#pending !== null) return;
    const n = this.#end - this.#start;
    if (n > SMALL_BUF) return;
    const next = new Uint8Array(SMALL_BUF);
    next.set(this.#buf.subarray(this.#start, this.#end));
    this.#buf = next;
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

  /** Runs one request through the handler and writes its response; true to read the next one. */
  async #exchange(head: RequestHead): Promise<boolean> {
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
    const bodiless = m === "GET" || m === "HEAD" ||
      (m.length <= 4 && (m.toUpperCase() === "GET" || m.toUpperCase() === "HEAD"));
    let framed = head.chunked || head.contentLength > 0;
    // A small body that arrived with its head (a typical JSON request) is handed over as bytes:
    // no stream to build and drain, and `req.bytes()` is a copy. Nothing waits for it.
    let whole: Uint8Array<ArrayBuffer> | null = null;
    if (
      framed && !head.chunked && !head.expectContinue && head.contentLength <= INLINE_BODY_MAX &&
      this.#end - this.#start >= head.contentLength
    ) {
      whole = this.#buf.slice(this.#start, this.#start + head.contentLength);
      this.#start += head.contentLength;
      framed = false;
    }
    const ex = new Exchange(this.#remoteAddr);
    const body = framed ? new RequestBody(head) : null;
    ex.body = body;
    const init: RequestInit & { duplex?: "half" } = { headers: head.headers };
    if (m !== "GET") init.method = m;
    const hook = server.cancelHook;
    if (hook === null) init.signal = ex.signal();
    if (!bodiless) {
      // Like Deno.serve: GET/HEAD get no body; other methods an empty one when none was framed.
      if (whole !== null) init.body = whole;
      else if (body === null) init.body = EMPTY;
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
      return false;
    }
    if (hook !== null) {
      (req as unknown as Record<symbol, InnerRequest>)[hook]!.onCancel = ex.onCancel;
    }
    // `new Request` normalises the URL (dot-segments, `\`, escaping, host case). Deno.serve hands
    // the target over as sent, and the relay's own checks depend on seeing it so.
    if (req.url !== url) Object.defineProperty(req, "url", { value: url });
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
    if (this.#closed) {
      // The client left while the handler worked.
      res.body?.cancel().catch(noop);
      ex.finish();
      return false;
    }
    const upgrade = upgrades.get(res);
    if (upgrade !== undefined) {
      upgrades.delete(res);
      await this.#upgrade(upgrade, ex);
      return false;
    }
    // Decided before the head goes out, so that it can say `connection: close`.
    // A broken body (bad chunked framing) ends the connection whoever was reading it.
    let keep = head.keepAlive && !server.closing && (body === null || body.done ||
      (!body.broken && (body.started || (!(body.expect && !body.continueSent) &&
        (body.decoder !== null || body.remaining <= MAX_DRAIN_BYTES)))));
    keep = await this.#respond(res, head.http10, req.method === "HEAD", keep, ex);
    this.#watching = false;
    ex.finish();
    this.#ex = null;
    if (this.#closed) return false;
    if (body !== null && !body.done) {
      body.detached = true;
      body.fail(new Error("the response was sent before the request body was read"));
      if (!keep || !(await this.#drain(body))) return false;
    }
    if (!keep || server.closing) return false;
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
      if (this.#start === this.#end && !(await this.#write(CONTINUE))) return;
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
        if (chunk !== null) ctrl.enqueue(chunk);
        if (body.done) {
          body.ctrl = null;
          ctrl.close();
          if (this.#ex !== null && !this.#ex.done && this.#ex.body === body) this.#startWatch();
          return;
        }
        if (chunk !== null) return;
      }
      this.#bodyRoom(body);
      const ok = await this.#more();
      if (body.detached) return;
      if (!ok) {
        body.fail(new Error("the client closed the connection before the request body ended"));
        this.#gone();
        return;
      }
    }
  }

  /** Room for a body read; a bigger buffer for bulk bodies (given back after the exchange). */
  #bodyRoom(body: RequestBody): void {
    // A read in flight (the watch for a client leaving) lands at the old #end: moving or
    // replacing the buffer under it would hand out stale bytes as this body.
    if (this.#pending !== null) return;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    const big = body.decoder !== null || body.remaining > this.#buf.byteLength;
    if (big && this.#buf.byteLength < BODY_BUF && this.#start === this.#end) {
      this.#buf = new Uint8Array(BODY_BUF);
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

  /** Writes all of `bytes`; false (and the exchange aborted) if the client is gone. */
  async #write(bytes: Uint8Array): Promise<boolean> {
    const dog = this.#server.sendDog;
    const send = this.#send;
    try {
      const conn = this.#conn;
      dog?.watch(send);
      let off = await conn.write(bytes);
      while (off < bytes.byteLength) {
        // Part of it was taken: the client reads, so its deadline starts again.
        if (dog !== null) send.lastTick = dog.tick;
        off += await conn.write(bytes.subarray(off));
      }
      return true;
    } catch {
      this.#gone();
      return false;
    } finally {
      dog?.unwatch(send);
    }
  }

  /**
   * Writes gathered parts (the head and framing as strings, payload as bytes) and empties `parts`:
   * in one write through a pooled buffer when small (no allocation), a lone payload as it is,
   * else joined in writes of at most {@link MAX_COALESCE} bytes with large payloads on their own.
   */
  async #flush(parts: Part[], total: number): Promise<boolean> {
    const only = parts.length === 1 ? parts[0]! : null;
    if (only !== null && typeof only !== "string") {
      parts.length = 0;
      return await this.#write(only);
    }
    if (total <= POOL_BUF) {
      const buf = this.#server.takeBuffer();
      const n = fill(buf, parts);
      parts.length = 0;
      const ok = await this.#write(buf.subarray(0, n));
      this.#server.giveBuffer(buf);
      return ok;
    }
    if (total <= MAX_COALESCE || parts.length === 1) {
      const out = new Uint8Array(total);
      fill(out, parts);
      parts.length = 0;
      return await this.#write(out);
    }
    const all = parts.splice(0);
    let group: Part[] = [];
    let size = 0;
    for (const p of all) {
      const len = typeof p === "string" ? p.length : p.byteLength;
      if (size + len > MAX_COALESCE && group.length > 0) {
        if (!(await this.#flush(group, size))) return false;
        group = [];
        size = 0;
      }
      group.push(p);
      size += len;
    }
    return group.length === 0 || await this.#flush(group, size);
  }

  /**
   * Writes the response: the head and the first ready chunks in one write, then each chunk as it
   * comes. Returns whether the connection can carry another request.
   */
  async #respond(
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
    eachHeader(res.headers, (value, name) => {
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
        return await this.#writeHead(text, hasDate, keep, http10, ex) && keep;
      }
      text += `content-length: ${fixed.byteLength}\r\n`;
      text += headTail(hasDate, keep, http10);
      if (ex.body !== null) ex.body.headSent = true;
      const ok = await this.#flush([text, fixed], text.length + fixed.byteLength);
      return ok && keep;
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
      return await this.#writeHead(text, hasDate, keep, http10, ex) && keep;
    }
    let reader: ReadableStreamDefaultReader<Uint8Array>;
    try {
      reader = stream.getReader();
    } catch {
      // A body already read or locked: nothing was written yet, so answer 500.
      await this.#write(errorBytes(toRelayError(new TypeError("response body is unusable"))));
      this.#close();
      return false;
    }
    ex.reader = reader;
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
          // The whole body, if the stream ends right after its first chunk.
          first = pk.value;
          pk = await peek(reader);
          if (pk.ready && !pk.failed && pk.done) {
            declared = first.byteLength;
            mode = Mode.Length;
          }
        }
      }
    }
    if (this.#closed) return false;
    if (isHead) {
      reader.cancel().catch(noop);
      if (declared >= 0) text += `content-length: ${declared}\r\n`;
      return await this.#writeHead(text, hasDate, keep, http10, ex) && keep;
    }
    if (mode === Mode.Length) text += `content-length: ${declared}\r\n`;
    else if (mode === Mode.Chunked) text += "transfer-encoding: chunked\r\n";
    else keep = false;
    text += headTail(hasDate, keep, http10);
    if (ex.body !== null) ex.body.headSent = true;
    const parts: Part[] = [text];
    let total = text.length;
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
    if (first !== null && !add(first)) pk = this.#stopBody(reader);
    while (true) {
      if (!pk.ready) {
        // Nothing more is ready: what is gathered goes out now (an SSE event is never held).
        if (parts.length > 0 && !(await this.#flush(parts, total))) return false;
        total = 0;
        await pk.wait;
        if (this.#closed) return false;
      }
      if (pk.failed || (!pk.done && !(pk.value instanceof Uint8Array))) {
        // A broken body: send what came before it, then close without a clean end.
        if (!pk.failed) reader.cancel().catch(noop);
        if (parts.length > 0) await this.#flush(parts, total);
        this.#close();
        return false;
      }
      if (pk.done) break;
      if (!add(pk.value as Uint8Array)) {
        // More than the declared content-length: the rest is dropped.
        pk = this.#stopBody(reader);
        break;
      }
      if (total >= MAX_COALESCE) {
        if (!(await this.#flush(parts, total))) return false;
        total = 0;
      }
      pk = await peek(reader);
    }
    if (mode === Mode.Chunked) {
      parts.push("0\r\n\r\n");
      total += 5;
    }
    if (parts.length > 0 && !(await this.#flush(parts, total))) return false;
    // A body shorter than its content-length leaves the client waiting: closing tells it.
    return keep && (mode !== Mode.Length || sent === declared);
  }

  /** Writes a response head without a body. */
  #writeHead(
    text: string,
    hasDate: boolean,
    keep: boolean,
    http10: boolean,
    ex: Exchange,
  ): Promise<boolean> {
    if (ex.body !== null) ex.body.headSent = true;
    const head = text + headTail(hasDate, keep, http10);
    return this.#flush([head], head.length);
  }

  /** Cancels the rest of a response body; the read in flight (if any) is not waited for. */
  #stopBody(reader: ReadableStreamDefaultReader<Uint8Array>): Peek {
    reader.cancel().catch(noop);
    return new Peek(null);
  }

  async #upgrade(upgrade: Upgrade, ex: Exchange): Promise<void> {
    if (this.#pending !== null) {
      // A read is in flight (no Upgrade header on the request): bytes after the 101 would go to it.
      ex.finish();
      await this.#write(
        errorBytes(toRelayError(new Error("upgrade on a request without an Upgrade header"))),
      );
      this.#close();
      return;
    }
    let text = "HTTP/1.1 101 Switching Protocols\r\n";
    for (const [name, value] of upgrade.headers) text += `${name}: ${value}\r\n`;
    const ok = await this.#write(encodeLatin1(`${text}\r\n`));
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

// ---- response heads ----

const REASONS: Record<number, string> = {
  100: "Continue",
  101: "Switching Protocols",
  102: "Processing",
  103: "Early Hints",
  200: "OK",
  201: "Created",
  202: "Accepted",
  203: "Non-Authoritative Information",
  204: "No Content",
  205: "Reset Content",
  206: "Partial Content",
  207: "Multi-Status",
  208: "Already Reported",
  226: "IM Used",
  300: "Multiple Choices",
  301: "Moved Permanently",
  302: "Found",
  303: "See Other",
  304: "Not Modified",
  305: "Use Proxy",
  307: "Temporary Redirect",
  308: "Permanent Redirect",
  400: "Bad Request",
  401: "Unauthorized",
  402: "Payment Required",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  406: "Not Acceptable",
  407: "Proxy Authentication Required",
  408: "Request Timeout",
  409: "Conflict",
  410: "Gone",
  411: "Length Required",
  412: "Precondition Failed",
  413: "Payload Too Large",
  414: "URI Too Long",
  415: "Unsupported Media Type",
  416: "Range Not Satisfiable",
  417: "Expectation Failed",
  418: "I'm a teapot",
  421: "Misdirected Request",
  422: "Unprocessable Entity",
  423: "Locked",
  424: "Failed Dependency",
  426: "Upgrade Required",
  428: "Precondition Required",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  451: "Unavailable For Legal Reasons",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
  506: "Variant Also Negotiates",
  507: "Insufficient Storage",
  508: "Loop Detected",
  510: "Not Extended",
  511: "Network Authentication Required",
};

const statusLines11 = new Map<number, string>();
const statusLines10 = new Map<number, string>();

/** `HTTP/1.x <status> <canonical reason>\r\n` (like hyper, the Response's statusText is not used). */
function statusLine(status: number, http10: boolean): string {
  const cache = http10 ? statusLines10 : statusLines11;
  let line = cache.get(status);
  if (line === undefined) {
    line = `HTTP/1.${http10 ? 0 : 1} ${status} ${REASONS[status] ?? ""}\r\n`;
    cache.set(status, line);
  }
  return line;
}

let dateSecond = -1;
let dateText = "";

/** The `date` header value, made once per second. */
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(now).toUTCString();
  }
  return dateText;
}

/** The end of a response head: `date` unless the handler set one, connection management, CRLF. */
function headTail(hasDate: boolean, keep: boolean, http10: boolean): string {
  let t = hasDate ? "\r\n" : `date: ${httpDate()}\r\n\r\n`;
  if (!keep && !http10) t = `connection: close\r\n${t}`;
  else if (keep && http10) t = `connection: keep-alive\r\n${t}`;
  return t;
}

/** What a response write is made of: strings (head, chunk framing; one char per byte) and bytes. */
type Part = string | Uint8Array;

/**
 * Copies parts into `out`; returns the length. Strings are copied char by char: header values are
 * ByteStrings (Latin-1), which TextEncoder would turn into UTF-8.
 */
function fill(out: Uint8Array, parts: Part[]): number {
  let off = 0;
  for (const p of parts) {
    if (typeof p === "string") {
      for (let i = 0; i < p.length; i++) out[off++] = p.charCodeAt(i);
    } else {
      out.set(p, off);
      off += p.byteLength;
    }
  }
  return off;
}

/** A whole error response (JSON body, `connection: close`) as bytes. */
function errorBytes(err: RelayError): Uint8Array {
  const body = encoder.encode(errorBody(err));
  let head = statusLine(err.status, false) +
    `content-type: application/json; charset=utf-8\r\ncontent-length: ${body.byteLength}\r\n`;
  for (const [name, value] of Object.entries(err.headers ?? {})) {
    if (name.toLowerCase() !== "connection") head += `${name.toLowerCase()}: ${value}\r\n`;
  }
  head += `date: ${httpDate()}\r\nconnection: close\r\n\r\n`;
  return concat([encodeLatin1(head), body]);
}

/**
 * Which of the Deno internals the server relies on were found on this Deno version (each has a
 * public-API fallback, slower or less exact). For tests and diagnostics: a Deno upgrade that
 * changes one shows up here first.
 */
export const internalsFound: Readonly<
  { headerList: boolean; staticBody: boolean; cancelHook: boolean }
> = {
  headerList: HEADER_LIST !== null,
  staticBody: RESPONSE_INTERNALS !== null,
  cancelHook: cancelHook() !== null,
};
