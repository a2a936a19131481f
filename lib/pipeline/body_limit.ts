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

import { RelayError, relayError } from "../errors.ts";
import { trimOws } from "../http/mod.ts";
import type { BodyReader } from "../upstream/mod.ts";
import { type LentBytes, WATCH_SLOT, Watchdog, type Watched } from "../http/mod.ts";

/** Limits for one request body. */
export interface BodyLimitOptions {
  /** Largest body in bytes. */
  maxBytes: number;
  /** Longest wait for the next body bytes from the client, ms. */
  idleTimeoutMs: number;
  /**
   * Takes the whole body at once (`() => req.bytes()`), for a small body of announced length; or
   * the bytes the server lent ({@link release} gives them back).
   */
  whole?: (() => Promise<Uint8Array>) | LentBytes;
  /**
   * Without `whole`: gives the memory under the streamed chunks back to the server
   * (`takeBodyRelease`). Made callable through {@link LimitedBody.release} only once the stream
   * ended.
   */
  streamRelease?: (() => void) | null;
}

/** The 413 answered for a body over the limit. */
export function bodyTooLarge(maxBytes: number): RelayError {
  return relayError("body_too_large", { maxBytes });
}

/** The 408 answered for a body that stopped arriving. */
export function bodyTimeout(idleTimeoutMs: number): RelayError {
  return relayError("body_timeout", { idleTimeoutMs });
}

const DIGITS = /^\d{1,15}$/;

/**
 * The length a `Content-Length` value announces (null: no header). Servers join repeated lines
 * into one list (`5, 5`): equal members are one length (RFC 9110 §8.6); anything else is a 400,
 * so a list is never forwarded or read as a number it is not.
 */
export function announcedLength(value: string | null): number | null {
  if (value === null) return null;
  // Nearly always one plain number: no list to split.
  if (DIGITS.test(value)) return Number(value);
  let length: number | null = null;
  for (const part of value.split(",")) {
    const digits = trimOws(part);
    const n = DIGITS.test(digits) ? Number(digits) : NaN;
    if (Number.isNaN(n) || (length !== null && n !== length)) {
      throw relayError("bad_request", { reason: "announced_length" });
    }
    length = n;
  }
  return length;
}

/** Null when the announced `Content-Length` (null: none) is within `maxBytes`, else the 413. */
export function checkAnnouncedLength(
  announced: number | null,
  maxBytes: number,
): RelayError | null {
  if (announced === null) return null;
  return Number.isFinite(announced) && announced > maxBytes ? bodyTooLarge(maxBytes) : null;
}

/** One shared watchdog per timeout value (the same mechanism as upstream silence). */
const watchdogs = new Map<number, Watchdog>();

function watchdogFor(limitMs: number): Watchdog {
  let w = watchdogs.get(limitMs);
  if (w === undefined) {
    w = new Watchdog(limitMs);
    watchdogs.set(limitMs, w);
  }
  return w;
}

/**
 * A checked view of a request body that counts bytes and watches for silence. Forward it as a
 * {@link BodyReader} (or read {@link stream}); when a limit trips, reading fails with the
 * {@link RelayError} also kept in {@link error}, and the client's body is cancelled.
 *
 * With `whole` (for a small body of announced length), the body is taken in one piece through
 * Deno's full-body fast path instead of a chunk stream: measured here, an extra stream layer cost
 * more CPU than the rest of a small request's handling.
 */
export class LimitedBody implements BodyReader, Watched {
  [WATCH_SLOT] = -1;
  /** Set once a limit tripped: the error to answer the client with. */
  error: RelayError | null = null;
  /** Bytes passed so far. */
  bytes = 0;
  /** Null once the body ended: a stream answered to it can last minutes and keep the Request. */
  #sourceOf: (() => ReadableStream<Uint8Array>) | null;
  #reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  readonly #opts: Omit<BodyLimitOptions, "whole">;
  readonly #watchdog: Watchdog;
  #whole: (() => Promise<Uint8Array>) | LentBytes | undefined;
  /** Gives the lent body back; set once it was handed out. */
  #release: (() => void) | null = null;
  #ended = false;
  /** Watchdog tick of the last activity; only watched while a read waits on the client. */
  lastTick = 0;
  /** Rejects the read in progress; set only while one is. */
  #rejectPending: ((err: RelayError) => void) | null = null;
  #stream: ReadableStream<Uint8Array> | null = null;
  #wholeStarted = false;
  #wholeDone = false;

