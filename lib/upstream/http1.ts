/**
 * @module http1
 * A small HTTP/1.1 client with a keep-alive pool, written for relaying.
 *
 * Why not `fetch`: it decodes gzip/br/zstd bodies while keeping the original `content-encoding` and
 * `content-length` (a relay then sends corrupt responses), it leaves Nagle on for its sockets, and
 * it cannot tell whether a failed request ever reached the server, which a safe retry on a stale
 * pooled connection needs. Here the body bytes pass through exactly as the upstream sent them.
 *
 * Owns: connecting (TCP, TLS), pooling, request serialisation, response parsing and framing
 * (content-length, chunked, close-delimited), and the "was any response byte received" fact.
 * Must never: decode content encodings, follow redirects, reorder or coalesce body bytes beyond
 * what one socket read delivered, or reuse a connection whose exchange did not end cleanly.
 */

import { concat, decodeLatin1, putLatin1, readConn, WriteSlabs } from "../http/mod.ts";
import { errName } from "../errors.ts";
import { ChunkedDecoder, FramingError } from "../http/mod.ts";
import type { Endpoint } from "../http/mod.ts";

export type { Endpoint };
import {
  type BodyReaderLike,
  type HeaderList,
  isEventStream,
  trimOws,
  trimOwsFrom,
} from "../http/mod.ts";
import { TOKEN } from "../http/mod.ts";
import { IdleSweeper } from "./sweeper.ts";
import { WATCH_SLOT, type Watchdog, type Watched } from "../http/mod.ts";

/** Largest first body chunk copied into the request head's write (see `#write`). */
const JOIN_MAX = 16 * 1024;
/**
 * Largest request head with its first body chunk written from slab memory (as the own server's
 * small writes are): a fresh buffer for the head and another to join it with the body cost
 * ~2 µs of a ~40 µs request.
 */
const SLAB_WRITE_MAX = 16 * 1024;
/** Slabs of the pools that are given none: one set for the process, since all run on one thread. */
const SHARED_SLABS = new WriteSlabs();

/** Why an exchange failed; the proxy maps these to client-facing errors. */
export type UpstreamErrorKind =
  | "connect" // could not open a connection: safe to try another upstream
  | "connect_timeout"
  | "timeout" // silence longer than the limit, before or after the response head
  | "aborted" // the caller aborted (client went away)
  | "protocol" // the upstream sent something that is not HTTP/1.1
  | "reset" // the connection broke after the request may have been seen
  | "body" // reading the client's request body failed
  | "request"; // the request cannot be written as HTTP (nothing was sent)

/** A failure talking to an upstream; `message` is internal (never sent to clients). */
export class UpstreamError extends Error {
  readonly kind: UpstreamErrorKind;
  constructor(kind: UpstreamErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "UpstreamError";
    this.kind = kind;
  }
}

/** What a connector is asked for besides the endpoint. */
export interface ConnectOptions {
  caCerts?: string[];
  /** ALPN protocols to offer over TLS, most wanted first. Default: HTTP/1.1 only. */
  alpnProtocols?: string[];
}

/** Opens a raw connection; injectable for tests. */
export type Connector = (endpoint: Endpoint, options: ConnectOptions) => Promise<Deno.Conn>;

/**
 * A client for one upstream origin, whatever protocol it speaks: the HTTP/1.1 {@link Pool} through
 * {@link exchange}, or HTTP/2 (`http2.ts`). `pools.ts` decides which one an origin gets.
 */
export interface AltTransport {
  readonly protocol: string;
  /** Takes over the connection that chose this protocol by ALPN, as its first. */
  adopt(conn: Deno.Conn): void;
  exchange(req: ExchangeRequest, options: ExchangeOptions): Promise<UpstreamResponse>;
  stats(): TransportStats;
  closeIdle(): void;
  close(): void;
}

/** A pool's counters, for `/debug/info` and `/metrics`. */
export interface TransportStats {
  idle: number;
  active: number;
  created: number;
  reused: number;
  /** Client requests that found no ready connection and waited for a new one. */
  coldStarts: number;
  spares: SpareStats;
}

/** Connections kept ready ahead of demand (`UPSTREAM_SPARE_CONNECTIONS`). */
export interface SpareStats {
  /** How many are wanted: idle connections (HTTP/1.1) or free stream slots (HTTP/2); 0 = off. */
  target: number;
  /**
   * Requests that could start now without a new connection: idle connections (HTTP/1.1), or free
   * stream slots on open sessions (HTTP/2).
   */
  ready: number;
  /** Being opened in the background right now. */
  opening: number;
  /** Opened in the background so far. */
  opened: number;
  /**
   * Background opens that failed (or were closed by the upstream before any use) in a row; at the
   * limit no more are tried until an exchange with the upstream succeeds again.
   */
  failuresInARow: number;
}

/** Default connector: TCP with Nagle off, then TLS (HTTP/1.1 by ALPN) for https. */
export async function defaultConnector(
  ep: Endpoint,
  options: ConnectOptions,
): Promise<Deno.Conn> {
  const tcp = await Deno.connect({ hostname: ep.hostname, port: ep.port });
  // Nagle would hold a small request body back until the head's ACK arrives.
  tcp.setNoDelay(true);
  if (ep.protocol === "http:") return tcp;
  try {
    const tls = await Deno.startTls(tcp, {
      hostname: ep.hostname,
      alpnProtocols: options.alpnProtocols ?? ["http/1.1"],
      ...(options.caCerts ? { caCerts: options.caCerts } : {}),
    });
    await tls.handshake();
    return tls;
  } catch (err) {
    try {
      tcp.close();
    } catch { /* already closed by startTls */ }
    throw err;
  }
}

/** Pool tuning. */
export interface PoolOptions {
  connectTimeoutMs: number;
  /** Idle connections are closed after this long; keep it below the upstream's keep-alive. */
  idleTimeoutMs: number;
  /** Most idle connections kept per upstream. */
  maxIdle?: number;
  connector?: Connector;
  caCerts?: string[];
  /** Background opening of connections ready before requests need them; default off. */
  spares?: SpareOptions;
  /** Memory for request heads and small bodies; default one set shared by all pools. */
  slabs?: WriteSlabs;
}

/** How a pool keeps connections ready ahead of demand. */
export interface SpareOptions {
  /**
   * Idle connections kept ready (HTTP/1.1), or free stream slots (HTTP/2); 0 = off. Opened in the
   * background when a request takes the last one, so that the next request does not pay a TCP and
   * TLS handshake to the upstream.
   */
  count: number;
  /**
   * Background opens failing in a row before the pool stops trying, until an exchange with the
   * upstream succeeds again (default {@link SPARE_FAILURE_LIMIT}).
   */
  failureLimit?: number;
  /** False while the upstream is marked down: nothing is opened for it in the background. */
  live?: () => boolean;
  /**
   * Sends one keep-warm request over the pool (see {@link ExchangeOptions.probe}), which refreshes
   * the oldest idle connection before the upstream's keep-alive can close it. Without it, a spare
   * close to the idle timeout is replaced by a new connection instead.
   */
  warm?: () => Promise<unknown>;
}

