/**
 * @module http2
 * HTTP/2 to HTTPS upstreams that offer it by ALPN: a few multiplexed sessions instead of one socket
 * per request in flight.
 *
 * The wire is the relay's own (`h2_session.ts`, with `hpack.ts`), as for HTTP/1.1: `fetch`
 * decodes gzip/br/zstd bodies while keeping `content-encoding` (see `http1.ts`), and Deno's
 * `node:http2` cost about twice the CPU per request of the own session (bench/h2_client.ts,
 * docs/BENCHMARKS_LOG.md "Eleventh sitting").
 *
 * Owns: sessions per upstream (opened on demand, closed when idle, replaced after GOAWAY or an
 * error), the mapping of one relay exchange onto one stream, and the same `UpstreamResponse`
 * contract as the HTTP/1.1 client.
 * Must never: decode content encodings, leave a failed stream unanswered, or resend a request once
 * A's response head arrived.
 */

import {
  type AltTransport,
  type Attempt,
  BODILESS_METHODS,
  endOnce,
  type Endpoint,
  errorBody,
  type ExchangeOptions,
  type ExchangeRequest,
  resendIfStale,
  SPARE_FAILURE_LIMIT,
  type SpareOptions,
  type TransportStats,
  UpstreamError,
  type UpstreamResponse,
} from "./http1.ts";
import {
  type BodyReaderLike,
  concat,
  isEventStream,
  WATCH_SLOT,
  type Watched,
} from "../http/mod.ts";
import { IdleSweeper } from "./sweeper.ts";
import {
  type H2Fields,
  type H2Handler,
  H2Session,
  type H2Stream,
  H2StreamError,
} from "./h2_session.ts";

/** RST_STREAM code for a stream the relay gives up on (RFC 9113 §7). */
const CANCEL = 0x8;

/** Longest wait after connect for A's SETTINGS (its stream limit) before a new session is used. */
const SETTINGS_WAIT_MS = 300;
/** Longest wait for any bytes from A after a PING that asks whether the path is alive. */
const PING_WAIT_MAX_MS = 10_000;
/** Silence from A, with streams open, after which a PING checks the path (a cheap frame). */
const SILENCE_PING_MS = 30_000;

/** Streams opened on one session before another session is opened beside it. */
const DEFAULT_STREAMS_PER_SESSION = 100;
/** Bytes queued from A before the stream is paused until the client reads. */
const QUEUE_HIGH = 64 * 1024;

/** Options for {@link H2Pool}. */
export interface H2PoolOptions {
  connectTimeoutMs: number;
  /** Sessions with no open stream are closed after this long. */
  idleTimeoutMs: number;
  caCerts?: string[] | undefined;
  /** Most streams per session before another one is opened (A's own limit applies too). */
  maxStreamsPerSession?: number;
  /**
   * Free stream slots kept ready: a new session is opened in the background before a request
   * takes the last free slot. A session kept for this is sent HTTP/2 PINGs while it has no
   * stream, instead of being closed as idle. `warm` is not used here.
   */
  spares?: SpareOptions | undefined;
  /**
   * While streams are open and nothing came from A for this long, a PING asks whether the path to
   * A is still there (see {@link H2Pool.suspect}). Default {@link SILENCE_PING_MS}.
   */
  silencePingMs?: number;
}

/** One HTTP/2 connection to A and its open stream count. */
class Session {
  readonly s: H2Session;
  active = 0;
  /** Streams started on this session so far; > 1 means a later one reuses it. */
  uses = 0;
  idleSince = Date.now();
  /** GOAWAY seen, errored or closed: takes no new streams. */
  draining = false;
  /** Opened in the background and no stream started on it yet. */
  unusedSpare = false;
  /** The wait for any answer to a PING that asks whether A is still there (H2Pool.suspect). */
  pingTimer: ReturnType<typeof setTimeout> | undefined = undefined;
  /** The session's read count at the last sweep, and since when it has not moved. */
  seenReads = 0;
  quietSince = Date.now();

  constructor(s: H2Session) {
    this.s = s;
  }

