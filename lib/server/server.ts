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
 * Like `Deno.serve`: `sentUrl(req)` is `http://<Host><target>` with the target exactly as sent (no
 * dot-segment or escape normalisation; the relay's own path checks depend on that); GET/HEAD have
 * `req.body === null`, other methods an empty body when none was framed; `req.signal` aborts only
 * when the client leaves before the response was written in full (`--unstable-no-legacy-abort`).
 * Differences a client can see: abusive sockets are closed (408, 431, idle close, 503 at the cap,
 * 429 over the per-address cap, no progress on a response write);
 * methods are normalised by `new Request` (`get` -> `GET`) and `CONNECT`/`TRACE`/`TRACK` get 400;
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
 * loopback: ~2.5 MB/s of reading resumed blocked writes every 0.6-0.7 s). A response that waits
 * for its source (SSE between events) has no write pending, so it is not watched.
 *
 * Not covered here: a client that sends its body slowly (the relay's body timeout watches that);
 * sockets after a 101 (their new owner reads and writes them).
 *
 * The parts: `connection.ts` (one socket's state machine and request bodies), `exchange.ts` (one
 * exchange's state and signal), `request_head.ts` (parsing), `response_writer.ts` and
 * `response_head.ts` (response framing), `upgrade.ts` (101), `types.ts`. This file accepts, caps,
 * lingers and shuts down. Deno internals: `http/deno_internals.ts` only. The raw target of a
 * request whose URL `new Request` normalised is handed to the pipeline by `http/handoff.ts`
 * (`sentUrl`).
 */

import { overloaded, PerIpCap, tooManyConnections } from "./conn_limit.ts";
import { closeQuietly, Connection, type ConnectionHost, writeAll } from "./connection.ts";
import { errorBytes } from "./response_head.ts";
import { POOL_BUF } from "./response_writer.ts";
import { BodyPool } from "./body_pool.ts";
import { type ConnListener, listenTlsNoDelay } from "./tls_listener.ts";
import { WriteSlabs } from "../http/mod.ts";
import type { DropReason, Http1Handler, Http1Server, Http1ServerOptions } from "./types.ts";
import { errorResponse, toRelayError } from "../errors.ts";
import {
  CONN_SLOT,
  IDLE_SLOT,
  LINGER_SLOT,
  SlotSet,
  type Slotted,
  WATCH_SLOT,
  Watchdog,
  type Watched,
} from "../http/mod.ts";

export type {
  DropReason,
  Http1Handler,
  Http1Server,
  Http1ServerOptions,
  ServeInfo,
} from "./types.ts";
export { upgradeResponse } from "./upgrade.ts";

/** Starts serving on `hostname:port`; throws like `Deno.listen` (e.g. `AddrInUse`). */
export function serveHttp1(options: Http1ServerOptions, handler: Http1Handler): Http1Server {
  return new Server(options, handler);
}

const DEFAULT_HEADER_TIMEOUT_MS = 20_000;
const DEFAULT_IDLE_TIMEOUT_MS = 75_000;
const DEFAULT_SEND_TIMEOUT_MS = 60_000;
const DEFAULT_BODY_TIMEOUT_MS = 60_000;
const DEFAULT_MAX_HEAD_BYTES = 64 * 1024;
/** Pooled read buffers kept for reuse (a connection holds one while a long head arrives). */
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
/** A socket in a lingering close: watched by a deadline, and in the server's set of them. */
type Lingering = Watched & Slotted<typeof LINGER_SLOT> & { readonly conn: Deno.Conn };
/** Where lingering sockets' bytes go; the contents are never looked at. */
const DISCARD = new Uint8Array(16 * 1024);
/**
 * After a connection's last response: how long the client may send nothing before its socket is
 * closed (nginx's `lingering_timeout`); {@link AFTER_TOTAL_FACTOR} times that in all (its
 * `lingering_time`, 30 s against 5 s).
 */
const DEFAULT_AFTER_IDLE_MS = 5000;
const AFTER_TOTAL_FACTOR = 6;

class Server implements Http1Server, ConnectionHost {
  readonly addr: Deno.NetAddr;
  readonly finished: Promise<void>;
  readonly handler: Http1Handler;
  readonly maxConnections: number;
  readonly maxHeadBytes: number;
  /** Host for `req.url` when the request has no Host header. */
  readonly fallbackHost: string;
  readonly headerDog: Watchdog;
  readonly idleDog: Watchdog<typeof IDLE_SLOT>;
  readonly bodyDog: Watchdog;
  /** Watches response writes in progress; null when there is no send deadline. */
  readonly sendDog: Watchdog | null;
  readonly perIp: PerIpCap;
  readonly lingerDog: Watchdog = new Watchdog(LINGER_MS);
  /** Watches sockets closing after their last response ({@link closeAfterResponse}). */
  readonly afterDog: Watchdog;
  readonly #afterTotalMs: number;
  /** Open connections; a {@link SlotSet}, as they come and go per request for some clients. */
  readonly conns: SlotSet<typeof CONN_SLOT, Connection> = new SlotSet(CONN_SLOT);
  /** Sockets closing after their last response: a {@link SlotSet}, for the same reason. */
  readonly #lingering: SlotSet<typeof LINGER_SLOT, Lingering> = new SlotSet(LINGER_SLOT);
  readonly #pool: Uint8Array[] = [];
  readonly bodies: BodyPool = new BodyPool();
  readonly slabs: WriteSlabs = new WriteSlabs();
  readonly #listener: ConnListener;
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
    this.idleDog = new Watchdog(options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS, IDLE_SLOT);
    this.bodyDog = new Watchdog(options.bodyTimeoutMs ?? DEFAULT_BODY_TIMEOUT_MS);
    const sendMs = options.sendTimeoutMs ?? DEFAULT_SEND_TIMEOUT_MS;
    this.sendDog = sendMs > 0 ? new Watchdog(sendMs) : null;
    this.perIp = new PerIpCap(options.maxConnectionsPerIp ?? 0);
    const afterMs = options.lingerTimeoutMs ?? DEFAULT_AFTER_IDLE_MS;
    this.afterDog = new Watchdog(afterMs);
    this.#afterTotalMs = afterMs * AFTER_TOTAL_FACTOR;
    this.#onError = options.onError;
    this.#onAcceptError = options.onAcceptError;
    this.#onDrop = options.onDrop;
    this.finished = new Promise((r) => (this.#resolveFinished = r));
    this.#listener = options.tls
      ? listenTlsNoDelay({
        hostname: options.hostname,
        port: options.port,
        cert: options.tls.cert,
        key: options.tls.key,
        handshakeTimeoutMs: options.headerTimeoutMs ?? DEFAULT_HEADER_TIMEOUT_MS,
        // Handshakes and lingering sockets included: descriptors must not run out (tls_listener.ts).
        maxSockets: this.maxConnections,
        onStall: (err) => this.#onAcceptError?.(err),
      })
      : Deno.listen({ hostname: options.hostname, port: options.port });
    this.addr = this.#listener.addr;
    const h = this.addr.hostname;
    this.fallbackHost = `${h.includes(":") ? `[${h}]` : h}:${this.addr.port}`;
    const ready = this.#listener.ready;
    if (ready === undefined) options.onListen?.(this.addr);
    else {
      // The port was free a moment before (tls_listener.ts): losing it now ends the server.
      ready.then(() => options.onListen?.(this.addr), (err) => {
        try {
          this.#onAcceptError?.(err);
        } catch { /* a failing reporter must not keep the server */ }
        void this.shutdown();
      });
    }
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
      let conn: Deno.Conn<Deno.NetAddr>;
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
        // A no-op on a TLS connection, which comes with Nagle off already (tls_listener.ts).
        (conn as Deno.TcpConn).setNoDelay(true);
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
    this.#holdLingering(conn, this.lingerDog, async () => {
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
    });
  }

  /**
   * Closes a connection whose last response is written while the client may still be sending (a
   * request body the handler left unread, a request pipelined after `Connection: close`), as
   * nginx's lingering close does: the sending side is shut down at once (the client sees the end
   * of the response), then what the client still sends is read and dropped until it closes.
   * Closed at once instead, the socket would answer those bytes with a reset, which discards the
   * response if the client has not read it yet: a client that sends its whole body before it
   * reads (Python's `http.client`) got a broken pipe in place of the answer. `pending` is the
   * connection's read still in flight, if any: it resolves false at the end of the stream.
   * Bounded by `lingerTimeoutMs` of silence and {@link AFTER_TOTAL_FACTOR} times that in all;
   * closed at once while shutting down or with {@link LINGER_MAX} sockets lingering.
   */
  closeAfterResponse(conn: Deno.Conn, pending: Promise<boolean> | null): void {
    if (this.closing) {
      closeQuietly(conn);
      return;
    }
    const dog = this.afterDog;
    const until = performance.now() + this.#afterTotalMs;
    this.#holdLingering(conn, dog, async (item) => {
      await conn.closeWrite();
      if (pending === null || await pending) {
        while (performance.now() < until) {
          if (await conn.read(DISCARD) === null) break;
          item.lastTick = dog.tick;
        }
      }
    });
  }

  /**
   * Keeps `conn` among the lingering sockets while `work` runs, `dog` closing it at its deadline,
   * then closes it; closed at once with {@link LINGER_MAX} sockets lingering.
   */
  #holdLingering(conn: Deno.Conn, dog: Watchdog, work: (item: Watched) => Promise<void>): void {
    if (this.#lingering.size >= LINGER_MAX) {
      closeQuietly(conn);
      return;
    }
    const item: Lingering = {
      lastTick: 0,
      expire: () => closeQuietly(conn),
      conn,
      [WATCH_SLOT]: -1,
      [LINGER_SLOT]: -1,
    };
    this.#lingering.add(item);
    dog.watch(item);
    work(item).catch(() => {/* gone, or closed by the deadline */}).finally(() => {
      dog.unwatch(item);
      closeQuietly(conn);
      this.#lingering.delete(item);
      this.#checkFinished();
    });
  }

  /** A read buffer of {@link POOL_BUF} bytes; give it back once the connection is done with it. */
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
    this.bodyDog.close();
    this.sendDog?.close();
    this.lingerDog.close();
    this.afterDog.close();
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
      for (const item of this.#lingering.toArray()) closeQuietly(item.conn);
      for (const c of this.conns.toArray()) c.shutdown();
      this.#checkFinished();
    }
    return this.finished;
  }
}
