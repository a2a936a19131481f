/**
 * @module body_limit
 * Size and idle limits on a client's request body, enforced while it streams.
 *
 * Owns: `MAX_BODY_MB` (an announced `Content-Length` over the limit is refused before any byte is
 * read; a chunked body is counted as it passes and cut the moment it crosses the limit) and
 * `CLIENT_BODY_TIMEOUT_SEC` (a body that stops arriving for that long is cut). Cutting errors the
 * stream the upstream writer reads from, which aborts the upstream exchange; {@link LimitedBody.error}
 * then tells the caller which client-facing error to answer with.
 * Must never: buffer the body, reorder or hold back bytes, count time the upstream spends not
 * reading (back-pressure) as the client being slow, or set a timer per chunk or per request: one
 * coarse interval per timeout value checks every body in flight, and runs only while there is one.
 */

import { RelayError } from "./errors.ts";

/** Limits for one request body. */
export interface BodyLimitOptions {
  /** Largest body in bytes. */
  maxBytes: number;
  /** Longest wait for the next body bytes from the client, ms. */
  idleTimeoutMs: number;
  /** Milliseconds clock (tests inject one). */
  now?: () => number;
}

/** The 413 answered for a body over the limit. */
export function bodyTooLarge(maxBytes: number): RelayError {
  return new RelayError(
    413,
    "body_too_large",
    `Request body too large: the limit is ${formatSize(maxBytes)} (MAX_BODY_MB).`,
    // The rest of the body is never read: the connection cannot be reused.
    { headers: { connection: "close" } },
  );
}

/** The 408 answered for a body that stopped arriving. */
export function bodyTimeout(idleTimeoutMs: number): RelayError {
  return new RelayError(
    408,
    "body_timeout",
    `The request body stopped arriving for ${
      idleTimeoutMs / 1000
    } s (CLIENT_BODY_TIMEOUT_SEC); the request was aborted.`,
    { headers: { connection: "close" } },
  );
}

/** Null when the announced `Content-Length` (if any) is within `maxBytes`, else the 413. */
export function checkAnnouncedLength(headers: Headers, maxBytes: number): RelayError | null {
  const raw = headers.get("content-length");
  if (raw === null) return null;
  const n = Number(raw);
  return Number.isFinite(n) && n > maxBytes ? bodyTooLarge(maxBytes) : null;
}

/** Checks every watched body at `limitMs / 10` (5 ms to 1 s) resolution; idle when empty. */
class IdleSweeper {
  readonly #items = new Set<LimitedBody>();
  readonly #everyMs: number;
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(limitMs: number) {
    this.#everyMs = Math.min(1000, Math.max(5, Math.floor(limitMs / 10)));
  }

  add(body: LimitedBody): void {
    this.#items.add(body);
    if (this.#timer === undefined) {
      this.#timer = setInterval(() => this.#sweep(), this.#everyMs);
      Deno.unrefTimer(this.#timer);
    }
  }

  delete(body: LimitedBody): void {
    this.#items.delete(body);
    if (this.#items.size === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }

  #sweep(): void {
    for (const body of this.#items) body.checkIdle();
  }
}

const sweepers = new Map<number, IdleSweeper>();

function sweeperFor(limitMs: number): IdleSweeper {
  let s = sweepers.get(limitMs);
  if (s === undefined) {
    s = new IdleSweeper(limitMs);
    sweepers.set(limitMs, s);
  }
  return s;
}

/**
 * A pass-through view of a request body that counts bytes and watches for silence. Read
 * {@link stream} instead of the original; when a limit trips, `stream` errors with the
 * {@link RelayError} also kept in {@link error}, and the original body is cancelled.
 */
export class LimitedBody {
  /** The body to forward. */
  readonly stream: ReadableStream<Uint8Array>;
  /** Set once a limit tripped: the error to answer the client with. */
  error: RelayError | null = null;
  /** Bytes passed so far. */
  bytes = 0;
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #opts: Required<BodyLimitOptions>;
  #ctrl: ReadableStreamDefaultController<Uint8Array> | null = null;
  /** When the pending read of the client's body started; null while not waiting on the client. */
  #waitingSince: number | null = null;
  #sweeper: IdleSweeper | null = null;
  #ended = false;

  constructor(source: ReadableStream<Uint8Array>, options: BodyLimitOptions) {
    this.#reader = source.getReader();
    this.#opts = { now: Date.now, ...options };
    this.stream = new ReadableStream<Uint8Array>({
      start: (ctrl) => {
        this.#ctrl = ctrl;
      },
      pull: (ctrl) => this.#pull(ctrl),
      cancel: (reason) => {
        this.#end();
        this.#reader.cancel(reason).catch(() => {});
      },
    }, { highWaterMark: 0 });
  }

  async #pull(ctrl: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    this.#waitingSince = this.#opts.now();
    if (this.#sweeper === null && !this.#ended) {
      this.#sweeper = sweeperFor(this.#opts.idleTimeoutMs);
      this.#sweeper.add(this);
    }
    let r: ReadableStreamReadResult<Uint8Array>;
    try {
      r = await this.#reader.read();
    } catch (err) {
      this.#waitingSince = null;
      if (this.error === null) {
        this.#end();
        ctrl.error(err);
      }
      return;
    }
    this.#waitingSince = null;
    if (this.error !== null) return; // tripped while the read was pending: stream already errored
    if (r.done) {
      this.#end();
      ctrl.close();
      return;
    }
    this.bytes += r.value.byteLength;
    if (this.bytes > this.#opts.maxBytes) {
      this.#trip(bodyTooLarge(this.#opts.maxBytes));
      return;
    }
    ctrl.enqueue(r.value);
  }

  /** Called by the sweeper: trips the timeout when the client has been silent too long. */
  checkIdle(): void {
    const since = this.#waitingSince;
    if (since === null || this.#ended) return; // not waiting on the client right now
    if (this.#opts.now() - since >= this.#opts.idleTimeoutMs) {
      this.#trip(bodyTimeout(this.#opts.idleTimeoutMs));
    }
  }

  #trip(err: RelayError): void {
    if (this.error !== null) return;
    this.error = err;
    this.#end();
    try {
      this.#ctrl?.error(err);
    } catch { /* already closed */ }
    this.#reader.cancel(err).catch(() => {});
  }

  #end(): void {
    this.#ended = true;
    this.#sweeper?.delete(this);
    this.#sweeper = null;
  }
}

function formatSize(bytes: number): string {
  const mb = bytes / (1024 * 1024);
  return mb >= 1 ? `${Math.round(mb * 100) / 100} MB` : `${bytes} bytes`;
}