  capacity(limit: number): number {
    const remote = this.s.remoteMaxStreams;
    const max = remote !== null && remote > 0 ? Math.min(remote, limit) : limit;
    return max - this.active;
  }
}

/** The HTTP/2 sessions to one upstream. */
export class H2Pool implements AltTransport {
  readonly protocol = "h2" as const;
  readonly endpoint: Endpoint;
  readonly #opts: H2PoolOptions;
  readonly #sessions: Session[] = [];
  #created = 0;
  #reused = 0;
  /** A's SETTINGS_MAX_CONCURRENT_STREAMS, as last seen on any session. */
  #remoteMax: number | null = null;
  #streams = 0;
  readonly #sweeper: IdleSweeper;
  #closed = false;
  /** Sessions being opened, with the slots already promised on each. */
  readonly #opening = new Set<{ promise: Promise<Session>; reserved: number }>();
  #coldStarts = 0;
  /** Sessions being opened in the background, as spare capacity. */
  #spareOpening = 0;
  #sparesOpened = 0;
  #spareFailures = 0;
  /** Set by {@link closeIdle} (shutdown): no more background opens. */
  #draining = false;

  constructor(endpoint: Endpoint, options: H2PoolOptions) {
    this.endpoint = endpoint;
    this.#opts = options;
    this.#sweeper = new IdleSweeper(options.idleTimeoutMs, (now) => this.#sweep(now));
  }

  stats(): TransportStats & { sessions: number } {
    let idle = 0;
    for (const s of this.#sessions) if (s.active === 0 && !s.draining) idle++;
    return {
      idle,
      active: this.#streams,
      created: this.#created,
      reused: this.#reused,
      coldStarts: this.#coldStarts,
      spares: {
        target: this.#spareTarget(),
        ready: this.#freeSlots(false),
        opening: this.#spareOpening,
        opened: this.#sparesOpened,
        failuresInARow: this.#spareFailures,
      },
      sessions: this.#sessions.length,
    };
  }

  get #configured(): number {
    return this.#opts.maxStreamsPerSession ?? DEFAULT_STREAMS_PER_SESSION;
  }

  #usable(s: Session): boolean {
    return !s.draining && !s.s.closed && s.capacity(this.#configured) > 0;
  }