/** Default {@link SpareOptions.failureLimit}. */
export const SPARE_FAILURE_LIMIT = 3;

/** The read size of a response's first bytes (head and a short body). */
const SMALL_READ = 4 * 1024;
/** The read size once a read has filled a {@link SMALL_READ} buffer: a bulk body. */
const LARGE_READ = 64 * 1024;
/**
 * The read size once a read has brought less than this: A sends in small pieces (an event stream),
 * and the next read may wait long for the next one. A waiting read holds its buffer, so thousands
 * of open streams hold this much each instead of 4 KiB; a read that fills it goes back up.
 */
const TRICKLE_READ = 1024;
/** A failed read on an idle connection is only its end. */
const quietFailure = (): null => null;

/** One socket with a read buffer and an idle liveness watch. */
export class Connection {
  readonly #conn: Deno.Conn;
  #leftover: Uint8Array | null = null;
  /** A read started while idle, so a close by the peer is noticed before reuse. */
  #idleRead: Promise<Uint8Array | null> | null = null;
  #idleSettled = false;
  /** What the pool does when the idle read ends (the pool's latest {@link startIdle}). */
  #onIdleLost: (() => void) | null = null;
  #readSize = SMALL_READ;
  #buf: Uint8Array | null = null;
  /** #buf was lent out ({@link readLent}): a read its borrower did not ask for needs another. */
  #lent = false;
  closed = false;
  /** The protocol chosen by ALPN when it was asked for, else null. */
  alpn: string | null = null;
  /** Times this connection was handed out; > 1 means reused. */
  uses = 0;
  idleSince = 0;
  /** Handed to a keep-warm request: it counts as ready, and comes straight back. */
  probing = false;
  /** Opened in the background and not handed out yet. */
  unusedSpare = false;

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  /** The next bytes from the socket (or from what was read ahead), null at end of stream. */
  read(): Promise<Uint8Array | null> {
    return this.#next(false);
  }

  /**
   * Like {@link read}, but bytes that come from the socket are lent: a view of the connection's
   * read buffer, valid only until the next read of either kind. Saves a copy (and an ArrayBuffer)
   * per chunk for a reader that is done with each chunk before it reads again.
   */
  readLent(): Promise<Uint8Array | null> {
    return this.#next(true);
  }