  /**
   * @param source The client's body, or a getter for it: with `whole`, `req.body` must not be
   *   touched (creating the stream turns Deno's full-body fast path off).
   */
  constructor(
    source: ReadableStream<Uint8Array> | (() => ReadableStream<Uint8Array>),
    options: BodyLimitOptions,
  ) {
    this.#sourceOf = typeof source === "function" ? source : () => source;
    const { whole, ...rest } = options;
    this.#whole = whole;
    this.#opts = rest;
    this.#watchdog = watchdogFor(rest.idleTimeoutMs);
  }

  /** The checked body as a stream (a layer {@link read} avoids). */
  get stream(): ReadableStream<Uint8Array> {
    this.#stream ??= new ReadableStream<Uint8Array>({
      pull: async (ctrl) => {
        try {
          const chunk = await this.read();
          if (chunk === null) ctrl.close();
          else ctrl.enqueue(chunk);
        } catch (err) {
          ctrl.error(err);
        }
      },
      cancel: (reason) => this.cancel(reason),
    }, { highWaterMark: 0 });
    return this.#stream;
  }

  /** The next chunk of the body, null at its end. Rejects with the limit's error when one trips. */
  async read(): Promise<Uint8Array | null> {
    if (this.error !== null) throw this.error;
    if (this.#ended || this.#wholeDone) {
      this.#end();
      return null;
    }
    // Watched only while waiting on the client: upstream back-pressure is not client silence.
    this.#watchdog.watch(this);
    const whole = this.#whole;
    let chunk: Uint8Array | null;
    try {
      let pending: Promise<Uint8Array | null>;
      if (whole !== undefined) {
        this.#whole = undefined;
        this.#wholeStarted = true;
        if (typeof whole === "function") pending = whole();
        else {
          this.#release = whole.release;
          pending = Promise.resolve(whole.bytes);
        }
      } else {
        this.#reader ??= this.#sourceOf!().getReader();
        pending = this.#reader.read().then((r) => (r.done ? null : r.value));
      }
      // Not Promise.race with one long-lived "tripped" promise: every race would leave a reaction
      // on it holding that read's result, so each body chunk would live as long as the request.
      chunk = await new Promise<Uint8Array | null>((resolve, reject) => {
        this.#rejectPending = reject;
        pending.then(resolve, reject);
      });
      this.#rejectPending = null;
    } catch (err) {
      this.#rejectPending = null;
      this.#end();
      // The server's own refusal of the body (malformed chunked framing) is the answer to give.
      if (this.error === null && err instanceof RelayError) this.error = err;
      throw this.error ?? err;
    }
    this.#watchdog.unwatch(this);
    if (chunk === null) {
      // The client's stream ended: every chunk it gave has been handed out.
      this.#release = this.#opts.streamRelease ?? null;
      this.#end();
      return null;
    }
    // A body taken whole has nothing more to give: the next read ends it.
    if (whole !== undefined) this.#wholeDone = true;
    this.bytes += chunk.byteLength;
    if (this.bytes > this.#opts.maxBytes) {
      this.#trip(bodyTooLarge(this.#opts.maxBytes));
      throw this.error!;
    }
    return chunk;
  }

  /**
   * Gives the bytes of a body the server lent back to it, to be read into again; only for a caller
   * that read the body to its end and knows nothing reads those bytes any more. Once at most.
   */
  release(): void {
    const release = this.#release;
    this.#release = null;
    release?.();
  }

  /** Stops reading the client's body. */
  cancel(reason?: unknown): void {
    this.#end();
    if (this.#reader !== null) this.#reader.cancel(reason).catch(() => {});
    else if (!this.#wholeStarted) this.#sourceOf?.().cancel(reason).catch(() => {});
  }

  /** Called by the watchdog: the client has been silent for too long during a read. */
  expire(): void {
    if (!this.#ended) this.#trip(bodyTimeout(this.#opts.idleTimeoutMs));
  }

  #trip(err: RelayError): void {
    if (this.error !== null) return;
    this.error = err;
    this.#end();
    this.#rejectPending?.(err);
    this.#reader?.cancel(err).catch(() => {});
  }

  #end(): void {
    this.#ended = true;
    if (this.#reader !== null || this.#wholeStarted) this.#sourceOf = null;
    this.#watchdog.unwatch(this);
  }
}