  /** Stream slots a request could take now, plus (with `opening`) those on sessions being opened. */
  #freeSlots(opening: boolean, except?: Session): number {
    let free = 0;
    for (const s of this.#sessions) {
      if (s !== except && this.#usable(s)) free += s.capacity(this.#configured);
    }
    if (opening) {
      const limit = Math.min(this.#configured, this.#remoteMax ?? this.#configured);
      for (const o of this.#opening) free += Math.max(0, limit - o.reserved);
    }
    return free;
  }

  /** Free stream slots to keep ready now: 0 when spares are off or must not be opened. */
  #spareTarget(): number {
    const sp = this.#opts.spares;
    if (
      sp === undefined || sp.count <= 0 || this.#closed || this.#draining ||
      this.#spareFailures >= (sp.failureLimit ?? SPARE_FAILURE_LIMIT)
    ) {
      return 0;
    }
    return sp.live === undefined || sp.live() ? sp.count : 0;
  }

  /** Opens a session in the background when the free slots fall below the spare target. */
  #fill(): void {
    if (this.#freeSlots(true) >= this.#spareTarget()) return;
    const entry = { promise: this.#open(), reserved: 0 };
    this.#opening.add(entry);
    this.#spareOpening++;
    entry.promise.then((s) => {
      this.#sparesOpened++;
      // It waits unused like an idle session, and may be gone when the first stream opens on it:
      // counting it as used lets that request be resent (see resendIfStale).
      s.uses = Math.max(s.uses, 1);
      s.unusedSpare = s.active === 0;
      s.idleSince = Date.now();
    }, () => {
      // Counted, and tried again on the sweeper's next tick (or request), up to the limit.
      this.#spareFailures++;
    }).finally(() => {
      this.#opening.delete(entry);
      this.#spareOpening--;
    });
    this.#sweeper.start();
  }

  /**
   * A session with a stream slot reserved for the caller (who must call {@link end} once): an
   * open session with room, else one being opened that still has room, else a new one. Slots are
   * counted here, not when the stream starts, so a burst of requests spreads over as many sessions
   * as it needs instead of piling onto the first.
   */
  async acquire(fresh: boolean, probe = false): Promise<Session> {
    const configured = this.#configured;
    const usable = (s: Session) => this.#usable(s);
    let cold = false;
    while (!fresh) {
      for (const s of this.#sessions) {
        if (usable(s)) {
          this.#begin(s, probe);
          return s;
        }
      }
      if (!probe && !cold) {
        cold = true;
        this.#coldStarts++;
      }
      // A session being opened takes as many streams as A allowed on earlier sessions.
      const limit = Math.min(configured, this.#remoteMax ?? configured);
      let joined: { promise: Promise<Session>; reserved: number } | null = null;
      for (const o of this.#opening) {
        if (o.reserved < limit) {
          joined = o;
          break;
        }
      }
      if (joined === null) break;
      joined.reserved++;
      const s = await joined.promise;
      if (usable(s)) {
        this.#begin(s, probe);
        return s;
      }
      // A allows fewer streams than were counted on: look again.
    }
    const entry = { promise: this.#open(), reserved: 1 };
    this.#opening.add(entry);
    try {
      const s = await entry.promise;
      // A session opened for a request works: background opens may resume.
      this.#spareFailures = 0;
      this.#begin(s, probe);
      return s;
    } finally {
      this.#opening.delete(entry);
    }
  }

  /**
   * Takes over the connection on which A chose h2 by ALPN as the first session, opened like any
   * other (A's SETTINGS awaited briefly); the first requests join it instead of opening their own.
   */
  adopt(conn: Deno.Conn): void {
    if (this.#closed) {
      try {
        conn.close();
      } catch { /* closed */ }
      return;
    }
    const entry = { promise: this.#open(conn), reserved: 0 };
    this.#opening.add(entry);
    // A failure reaches the requests that joined it; a later request opens a session of its own.
    entry.promise.catch(() => {}).finally(() => this.#opening.delete(entry));
  }

  /** A new session: on `conn` when given (already up, h2 chosen), else on a new connection. */
  #open(conn?: Deno.Conn): Promise<Session> {
    if (this.#closed) return Promise.reject(new UpstreamError("connect", "pool closed"));
    const ep = this.endpoint;
    return new Promise<Session>((resolve, reject) => {
      let settled = false;
      let session: Session | null = null;
      let settingsTimer: ReturnType<typeof setTimeout> | undefined;
      const timer = setTimeout(() => {
        fail(new UpstreamError("connect_timeout", "connect timed out"));
      }, this.#opts.connectTimeoutMs);
      const fail = (err: UpstreamError) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        clearTimeout(settingsTimer);
        session?.s.destroy();
        reject(err);
      };
      const ready = () => {
        if (settled || session === null) return;
        if (session.s.closed) {
          fail(new UpstreamError("connect", "session closed before it was ready"));
          return;
        }
        settled = true;
        clearTimeout(timer);
        clearTimeout(settingsTimer);
        const max = session.s.remoteMaxStreams;
        if (max !== null && max > 0) this.#remoteMax = max;
        this.#created++;
        this.#sessions.push(session);
        this.#sweeper.start();
        resolve(session);
      };
      const opts = { hostname: ep.hostname, port: ep.port, caCerts: this.#opts.caCerts };
      const connecting = conn
        ? Promise.resolve().then(() => H2Session.over(conn, opts))
        : H2Session.connect(opts);
      connecting.then((s) => {
        // Too late: the caller has its timeout already.
        if (settled) return s.destroy();
        const made = new Session(s);
        session = made;
        s.onGoaway = () => {
          made.draining = true;
        };
        s.onClose = () => {
          made.draining = true;
          clearTimeout(made.pingTimer);
          this.#remove(made);
          // A spare A closed before any use counts as a failed open: an upstream that accepts
          // sessions only to close them must not be reconnected to in a loop.
          if (made.unusedSpare) {
            made.unusedSpare = false;
            this.#spareFailures++;
          }
          fail(new UpstreamError("connect", "session closed before it was ready"));
        };
        // The stream limit comes in A's first SETTINGS, just after the handshake: wait for it
        // (briefly), so that a burst does not open more streams than A accepts.
        settingsTimer = setTimeout(ready, SETTINGS_WAIT_MS);
        void s.settled.then(ready);
      }, (err: unknown) => {
        // H2ConnectError says which step failed (TCP, TLS, or ALPN).
        const message = err instanceof Error ? err.message : "connect failed";
        fail(new UpstreamError("connect", message, { cause: err }));
      });
    });
  }

  #remove(session: Session): void {
    const i = this.#sessions.indexOf(session);
    if (i >= 0) this.#sessions.splice(i, 1);
  }

  #begin(session: Session, probe: boolean): void {
    session.unusedSpare = false;
    session.active++;
    session.uses++;
    if (session.uses > 1) this.#reused++;
    this.#streams++;
    // A probe's stream ends at once: it is no reason to open more capacity.
    if (!probe) this.#fill();
  }

  /** Counts a stream ending on `session`. */
  end(session: Session): void {
    session.active--;
    this.#streams--;
    if (session.active === 0) session.idleSince = Date.now();
    if (session.active === 0 && (session.draining || this.#closed)) this.#drop(session);
  }

  #drop(session: Session): void {
    session.unusedSpare = false;
    session.draining = true;
    this.#remove(session);
    try {
      session.s.close();
    } catch { /* already closed */ }
  }

  exchange(req: ExchangeRequest, options: ExchangeOptions): Promise<UpstreamResponse> {
    return exchange2(this, req, options);
  }

  /** Closes sessions with no open stream and opens no more spares (shutdown). */
  closeIdle(): void {
    this.#draining = true;
    for (const s of [...this.#sessions]) if (s.active === 0) this.#drop(s);
  }

  close(): void {
    this.#closed = true;
    this.closeIdle();
    for (const s of this.#sessions) {
      s.draining = true;
      clearTimeout(s.pingTimer);
    }
    this.#sweeper.stop();
  }

  /**
   * A stream on `session` timed out, or its streams have heard nothing from A for a while. A may
   * only be slow (thinking before the first token), or the path to it may be gone without a word:
   * a route that drops packets leaves the TCP connection "open" for many minutes, and every request
   * on it would wait for its own timeout (`UPSTREAM_TIMEOUT_SEC`, 10 minutes by default), where
   * HTTP/1.1 opens a new connection for the next one. A PING tells the two apart: when nothing at
   * all comes from A within the connect timeout (capped at {@link PING_WAIT_MAX_MS}), the session
   * is destroyed, its streams fail, and the next requests open a new one.
   */
  suspect(session: Session): void {
    if (session.pingTimer !== undefined || session.s.closed) return;
    const mark = session.s.reads;
    try {
      session.s.ping();
    } catch {
      return; // closing already
    }
    session.pingTimer = setTimeout(() => {
      session.pingTimer = undefined;
      if (session.s.reads !== mark || session.s.closed) return;
      session.draining = true;
      session.s.destroy(new Error("A did not answer a PING"));
    }, Math.min(this.#opts.connectTimeoutMs, PING_WAIT_MAX_MS));
  }

  /** One sweep: drops sessions idle past the timeout or closed, keeps spare capacity alive. */
  #sweep(now: number): boolean {
    const cutoff = now - this.#opts.idleTimeoutMs;
    const pingBefore = now - this.#opts.idleTimeoutMs / 2;
    const target = this.#spareTarget();
    const silence = this.#opts.silencePingMs ?? SILENCE_PING_MS;
    for (const s of [...this.#sessions]) {
      const reads = s.s.reads;
      if (reads !== s.seenReads) {
        s.seenReads = reads;
        s.quietSince = now;
      } else if (s.active > 0 && now - s.quietSince >= silence) {
        s.quietSince = now;
        this.suspect(s);
      }
      if (s.active !== 0) continue;
      if (s.draining || s.s.closed) {
        this.#drop(s);
      } else if (target > 0 && s.idleSince <= pingBefore && this.#freeSlots(true, s) < target) {
        // The spare capacity: a PING (no request to A) keeps it from looking idle to A, and an
        // unanswered one drops it before a request is sent on a path that went silent.
        s.idleSince = now;
        this.suspect(s);
      } else if (s.idleSince <= cutoff) {
        this.#drop(s);
      }
    }
    // Replaces a spare lost to GOAWAY or an error.
    this.#fill();
    return this.#sessions.length > 0 || this.#opening.size > 0 || this.#spareTarget() > 0;
  }
}

/**
 * Sends one request over HTTP/2. Like `http1.exchange`: a request that failed on a reused session
 * before A's response head arrived is sent once more on a new session, if its body is replayable
 * (A sent GOAWAY or dropped an idle session just as the stream was opened).
 */
export async function exchange2(
  pool: H2Pool,
  req: ExchangeRequest,
  options: ExchangeOptions,
): Promise<UpstreamResponse> {
  return await resendIfStale(req, options, async (fresh) => {
    const session = await pool.acquire(fresh, options.probe === true);
    return new StreamExchange(pool, session, req, options);
  });
}

/**
 * The request's field list for HTTP/2: the pseudo-headers, then the list `headers.ts` built (names
 * lower-case, and already without `host`, the client's framing and the hop-by-hop fields HTTP/2
 * forbids, RFC 9113 §8.2.2), in the client's order, repeated fields apart. `content-length` is the
 * writer's, as over HTTP/1.1: the length of the body that will be sent, when it is known.
 */
export function h2RequestHeaders(req: ExchangeRequest, authority: string): H2Fields {
  const out: H2Fields = [
    [":method", req.method],
    [":scheme", "https"],
    [":authority", authority],
    [":path", req.target],
  ];
  for (const [name, value] of req.headers) out.push([name, value]);
  const length = req.body === null ? 0 : req.body.length;
  if (length !== null && (length > 0 || !BODILESS_METHODS.has(req.method))) {
    out.push(["content-length", String(length)]);
  }
  return out;
}

class StreamExchange implements Watched, Attempt {
  [WATCH_SLOT] = -1;
  lastTick = 0;
  gotHead = false;
  abortKind: "timeout" | "aborted" | null = null;
  readonly #pool: H2Pool;
  readonly #session: Session;
  readonly #req: ExchangeRequest;
  readonly #opts: ExchangeOptions;
  #stream: H2Stream | null = null;
  #writeDone = false;
  #finished = false;
  /**
   * A reset the stream itself, on a session that is still alive, with a code other than
   * REFUSED_STREAM: A saw the request (and may have acted on it), so it is never sent again.
   */
  #peerReset = false;

  constructor(pool: H2Pool, session: Session, req: ExchangeRequest, opts: ExchangeOptions) {
    this.#pool = pool;
    this.#session = session;
    this.#req = req;
    this.#opts = opts;
  }

  get reused(): boolean {
    return this.#session.uses > 1;
  }

  get answered(): boolean {
    return this.gotHead || this.#peerReset;
  }

  expire(): void {
    this.abortKind ??= "timeout";
    this.#stream?.cancel(CANCEL);
    this.#pool.suspect(this.#session);
  }

  #onAbort = (): void => {
    this.abortKind ??= "aborted";
    this.#stream?.cancel(CANCEL);
  };

  #classify(err: unknown): UpstreamError {
    if (this.abortKind === "timeout") {
      return new UpstreamError("timeout", "upstream silent too long");
    }
    if (this.abortKind === "aborted") {
      return new UpstreamError("aborted", "client went away", { cause: err });
    }
    if (err instanceof UpstreamError) return err;
    const code = err instanceof H2StreamError && err.code !== null ? err.code : "?";
    return new UpstreamError("reset", `stream failed (code ${code})`, { cause: err });
  }

  async run(): Promise<UpstreamResponse> {
    const body = this.#req.body;
    if (body === null) return await this.#open(null, null);
    // HEADERS wait for the body's first chunk, as the HTTP/1.1 client's head does: then HEADERS
    // and DATA, with END_STREAM when the length says the chunk is all of it, leave in one write
    // (one TLS record, one syscall) where a JSON request took three.
    const next = body.cursor();
    let first: Uint8Array | null;
    try {
      first = await next();
    } catch (err) {
      this.#finish(false);
      throw err;
    }
    if (this.#opts.signal?.aborted) {
      this.#finish(false);
      throw new UpstreamError("aborted", "client went away");
    }
    return await this.#open(next, first);
  }

  /** Opens the stream: `first` is the body's first chunk (null: the body is empty or absent). */
  #open(
    next: (() => Promise<Uint8Array | null>) | null,
    first: Uint8Array | null,
  ): Promise<UpstreamResponse> {
    const { watchdog, signal } = this.#opts;
    const { method, body } = this.#req;
    return new Promise<UpstreamResponse>((resolve, reject) => {
      // Body chunks queued from A until the client's side pulls them.
      const queue: Uint8Array[] = [];
      let queued = 0;
      let ended = false;
      let failure: UpstreamError | null = null;
      let wake: (() => void) | null = null;
      let res: UpstreamResponse | null = null;
      const notify = () => {
        const w = wake;
        wake = null;
        w?.();
      };
      // Assigned just below, before A can answer.
      let stream!: H2Stream;
      const handler: H2Handler = {
        onHead: (status, fields, endStream) => {
          this.gotHead = true;
          this.lastTick = watchdog.tick;
          signal?.removeEventListener("abort", this.#onAbort);
          if (this.#writeDone) this.#req.body?.forget();
          const noBody = endStream || method === "HEAD" || status === 204 || status === 304;
          res = {
            status,
            statusText: "",
            headers: fields,
            body: null,
            complete: null,
            attempts: 1,
            reused: this.reused,
          };
          if (noBody) {
            // The stream's end follows; nothing more to watch.
            watchdog.unwatch(this);
            resolve(res);
            return;
          }
          const r = res;
          // After the frames of this read: a body that came whole with its head (a JSON answer)
          // is handed over as bytes, as the HTTP/1.1 client does, with no stream to read it
          // through. An event stream stays a stream even when it all came at once.
          queueMicrotask(() => {
            if (ended && failure === null && !isEventStream(fields)) {
              r.complete = concat(queue.splice(0)) as Uint8Array<ArrayBuffer>;
              resolve(r);
              return;
            }
            [r.body, r.reader] = this.#body(
              queue,
              () => {
                const chunk = queue.shift();
                if (chunk !== undefined) {
                  queued -= chunk.byteLength;
                  if (queued < QUEUE_HIGH && stream.paused) stream.resume();
                }
                return chunk;
              },
              () => (ended ? null : failure ?? undefined),
              (w) => (wake = w),
            );
            resolve(r);
          });
        },
        onData: (chunk) => {
          this.lastTick = watchdog.tick;
          queue.push(chunk);
          queued += chunk.byteLength;
          if (queued >= QUEUE_HIGH && !stream.paused) stream.pause();
          notify();
        },
        onEnd: () => {
          // A's side is done: the slot goes back now, not when the client has read it all.
          ended = true;
          this.#finish();
          notify();
        },
        onError: (err) => {
          const e = this.#classify(err);
          if (res === null) {
            if (err.byPeer && !err.refused && this.abortKind === null) this.#peerReset = true;
            // The body stays readable: exchange2() may resend it on a new session.
            this.#finish(false);
            signal?.removeEventListener("abort", this.#onAbort);
            reject(e);
            return;
          }
          failure ??= e;
          this.#finish();
          notify();
        },
      };
      try {
        stream = this.#session.s.request(
          h2RequestHeaders(this.#req, this.#pool.endpoint.hostHeader),
          first === null,
          handler,
        );
      } catch (err) {
        // The session went away between acquire and request: nothing reached A.
        this.#session.draining = true;
        this.#finish(false);
        reject(new UpstreamError("reset", "session unusable", { cause: err }));
        return;
      }
      this.#stream = stream;
      watchdog.watch(this);
      signal?.addEventListener("abort", this.#onAbort);
      if (body !== null && next !== null && first !== null) {
        const room = stream.write(first);
        const whole = first.byteLength === body.length;
        if (whole) stream.end();
        this.#write(stream, next, room, whole).then(
          () => {
            this.#writeDone = true;
            if (this.gotHead) body.forget();
          },
          (err) => {
            // A client whose body broke is gone: the stream is cancelled and the caller sees why.
            if (err instanceof UpstreamError && err.kind === "body") {
              this.abortKind ??= "aborted";
              stream.cancel(CANCEL);
            }
          },
        );
      } else {
        this.#writeDone = true;
      }
    });
  }

  /**
   * The response body over the chunks queued from A, twice: a direct reader (no stream machinery
   * per chunk) for a server that writes the body itself, and a stream for everyone else; whichever
   * reads first takes the body. `take` gives the next chunk, `over` says whether A ended (null) or
   * failed (an error) once the queue is empty, `sleep` parks the reader until the next chunk or end.
   */
  #body(
    queue: Uint8Array[],
    take: () => Uint8Array | undefined,
    over: () => UpstreamError | null | undefined,
    sleep: (wake: () => void) => void,
  ): [ReadableStream<Uint8Array>, BodyReaderLike] {
    const tap = this.#opts.tap;
    const end = endOnce(tap);
    /** The next chunk, the end (DONE) or A's failure (thrown); undefined while there is none yet. */
    const poll = (): ReadableStreamReadResult<Uint8Array> | undefined => {
      const chunk = take();
      if (chunk !== undefined) {
        tap?.chunk(chunk);
        return { done: false, value: chunk };
      }
      const why = over();
      if (why === undefined) return undefined;
      this.#finish();
      end(why);
      if (why === null) return DONE;
      throw why;
    };
    const next = (): Promise<ReadableStreamReadResult<Uint8Array>> => {
      let got: ReadableStreamReadResult<Uint8Array> | undefined;
      try {
        got = poll();
      } catch (err) {
        return Promise.reject(err);
      }
      return got !== undefined ? Promise.resolve(got) : new Promise<void>(sleep).then(next);
    };
    const cancel = (): void => {
      this.abortKind ??= "aborted";
      this.#stream?.cancel(CANCEL);
      this.#finish();
      end(new UpstreamError("aborted", "client went away"));
    };
    const reader: BodyReaderLike = {
      read: next,
      cancel: () => {
        cancel();
        return Promise.resolve();
      },
      ready: () => queue.length > 0 || over() !== undefined,
    };
    const stream = new ReadableStream<Uint8Array>({
      pull: async (ctrl) => {
        try {
          const got = await next();
          if (got.done) ctrl.close();
          else ctrl.enqueue(got.value);
        } catch (err) {
          errorBody(ctrl, err as UpstreamError, this.abortKind);
        }
      },
      cancel,
    }, { highWaterMark: 0 });
    return [stream, reader];
  }

  /**
   * Writes the body after its first chunk (`room`: whether that write left room for more;
   * `ended`: the first chunk was the whole announced length and END_STREAM is sent). Reads to the
   * end either way, so that the body source knows it is done and can drop its kept copy.
   */
  async #write(
    stream: H2Stream,
    next: () => Promise<Uint8Array | null>,
    room: boolean,
    ended: boolean,
  ): Promise<void> {
    if (!room) await stream.drain();
    let c: Uint8Array | null;
    while ((c = await next()) !== null) {
      if (this.#finished) return;
      if (ended) throw new UpstreamError("body", "request body longer than its length");
      this.lastTick = this.#opts.watchdog.tick;
      if (!stream.write(c)) await stream.drain();
    }
    if (!this.#finished && !ended) stream.end();
  }

  #finish(cancelBody = true): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#opts.watchdog.unwatch(this);
    this.#pool.end(this.#session);
    if (!this.#writeDone && cancelBody) this.#req.body?.cancel();
  }
}

const DONE: ReadableStreamReadDoneResult<Uint8Array> = { done: true };