  #next(lend: boolean): Promise<Uint8Array | null> {
    const left = this.#leftover;
    if (left !== null) {
      this.#leftover = null;
      return Promise.resolve(left);
    }
    const idle = this.#idleRead;
    if (idle !== null) {
      this.#idleRead = null;
      return idle;
    }
    return this.#rawRead(false, lend);
  }

  /** Puts bytes back to be returned by the next {@link read}. */
  unread(bytes: Uint8Array): void {
    if (bytes.byteLength > 0) this.#leftover = bytes;
  }

  #rawRead(quiet: boolean, lend = false): Promise<Uint8Array | null> {
    // One read at a time per connection, so its buffer is reused; the bytes read are copied out,
    // or lent (readLent). A fresh 8 KB buffer per read was a measurable share of GC time. Not an
    // async function: one suspended per open stream was memory and a turn per chunk.
    let buf = this.#buf;
    if (buf === null || buf.byteLength !== this.#readSize) {
      buf = this.#buf = new Uint8Array(this.#readSize);
    }
    let read: Promise<number | null>;
    try {
      read = readConn(this.#conn, buf);
    } catch (err) {
      return quiet ? Promise.resolve(null) : Promise.reject(err);
    }
    if (quiet) return read.then(this.#got, quietFailure);
    return read.then(lend ? this.#gotLent : this.#got);
  }

  /** The bytes of the read that just ended, copied out of #buf (the buffer it was given). */
  readonly #got = (n: number | null): Uint8Array | null => {
    if (!n) return null; // 0 or null: the end of the stream
    return this.#sized(n).slice(0, n);
  };

  /** The bytes of the read that just ended, as a view of #buf (see {@link readLent}). */
  readonly #gotLent = (n: number | null): Uint8Array | null => {
    if (!n) return null;
    this.#lent = true;
    return this.#sized(n).subarray(0, n);
  };

  /** #buf, after choosing the next read's size from this read's `n` bytes. */
  #sized(n: number): Uint8Array {
    const buf = this.#buf!;
    // A full buffer means a bulk body: read bigger from now on.
    if (n === buf.byteLength) this.#readSize = n < SMALL_READ ? SMALL_READ : LARGE_READ;
    else if (n < TRICKLE_READ) this.#readSize = TRICKLE_READ;
    return buf;
  }

  /** Bytes already read past the response head, taken out of the connection. */
  takeLeftover(): Uint8Array | null {
    const left = this.#leftover;
    this.#leftover = null;
    return left;
  }

  async write(bytes: Uint8Array): Promise<void> {
    let off = 0;
    while (off < bytes.byteLength) off += await this.#conn.write(bytes.subarray(off));
  }

  /** Starts watching an idle connection; `onLost` runs if the peer closes it or sends junk. */
  startIdle(onLost: () => void): void {
    this.#onIdleLost = onLost;
    // Still in flight when the exchange that had the connection never read from it (refused
    // before a byte was written): a second read would race it for A's next bytes, and the one
    // that lost would drop them, leaving the next exchange waiting for an answer already read.
    if (this.#idleRead !== null) return;
    this.#idleSettled = false;
    this.#readSize = SMALL_READ;
    // The last chunk may still be on its way to the client, in the buffer it was lent in.
    if (this.#lent || (this.#buf !== null && this.#buf.byteLength > SMALL_READ)) this.#buf = null;
    this.#lent = false;
    const pending = this.#rawRead(true);
    this.#idleRead = pending;
    pending.then(() => {
      this.#idleSettled = true;
      // Anything (EOF, data, error) arriving on an idle connection makes it unusable.
      if (this.#idleRead === pending) this.#onIdleLost?.();
    });
  }

  /** False when the idle watch saw the peer close (or send anything). */
  get reusable(): boolean {
    return !this.closed && !this.#idleSettled && this.#leftover === null;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }

  /**
   * Hands the socket over to another protocol (HTTP/2 after ALPN chose it): this connection is
   * closed, the socket is not. Only before anything was read from it.
   */
  detach(): Deno.Conn {
    if (this.closed || this.#idleRead !== null || this.#leftover !== null || this.#buf !== null) {
      throw new Error("connection already in use");
    }
    this.closed = true;
    return this.#conn;
  }
}

/** A keep-alive pool of connections to one endpoint. */
export class Pool {
  readonly endpoint: Endpoint;
  readonly #opts: Required<Omit<PoolOptions, "caCerts" | "spares" | "slabs">> & {
    caCerts?: string[];
  };
  /** Where request heads (with a small first body chunk) are written, one region per write. */
  readonly slabs: WriteSlabs;
  readonly #idle: Connection[] = [];
  #active = 0;
  #created = 0;
  #reusedCount = 0;
  readonly #sweeper: IdleSweeper;
  #closed = false;
  /** When a connection was last handed out or returned (ms since the epoch). */
  lastActivity = 0;
  readonly #spares: SpareOptions;
  /** Spares being connected in the background. */
  #opening = 0;
  /** Idle connections lent to keep-warm requests: ready, and coming straight back. */
  #probing = 0;
  #sparesOpened = 0;
  #spareFailures = 0;
  #coldStarts = 0;
  /** Set by {@link closeIdle} (shutdown): no more background opens. */
  #draining = false;

  constructor(endpoint: Endpoint, options: PoolOptions) {
    this.endpoint = endpoint;
    this.#opts = {
      connectTimeoutMs: options.connectTimeoutMs,
      idleTimeoutMs: options.idleTimeoutMs,
      maxIdle: options.maxIdle ?? 256,
      connector: options.connector ?? defaultConnector,
      ...(options.caCerts ? { caCerts: options.caCerts } : {}),
    };
    this.#spares = options.spares ?? { count: 0 };
    this.slabs = options.slabs ?? SHARED_SLABS;
    this.#sweeper = new IdleSweeper(options.idleTimeoutMs, (now) => this.#sweep(now));
  }

  /**
   * Whether this pool carries the origin's requests. False while `pools.ts` has not settled the
   * protocol, or once the upstream chose HTTP/2: no spare connections are kept then.
   */
  carrying = true;

  /** Takes in, as idle, a connection opened outside {@link acquire} (the ALPN probe). */
  adopt(c: Connection): void {
    this.#active++;
    this.release(c, true);
  }

  /** Counters for diagnostics. */
  stats(): TransportStats & { protocol: string } {
    return {
      protocol: "http/1.1",
      idle: this.#idle.length,
      active: this.#active,
      created: this.#created,
      reused: this.#reusedCount,
      coldStarts: this.#coldStarts,
      spares: {
        target: this.#spareTarget(),
        ready: this.#idle.length + this.#probing,
        opening: this.#opening,
        opened: this.#sparesOpened,
        failuresInARow: this.#spareFailures,
      },
    };
  }

  /**
   * An idle connection if one is alive (unless `fresh`), else a new one. A `probe` (health or
   * keep-warm request) takes the oldest idle connection, the one nearest its idle timeout, and is
   * neither a cold start nor a reason to open a spare: its connection comes straight back.
   */
  async acquire(fresh = false, probe = false): Promise<Connection> {
    this.lastActivity = Date.now();
    if (!fresh) {
      let c: Connection | undefined;
      while ((c = probe ? this.#idle.shift() : this.#idle.pop()) !== undefined) {
        if (c.reusable) {
          c.unusedSpare = false;
          c.uses++;
          this.#active++;
          this.#reusedCount++;
          if (probe) {
            c.probing = true;
            this.#probing++;
          } else {
            this.#fill();
          }
          return c;
        }
        c.close();
      }
      if (!probe) this.#coldStarts++;
    }
    // The next request should not wait like this one: its spare starts connecting alongside.
    if (!probe) this.#fill();
    const c = await this.connect();
    c.uses++;
    this.#active++;
    return c;
  }

  /** Opens a new connection within the connect timeout (offering `alpn` over TLS when given). */
  async connect(alpn?: string[]): Promise<Connection> {
    if (this.#closed) throw new UpstreamError("connect", "pool closed");
    const pending = this.#opts.connector(this.endpoint, {
      ...(this.#opts.caCerts ? { caCerts: this.#opts.caCerts } : {}),
      ...(alpn ? { alpnProtocols: alpn } : {}),
    }).then(async (conn) => {
      // Which protocol the upstream chose; a test connector may hand back plain TCP.
      const chosen = alpn && "handshake" in conn
        ? (await (conn as Deno.TlsConn).handshake()).alpnProtocol
        : null;
      return { conn, chosen };
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new UpstreamError("connect_timeout", "connect timed out")),
        this.#opts.connectTimeoutMs,
      );
    });
    try {
      const { conn, chosen } = await Promise.race([pending, timeout]);
      this.#created++;
      const c = new Connection(conn);
      c.alpn = chosen;
      return c;
    } catch (err) {
      // A connection that completes after the timeout must not leak.
      pending.then((c) => c.conn.close(), () => {});
      if (err instanceof UpstreamError) throw err;
      throw new UpstreamError("connect", `connect failed: ${errName(err)}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  /** Returns a connection after an exchange; `reusable` false closes it. */
  release(c: Connection, reusable: boolean): void {
    this.#active--;
    this.lastActivity = Date.now();
    if (c.probing) {
      c.probing = false;
      this.#probing--;
    }
    // An exchange ended cleanly: the upstream works, so background opens may resume.
    if (reusable) this.#spareFailures = 0;
    this.#park(c, reusable);
  }

  /** Puts a connection in the idle pool, or closes it. */
  #park(c: Connection, reusable: boolean): void {
    if (!reusable || this.#closed || c.closed || this.#idle.length >= this.#opts.maxIdle) {
      c.close();
      // A keep-warm request that failed leaves one ready connection fewer.
      this.#fill();
      return;
    }
    c.idleSince = Date.now();
    c.startIdle(() => {
      // Closed by the relay itself (idle timeout, shutdown): already out of the pool.
      if (c.closed) return;
      const i = this.#idle.indexOf(c);
      if (i >= 0) this.#idle.splice(i, 1);
      c.close();
      // A spare dropped by the upstream before any use counts as a failed open: an upstream that
      // accepts connections only to close them must not be reconnected to in a loop.
      if (c.unusedSpare) this.#spareFailures++;
      this.#fill();
    });
    this.#idle.push(c);
    this.#sweeper.start();
  }

  /** Closes idle connections now and opens no more spares (in-flight ones finish on their own). */
  closeIdle(): void {
    this.#draining = true;
    for (const c of this.#idle.splice(0)) c.close();
  }

  /** Closes everything; later acquires fail. */
  close(): void {
    this.#closed = true;
    this.closeIdle();
    this.#sweeper.stop();
  }

  /** How many idle connections to keep ready now: 0 when spares are off or must not be opened. */
  #spareTarget(): number {
    const sp = this.#spares;
    if (
      sp.count <= 0 || this.#closed || this.#draining || !this.carrying ||
      this.#spareFailures >= (sp.failureLimit ?? SPARE_FAILURE_LIMIT)
    ) {
      return 0;
    }
    if (sp.live !== undefined && !sp.live()) return 0;
    // Spares are idle connections: they stay within the idle cap.
    return Math.min(sp.count, this.#opts.maxIdle);
  }

  /** Starts background connects until the ready connections reach the spare target. */
  #fill(): void {
    const missing = this.#spareTarget() - (this.#idle.length + this.#probing + this.#opening);
    for (let i = 0; i < missing; i++) this.#openSpare();
  }

  #openSpare(): void {
    this.#opening++;
    this.connect().then((c) => {
      this.#opening--;
      this.#sparesOpened++;
      // It waits in the pool like a used connection, and A may close it just as a request goes
      // out on it: counting it as used lets that request be resent (see resendIfStale).
      c.uses = 1;
      c.unusedSpare = true;
      this.lastActivity = Date.now();
      this.#park(c, true);
    }, () => {
      this.#opening--;
      // Counted, and tried again on the sweeper's next tick, up to the failure limit.
      this.#spareFailures++;
    });
    this.#sweeper.start();
  }

  /**
   * Keeps spares from going stale: the upstream closes connections idle for ~5 s. One that has
   * been idle half the pool's idle timeout gets a keep-warm request (cheaper than a new TLS
   * connection); without keep-warm, one idle three quarters of it is replaced by a new connection
   * before the sweeper closes it.
   */
  #refresh(now: number): void {
    const target = this.#spareTarget();
    if (target === 0) return;
    const warm = this.#spares.warm;
    const idleMs = this.#opts.idleTimeoutMs;
    const freshSince = now - (warm ? idleMs / 2 : (idleMs * 3) / 4);
    let fresh = 0;
    for (const c of this.#idle) if (c.idleSince > freshSince) fresh++;
    let missing = target - (fresh + this.#probing + this.#opening);
    if (missing <= 0) return;
    const stale = this.#idle.length - fresh;
    if (warm !== undefined && stale > 0) {
      // One at a time: the request takes the oldest idle connection; others wait for later ticks.
      void warm().catch(() => {});
      missing -= stale;
    }
    for (let i = 0; i < missing; i++) this.#openSpare();
  }

  /** One sweep: closes connections idle past the timeout, refreshes spares. */
  #sweep(now: number): boolean {
    const cutoff = now - this.#opts.idleTimeoutMs;
    // Oldest first in the stack: drop from the bottom.
    while (this.#idle.length > 0 && this.#idle[0]!.idleSince <= cutoff) {
      this.#idle.shift()!.close();
    }
    this.#refresh(now);
    return this.#idle.length > 0 || this.#opening > 0 || this.#spareTarget() > 0;
  }
}

/** Where request body chunks come from (a stream reader, or `body_limit.ts`'s checked view). */
export interface BodyReader {
  /** The next chunk, or null at the end. */
  read(): Promise<Uint8Array | null>;
  cancel(reason?: unknown): void;
  /** Gives the chunks' memory back to their owner: called once nothing reads them any more. */
  release?(): void;
}

/** A {@link BodyReader} over a stream. */
export function streamReader(stream: ReadableStream<Uint8Array>): BodyReader {
  const reader = stream.getReader();
  return {
    read: async () => {
      const { value, done } = await reader.read();
      return done ? null : value;
    },
    cancel: (reason) => {
      reader.cancel(reason).catch(() => {});
    },
  };
}

/**
 * A request body that can be read again from the start, as long as it stayed under the keep limit.
 * Chunks are kept as they stream to the upstream, so nothing waits for the whole body.
 */
export class BodySource {
  /** `content-length` as the client announced it; null for chunked bodies. */
  readonly length: number | null;
  readonly #reader: BodyReader;
  readonly #keepMax: number;
  /** Chunks from index `#base` on; before overflow `#base` is 0 and this is the whole body. */
  #kept: Uint8Array[] = [];
  #base = 0;
  #keptBytes = 0;
  #overflow = false;
  #done = false;
  #pending: Promise<void> | null = null;
  #generation = 0;
  #liveIndex = 0;

  constructor(
    source: ReadableStream<Uint8Array> | BodyReader,
    length: number | null,
    keepMax: number,
  ) {
    this.#reader = source instanceof ReadableStream ? streamReader(source) : source;
    this.length = length;
    this.#keepMax = keepMax;
  }

  /** True while every byte read so far is still kept, so a new attempt can start over. */
  get replayable(): boolean {
    return !this.#overflow;
  }

  /** A reader for one attempt, starting at the first byte. Earlier cursors stop counting. */
  cursor(): () => Promise<Uint8Array | null> {
    const generation = ++this.#generation;
    this.#liveIndex = 0;
    let index = 0;
    return async () => {
      const c = await this.#chunk(index);
      if (c !== null) index++;
      if (generation === this.#generation) {
        this.#liveIndex = index;
        if (this.#overflow) this.#trim();
      }
      return c;
    };
  }

  async #chunk(index: number): Promise<Uint8Array | null> {
    while (true) {
      const rel = index - this.#base;
      if (rel < 0) throw new UpstreamError("body", "request body is no longer kept");
      if (rel < this.#kept.length) return this.#kept[rel]!;
      if (this.#done) return null;
      // One read at a time: a failed attempt's writer may still be waiting on it.
      this.#pending ??= this.#pull();
      await this.#pending;
    }
  }

  /** Past the limit no new attempt can start: drop what the live attempt has already sent. */
  #trim(): void {
    const drop = Math.min(this.#liveIndex - this.#base, this.#kept.length);
    if (drop <= 0) return;
    this.#kept.splice(0, drop);
    this.#base += drop;
  }

  async #pull(): Promise<void> {
    try {
      const value = await this.#reader.read();
      if (value === null) {
        this.#done = true;
        return;
      }
      this.#keptBytes += value.byteLength;
      this.#kept.push(value);
      if (this.#overflow || this.#keptBytes > this.#keepMax) {
        // The waiting reader may belong to a failed attempt: only the live attempt's position
        // decides what can go.
        this.#overflow = true;
        this.#trim();
      }
    } catch (err) {
      throw new UpstreamError("body", `request body read failed: ${errName(err)}`, { cause: err });
    } finally {
      this.#pending = null;
    }
  }

  /** Stops reading the client's body (the exchange failed or the client left). */
  cancel(reason?: unknown): void {
    this.#reader.cancel(reason);
  }

  /** Bytes currently kept for a possible resend. */
  get keptBytes(): number {
    let n = 0;
    for (const c of this.#kept) n += c.byteLength;
    return n;
  }

  /**
   * Drops the kept copy once it can no longer be needed (the body was sent in full and A
   * answered). The body is no longer replayable afterwards. With `release`, the caller also knows
   * that no write still reads the chunks, so their memory goes back to the reader's owner.
   */
  forget(release = false): void {
    if (!this.#done) return;
    this.#overflow = true;
    this.#base += this.#kept.length;
    this.#kept = [];
    if (release) this.#reader.release?.();
  }
}

/** Sees every response body chunk as it passes; must be cheap and must not throw. */
/**
 * Watches a streamed response body pass, synchronously, without a stream in between: given by the
 * caller with the exchange (never called for a body that arrived whole with the head).
 */
export interface BodyTap {
  /** Each body byte, in order, as it is handed to the reader. */
  chunk(bytes: Uint8Array): void;
  /** Called once: null for a clean end, else why the body broke or was cancelled. */
  end(error: UpstreamError | null): void;
}

/** What to send upstream. */
export interface ExchangeRequest {
  method: string;
  /** Path and query exactly as they go on the request line. */
  target: string;
  headers: HeaderList;
  body: BodySource | null;
}

/** Per-exchange dependencies. */
export interface ExchangeOptions {
  watchdog: Watchdog;
  /** Aborts the exchange until the response head arrives (the client went away). */
  signal?: AbortSignal | undefined;
  /**
   * The relay's own request (health probe, keep-warm): it takes the pool's oldest idle connection
   * and is not counted as a client request that found no connection ready.
   */
  probe?: boolean | undefined;
  /** Watches the response body, when it streams. */
  tap?: BodyTap | undefined;
}

/**
 * The options of one exchange, for every caller in `lib/`: always the same four properties in the
 * same order. V8 gives objects of one shape one hidden class; a keep-warm probe whose options
 * lacked `signal` and `tap` had another, and the first one after a busy spell threw away the
 * optimised code of a dozen functions on the request path, which the next client requests then
 * paid for, recompiling it on the main thread (issue #14; its effect on the c=1 p99 was not
 * resolved in the benchmark).
 */
export function exchangeOptions(
  watchdog: Watchdog,
  signal: AbortSignal | undefined,
  tap: BodyTap | undefined,
  probe = false,
): ExchangeOptions {
  return { watchdog, signal, probe, tap };
}

/** The upstream's response; the body streams straight from the socket. */
export interface UpstreamResponse {
  status: number;
  statusText: string;
  headers: HeaderList;
  body: ReadableStream<Uint8Array> | null;
  /**
   * The whole body, when it had already arrived with the head (typical for JSON answers); then
   * `body` is null and the connection is already back in the pool. Cheaper to serve than a stream.
   */
  complete: Uint8Array<ArrayBuffer> | null;
  /**
   * The body without a stream: reads go straight to the socket (HTTP/1.1 only; null otherwise).
   * Use it or `body`, never both.
   */
  reader?: BodyReaderLike | null;
  /** 1, or 2 when a stale pooled connection forced a resend. */
  attempts: number;
  /** Whether the answering connection had served a request before. */
  reused: boolean;
}

const MAX_HEAD = 64 * 1024;

/**
 * Sends one request and resolves with the response head. A request that failed on a reused
 * connection before any response byte arrived is sent once more on a new connection, if its body
 * is still replayable: the upstream closed an idle connection just as it was picked.
 */
export async function exchange(
  pool: Pool,
  req: ExchangeRequest,
  options: ExchangeOptions,
): Promise<UpstreamResponse> {
  // A connect failure here leaves the body untouched: the caller may try another upstream.
  return await resendIfStale(req, options, async (fresh) => {
    const conn = await pool.acquire(fresh, options.probe === true);
    return new Exchange(pool, conn, req, options);
  });
}

/** One try at an exchange, as {@link resendIfStale} sees it. */
export interface Attempt {
  /** The connection (or session) had carried a request before this one. */
  readonly reused: boolean;
  /** Some of A's response arrived: the request must never be sent again. */
  readonly answered: boolean;
  readonly abortKind: "timeout" | "aborted" | null;
  run(): Promise<UpstreamResponse>;
}

/**
 * Runs an exchange, and once more on a fresh connection when the first try failed on a reused
 * one before any of A's response arrived (A closed it as the request went out), the caller did not
 * abort, and the body is still replayable. `start(fresh)` opens the try; a failure to connect
 * is thrown as is and leaves the body untouched, so the caller may try another upstream.
 */
export async function resendIfStale(
  req: ExchangeRequest,
  options: ExchangeOptions,
  start: (fresh: boolean) => Promise<Attempt>,
): Promise<UpstreamResponse> {
  let fresh = false;
  for (let attempt = 1;; attempt++) {
    if (options.signal?.aborted) throw new UpstreamError("aborted", "client went away");
    const a = await start(fresh);
    try {
      const res = await a.run();
      res.attempts = attempt;
      return res;
    } catch (err) {
      const stale = attempt === 1 && a.reused && !a.answered && a.abortKind === null &&
        (req.body === null || req.body.replayable) &&
        !(err instanceof UpstreamError && (err.kind === "body" || err.kind === "request"));
      if (!stale) {
        req.body?.cancel();
        throw err;
      }
      fresh = true;
    }
  }
}

class Exchange implements Watched, Attempt {
  [WATCH_SLOT] = -1;
  lastTick = 0;
  gotBytes = false;
  abortKind: "timeout" | "aborted" | null = null;
  readonly #pool: Pool;
  readonly #conn: Connection;
  #req: ExchangeRequest;
  readonly #watchdog: Watchdog;
  readonly #tap: BodyTap | undefined;
  /** The client's signal, until the response head arrives (a stream need not keep it). */
  #signal: AbortSignal | undefined;
  #writeDone = false;
  #headSeen = false;
  #writeError: unknown = null;
  #finished = false;

  constructor(pool: Pool, conn: Connection, req: ExchangeRequest, opts: ExchangeOptions) {
    this.#pool = pool;
    this.#conn = conn;
    this.#req = req;
    this.#watchdog = opts.watchdog;
    this.#tap = opts.tap;
    this.#signal = opts.signal;
  }

  get reused(): boolean {
    return this.#conn.uses > 1;
  }

  get answered(): boolean {
    return this.gotBytes;
  }

  expire(): void {
    this.abortKind ??= "timeout";
    this.#conn.close();
  }

  #onAbort = (): void => {
    this.abortKind ??= "aborted";
    this.#conn.close();
  };

  async run(): Promise<UpstreamResponse> {
    const watchdog = this.#watchdog, signal = this.#signal;
    let head: HeadPlan;
    try {
      head = planHead(this.#req, this.#pool.endpoint.hostHeader);
    } catch (err) {
      // Nothing was written: the connection is as good as before.
      this.#writeDone = true;
      this.#finish(true, false);
      throw err;
    }
    watchdog.watch(this);
    signal?.addEventListener("abort", this.#onAbort);
    this.#write(head).then(
      () => {
        this.#writeDone = true;
        // Sent in full and answered: no resend can happen any more, so keep nothing.
        if (this.#headSeen) this.#spent();
      },
      (err) => {
        this.#writeError = err;
        // A client whose body broke is gone; an upstream that stopped reading is seen by the reader.
        if (err instanceof UpstreamError && err.kind === "body") {
          this.abortKind ??= "aborted";
          this.#conn.close();
        }
      },
    );
    let answer: Head;
    try {
      answer = await this.#readHead();
    } catch (err) {
      signal?.removeEventListener("abort", this.#onAbort);
      // The body stays readable: exchange() may resend it on a new connection.
      this.#finish(false, false);
      throw this.#classify(err);
    }
    signal?.removeEventListener("abort", this.#onAbort);
    this.#signal = undefined;
    // A stream can stay open for minutes: the kept copy of the request body (a whole Claude Code
    // conversation, often megabytes) must not live as long as it.
    this.#headSeen = true;
    if (this.#writeDone) this.#spent();
    return this.#respond(answer);
  }

  /**
   * Sent in full and answered: no resend can happen any more, so keep nothing of the request (its
   * body copy, headers and target) while the response streams, for minutes perhaps.
   */
  #spent(): void {
    const req = this.#req;
    // Every write of the body has ended (#writeDone): nothing reads its bytes any more.
    req.body?.forget(true);
    this.#req = { method: req.method, target: "", headers: NO_FIELDS, body: null };
  }

  #classify(err: unknown): UpstreamError {
    if (this.abortKind === "timeout") {
      return new UpstreamError("timeout", "upstream silent too long");
    }
    if (this.abortKind === "aborted") {
      return new UpstreamError("aborted", "client went away", { cause: this.#writeError ?? err });
    }
    if (err instanceof UpstreamError) return err;
    if (err instanceof FramingError) return new UpstreamError("protocol", err.message);
    return new UpstreamError("reset", `connection failed: ${errName(err)}`, { cause: err });
  }

  /**
   * Writes the request. The framing is ours alone: `content-length` of the bytes that go out, or
   * chunked when their number is not known. A body source that gives more or fewer bytes than the
   * length stated fails the exchange and the connection is closed, so A never reads a body as
   * the start of another request.
   */
  async #write(plan: HeadPlan): Promise<void> {
    const body = this.#req.body;
    if (body === null) return await this.#sendHead(plan, NO_PARTS);
    const next = body.cursor();
    const chunked = body.length === null;
    let left = body.length ?? 0;
    const take = (c: Uint8Array): Uint8Array[] => {
      if (chunked) return frame(c, true);
      left -= c.byteLength;
      if (left < 0) throw new UpstreamError("body", "request body longer than its length");
      return [c];
    };
    // Head and the first body chunk in one write: one packet for a typical JSON request. A large
    // chunk goes in a write of its own: copying it next to the head cost more than the write.
    const first = await next();
    const firstParts = first !== null ? take(first) : chunked ? [LAST_CHUNK] : NO_PARTS;
    if (!chunked && first !== null && first.byteLength > JOIN_MAX) {
      await this.#sendHead(plan, NO_PARTS);
      await this.#send(first);
    } else {
      await this.#sendHead(plan, firstParts);
    }
    if (first !== null) {
      let c: Uint8Array | null;
      while ((c = await next()) !== null) {
        if (this.#conn.closed) return;
        await this.#send(concat(take(c)));
      }
      if (chunked) await this.#send(LAST_CHUNK);
    }
    if (left !== 0) throw new UpstreamError("body", "request body shorter than its length");
  }

  async #send(bytes: Uint8Array): Promise<void> {
    await this.#conn.write(bytes);
    this.lastTick = this.#watchdog.tick;
  }

  /**
   * Writes the head and `parts` (the first body chunk, framed) in one write. Up to
   * {@link SLAB_WRITE_MAX} bytes, in a region of a slab, given back only once the write completed
   * (after a failed write its slab is left to the garbage collector, write_slabs.ts); larger, in a
   * buffer of its own.
   */
  async #sendHead(plan: HeadPlan, parts: readonly Uint8Array[]): Promise<void> {
    let size = plan.size;
    for (const p of parts) size += p.byteLength;
    const slabs = this.#pool.slabs;
    const slab = size <= SLAB_WRITE_MAX ? slabs.reserve(size) : null;
    const out = slab?.view ?? new Uint8Array(size);
    let off = putHead(out, this.#req, this.#pool.endpoint.hostHeader, plan.framing);
    for (const p of parts) {
      out.set(p, off);
      off += p.byteLength;
    }
    await this.#send(out);
    if (slab !== null) slabs.release(slab);
  }

  #readHead(): Promise<Head> {
    return readHead(this.#conn, () => {
      this.gotBytes = true;
      this.lastTick = this.#watchdog.tick;
    }, false);
  }

  #respond(head: Head): UpstreamResponse {
    const res: UpstreamResponse = {
      status: head.status,
      statusText: head.statusText,
      headers: head.headers,
      body: null,
      complete: null,
      attempts: 1,
      reused: this.reused,
    };
    const framing = bodyFraming(this.#req.method, head);
    // The closures below outlive the head; they need only this of it.
    const keepAlive = head.keepAlive;
    if (framing.kind === "none") {
      this.#finish(head.keepAlive);
      return res;
    }
    const conn = this.#conn;
    const watchdog = this.#watchdog;
    let remaining = framing.kind === "length" ? framing.length : 0;
    const decoder = framing.kind === "chunked" ? new ChunkedDecoder() : null;
    // Payload decoded from bytes that came with the head, emitted before reading further.
    let early: readonly Uint8Array[] = [];
    const left = conn.takeLeftover();
    if (left !== null) {
      if (framing.kind === "length" && left.byteLength >= remaining) {
        res.complete = left.slice(0, remaining);
        this.#finish(head.keepAlive && left.byteLength === remaining);
        return res;
      }
      if (decoder !== null) {
        try {
          early = decoder.push(left);
        } catch {
          early = [];
          decoder.poison();
        }
        // An event stream stays a stream even when it all came at once: served whole, it would
        // leave the client with content-length where A sent chunked.
        if (decoder.done && !decoder.poisoned && !isEventStream(head.headers)) {
          res.complete = concat(early).slice();
          this.#finish(head.keepAlive && decoder.rest === null);
          return res;
        }
      } else {
        conn.unread(left);
      }
    }
    const tap = this.#tap;
    const end = endOnce(tap);
    // Decoded payload not handed out yet; every piece passed the tap when it was queued.
    const queue: Uint8Array[] = [];
    /** Set once the body is over: null for a clean end, else why it failed. */
    let over: UpstreamError | null | undefined;
    const push = (bytes: Uint8Array): void => {
      if (bytes.byteLength === 0) return;
      tap?.chunk(bytes);
      queue.push(bytes);
    };
    const fail = (err: unknown): void => {
      if (over !== undefined) return;
      const e = this.#classify(err);
      over = e;
      this.#finish(false);
      end(e);
    };
    const done = (reusable: boolean): void => {
      if (over !== undefined) return;
      over = null;
      this.#finish(reusable && keepAlive);
      end(null);
    };
    let primed = false;
    /** The direct reader takes lent chunks (its contract: done with each before the next read). */
    let lend = false;
    /** Hands out what came with the head, on the first read: the tap's owner is set up by then. */
    const prime = (): void => {
      primed = true;
      if (over !== undefined) return;
      for (const p of early) push(p);
      early = []; // the closure lives as long as the body; these bytes need not
      if (decoder?.done) done(decoder.rest === null);
    };
    /** Takes in one read from A: payload to the queue, or the end of the body. */
    const got = (chunk: Uint8Array | null): void => {
      if (over !== undefined) return; // cancelled meanwhile
      this.lastTick = watchdog.tick;
      if (chunk === null) {
        if (framing.kind === "close") return done(false);
        return fail(new UpstreamError("reset", "upstream closed mid-body"));
      }
      if (framing.kind === "close") {
        push(chunk);
      } else if (decoder === null) {
        const extra = chunk.byteLength > remaining;
        if (extra) chunk = chunk.subarray(0, remaining);
        remaining -= chunk.byteLength;
        push(chunk);
        if (remaining === 0) done(!extra);
      } else {
        let pieces: readonly Uint8Array[];
        try {
          pieces = decoder.push(chunk);
        } catch (err) {
          return fail(err);
        }
        for (let i = 0; i < pieces.length; i++) push(pieces[i]!);
        if (decoder.done) done(decoder.rest === null);
      }
    };
    /**
     * Reads from A until some payload is queued or the body is over, then hands out the next
     * piece. A chain of callbacks, not an async loop: an event stream waiting for its next event
     * keeps no suspended frame, and an event costs two promises fewer.
     */
    const next = (): Promise<ReadableStreamReadResult<Uint8Array>> => {
      if (!primed) prime();
      if (queue.length === 0 && over === undefined) {
        if (decoder?.poisoned) {
          fail(new UpstreamError("protocol", "bad chunked body"));
        } else {
          let read: Promise<Uint8Array | null>;
          try {
            read = lend ? conn.readLent() : conn.read();
          } catch (err) {
            fail(err);
            return settled();
          }
          return read.then(afterRead, afterFailedRead);
        }
      }
      return settled();
    };
    const afterRead = (
      chunk: Uint8Array | null,
    ): Promise<ReadableStreamReadResult<Uint8Array>> | ReadableStreamReadResult<Uint8Array> => {
      got(chunk);
      return queue.length === 0 && over === undefined ? next() : take();
    };
    const afterFailedRead = (err: unknown): ReadableStreamReadResult<Uint8Array> => {
      fail(err);
      return take();
    };
    const cancel = (): void => {
      this.abortKind ??= "aborted";
      if (over !== undefined) return;
      fail(new UpstreamError("aborted", "client went away"));
    };
    // The direct reader (no stream machinery per chunk) for a server that writes the body
    // itself; the stream below for everyone else. Whichever reads first takes the body.
    function take(): ReadableStreamReadResult<Uint8Array> {
      const value = queue.shift();
      if (value !== undefined) return { done: false, value };
      if (over === null) return DONE;
      throw over ?? new UpstreamError("aborted", "client went away");
    }
    /** {@link take} as a promise, for a read that needs no I/O. */
    function settled(): Promise<ReadableStreamReadResult<Uint8Array>> {
      try {
        return Promise.resolve(take());
      } catch (err) {
        return Promise.reject(err);
      }
    }
    res.reader = {
      read: () => {
        lend = true;
        return next();
      },
      lent: true,
      cancel: () => {
        cancel();
        return Promise.resolve();
      },
      ready: () => queue.length > 0 || !primed || over !== undefined,
    };
    res.body = new ReadableStream<Uint8Array>({
      pull: async (ctrl) => {
        try {
          const first = await next();
          if (!first.done) ctrl.enqueue(first.value);
        } catch { /* reported below, as `over` */ }
        while (queue.length > 0) ctrl.enqueue(queue.shift()!);
        if (over === null) ctrl.close();
        else if (over !== undefined) errorBody(ctrl, over, this.abortKind);
      },
      cancel,
    }, { highWaterMark: 0 });
    return res;
  }

  /** Ends the exchange once: the connection goes back to the pool only after a clean finish. */
  #finish(reusable: boolean, cancelBody = true): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#watchdog.unwatch(this);
    const ok = reusable && this.#writeDone && this.#writeError === null && this.abortKind === null;
    if (!ok) {
      this.#conn.close();
      if (!this.#writeDone && cancelBody) this.#req.body?.cancel();
    }
    this.#pool.release(this.#conn, ok);
  }
}

/** Methods whose requests mean nothing by a body: no `content-length: 0` when they have none. */
export const BODILESS_METHODS: ReadonlySet<string> = new Set([
  "GET",
  "HEAD",
  "DELETE",
  "OPTIONS",
  "TRACE",
]);

/**
 * The request head as it goes on the wire: request line, `host`, the headers `headers.ts` kept,
 * then the framing of the body this client will send. Throws UpstreamError("request") for a
 * header that cannot be written as HTTP/1.1 bytes.
 */
export function requestHead(req: ExchangeRequest, hostHeader: string): Uint8Array {
  const plan = planHead(req, hostHeader);
  const out = new Uint8Array(plan.size);
  putHead(out, req, hostHeader, plan.framing);
  return out;
}

/** A request head's size in bytes and its framing line, worked out before it is written. */
export interface HeadPlan {
  readonly size: number;
  readonly framing: string;
}

/** Any character that is not one byte in Latin-1. */
const NOT_LATIN1 = /[\u0100-\uffff]/;

/**
 * The size and framing of {@link requestHead}'s bytes. Throws UpstreamError("request") for a
 * header that cannot be written as HTTP/1.1 bytes, so that nothing is written then: the head is
 * written later, into memory reserved for it with the first body chunk.
 */
export function planHead(req: ExchangeRequest, hostHeader: string): HeadPlan {
  const { method, target, headers, body } = req;
  let framing = "";
  if (body === null) {
    if (!BODILESS_METHODS.has(method)) framing = "content-length: 0\r\n";
  } else if (body.length === null) framing = "transfer-encoding: chunked\r\n";
  else framing = `content-length: ${body.length}\r\n`;
  // Sized first and written piece by piece into one buffer: joining a dozen headers into one
  // string made a string per piece (~2.4 KB of garbage per request) before the encode.
  let size = method.length + target.length + hostHeader.length + framing.length + 22;
  let bad = NOT_LATIN1.test(method) || NOT_LATIN1.test(target) || NOT_LATIN1.test(hostHeader);
  for (let i = 0; i < headers.length; i++) {
    const h = headers[i]!;
    size += h[0].length + h[1].length + 4;
    if (NOT_LATIN1.test(h[0]) || NOT_LATIN1.test(h[1])) bad = true;
  }
  if (bad) throw new UpstreamError("request", "a request header has a character above U+00FF");
  return { size, framing };
}

/**
 * Writes the head {@link planHead} planned into `out` from 0; returns the offset after it. Only
 * after {@link planHead}, which checked every string: `putLatin1` would throw a RangeError.
 */
export function putHead(
  out: Uint8Array,
  req: ExchangeRequest,
  hostHeader: string,
  framing: string,
): number {
  const { method, target, headers } = req;
  let off = putLatin1(out, 0, method);
  off = putLatin1(out, off, " ");
  off = putLatin1(out, off, target);
  off = putLatin1(out, off, " HTTP/1.1\r\nhost: ");
  off = putLatin1(out, off, hostHeader);
  off = putLatin1(out, off, "\r\n");
  for (let i = 0; i < headers.length; i++) {
    const h = headers[i]!;
    off = putLatin1(out, off, h[0]);
    off = putLatin1(out, off, ": ");
    off = putLatin1(out, off, h[1]);
    off = putLatin1(out, off, "\r\n");
  }
  off = putLatin1(out, off, framing);
  return putLatin1(out, off, "\r\n");
}

/** `tap.end`, called at most once however many ways the body ends. */
export function endOnce(tap: BodyTap | undefined): (e: UpstreamError | null) => void {
  let ended = false;
  return (e) => {
    if (ended) return;
    ended = true;
    tap?.end(e);
  };
}

/** Ends a response body stream with `e`, unless the client's cancel already closed it. */
export function errorBody(
  ctrl: ReadableStreamDefaultController<Uint8Array>,
  e: UpstreamError,
  abortKind: "timeout" | "aborted" | null,
): void {
  // After a cancel the stream is already closed: erroring it again is not allowed.
  if (abortKind === "aborted") return;
  // Deno.serve prints a body stream's error to stderr: one line, not an internal stack.
  e.stack = `${e.name}: ${e.message} (client stream ended with an error)`;
  ctrl.error(e);
}

/**
 * Reads a response head from `conn`, skipping interim 1xx answers; bytes after the head stay in
 * the connection for the body. `onBytes` runs for every chunk received. A 101 is returned only
 * when `upgrade` is true (the caller asked to switch protocols).
 */
export async function readHead(
  conn: Connection,
  onBytes: () => void,
  upgrade: boolean,
): Promise<Head> {
  let buf: Uint8Array = EMPTY;
  let searchFrom = 0;
  let gotBytes = false;
  while (true) {
    // A final head may already be in the buffer, behind an interim one that came in the same read.
    const end = indexOfHeadEnd(buf, searchFrom);
    if (end < 0) {
      if (buf.byteLength > MAX_HEAD) throw new UpstreamError("protocol", "response head too large");
      searchFrom = Math.max(0, buf.byteLength - 3);
      const chunk = await conn.read();
      if (chunk === null) {
        throw new UpstreamError(
          gotBytes ? "protocol" : "reset",
          "upstream closed the connection before a response head",
        );
      }
      gotBytes = true;
      onBytes();
      buf = buf.byteLength === 0 ? chunk : concat([buf, chunk]);
      continue;
    }
    const head = parseHead(buf.subarray(0, end));
    buf = buf.subarray(end + 4);
    searchFrom = 0;
    if (head.status === 101 && upgrade) {
      conn.unread(buf);
      return head;
    }
    if (head.status >= 100 && head.status < 200) {
      // Interim responses (100 Continue, 103 Early Hints) are not relayed; 101 was never asked for.
      if (head.status === 101) throw new UpstreamError("protocol", "unexpected 101 response");
      continue;
    }
    conn.unread(buf);
    return head;
  }
}

/** A parsed response head. */
export interface Head {
  status: number;
  statusText: string;
  headers: HeaderList;
  keepAlive: boolean;
  contentLength: number | null;
  chunked: boolean;
  hasTransferEncoding: boolean;
}

type Framing =
  | { kind: "none" }
  | { kind: "length"; length: number }
  | { kind: "chunked" }
  | { kind: "close" };

/** RFC 9112 §6.3: how the response body is delimited. */
export function bodyFraming(
  method: string,
  head: Pick<Head, "status" | "contentLength" | "chunked" | "hasTransferEncoding">,
): Framing {
  if (method === "HEAD" || head.status === 204 || head.status === 304) return { kind: "none" };
  if (head.hasTransferEncoding) return head.chunked ? { kind: "chunked" } : { kind: "close" };
  if (head.contentLength !== null) {
    return head.contentLength === 0
      ? { kind: "none" }
      : { kind: "length", length: head.contentLength };
  }
  return { kind: "close" };
}

const STATUS_LINE = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/;

/** Parses a response head (without the final blank line). Throws UpstreamError("protocol"). */
export function parseHead(bytes: Uint8Array): Head {
  const text = decodeLatin1(bytes);
  const lines = text.split("\r\n");
  const m = STATUS_LINE.exec(lines[0] ?? "");
  if (m === null) throw new UpstreamError("protocol", "bad status line");
  const headers: HeaderList = [];
  let contentLength: number | null = null;
  let te: string | null = null;
  let connection = "";
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new UpstreamError("protocol", "bad header line");
    const name = line.slice(0, colon).toLowerCase();
    if (!TOKEN.test(name)) throw new UpstreamError("protocol", "bad header name");
    const value = trimOwsFrom(line, colon + 1);
    if (/[\r\n\0]/.test(value)) throw new UpstreamError("protocol", "bad header value");
    if (name === "content-length") {
      if (!/^\d{1,15}$/.test(value)) throw new UpstreamError("protocol", "bad content-length");
      const n = Number(value);
      if (contentLength !== null && contentLength !== n) {
        throw new UpstreamError("protocol", "conflicting content-length");
      }
      contentLength = n;
    } else if (name === "transfer-encoding") {
      te = te === null ? value : `${te}, ${value}`;
    } else if (name === "connection") {
      connection += `${value},`;
    }
    headers.push([name, value]);
  }
  const codings = te?.toLowerCase().split(",").map(trimOws).filter((s) => s !== "") ?? [];
  const conn = connection.toLowerCase();
  // An HTTP/1.0 answer's connection is never reused, keep-alive or not: 1.0 keep-alive is an
  // old extension whose framing rules servers and proxies have disagreed on.
  const http10 = m[1] === "0";
  return {
    status: Number(m[2]),
    statusText: m[3] ?? "",
    headers,
    keepAlive: !http10 && !/\bclose\b/.test(conn),
    contentLength: te === null ? contentLength : null,
    chunked: codings[codings.length - 1] === "chunked",
    hasTransferEncoding: te !== null,
  };
}

const EMPTY = new Uint8Array(0);
const CRLF = new Uint8Array([13, 10]);
const NO_PARTS: readonly Uint8Array[] = [];
const LAST_CHUNK = new Uint8Array([0x30, 13, 10, 13, 10]);
const encoder = new TextEncoder();

function frame(chunk: Uint8Array, chunked: boolean): Uint8Array[] {
  if (!chunked) return [chunk];
  if (chunk.byteLength === 0) return [];
  return [encoder.encode(`${chunk.byteLength.toString(16)}\r\n`), chunk, CRLF];
}

function indexOfHeadEnd(buf: Uint8Array, from: number): number {
  for (let i = from; i + 3 < buf.byteLength; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}

const DONE: ReadableStreamReadDoneResult<Uint8Array> = { done: true };
/** The headers of a request already sent (see Exchange#spent). */
const NO_FIELDS: HeaderList = [];
