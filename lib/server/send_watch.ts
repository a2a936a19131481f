/**
 * @module send_watch
 * `CLIENT_SEND_TIMEOUT_SEC` where the relay does not own the client's socket: `Deno.serve`
 * (`HTTP_SERVER=deno`) and Deno Deploy. The relay's own server watches its socket writes
 * instead (`server.ts`).
 *
 * Why this works: `Deno.serve` pulls a response body only when it has room to send more. When it
 * took a chunk and does not come back for the next one, the client has stopped taking bytes.
 * {@link SendWatch.wrap} passes the body through and, when no pull comes for the deadline after a
 * chunk was handed over, cancels the source (the stream from Server A, whose connection is then
 * closed rather than pooled; the access log says 499 `client_closed`) and ends the body with an
 * error.
 *
 * Limits (Deno 2.9.6, measured): `Deno.serve` keeps the client's socket open after that until the
 * client has read what is already queued for it (kernel and Deno buffers, about 4 MB on
 * loopback), or has gone. So A's stream and connection are freed, the client's socket is not.
 * The resolution is a chunk, not a byte: a client that reads so slowly that no room for the next
 * chunk appears within the deadline is cut, where the own server counts any byte taken.
 * Must never: hold back, copy or reorder bytes; read ahead of the consumer (one chunk at a time,
 * when asked); count time spent waiting for A (a quiet SSE stream is not a stalled client).
 */

import { WATCH_SLOT, Watchdog, type Watched } from "../http/mod.ts";

const noop = (): void => {};

/** Ends a body whose client took no bytes for the deadline. */
export class SendTimeoutError extends Error {
  constructor(timeoutMs: number) {
    super(`the client took no response bytes for ${timeoutMs / 1000} s`);
    this.name = "SendTimeoutError";
    // Deno.serve prints a body stream's error: one line, not a stack.
    this.stack = `${this.name}: ${this.message} (client stream ended)`;
  }
}

/** One deadline for every body handed to a server that does not watch its own writes. */
export class SendWatch {
  readonly timeoutMs: number;
  readonly #dog: Watchdog;

  constructor(timeoutMs: number) {
    this.timeoutMs = timeoutMs;
    this.#dog = new Watchdog(timeoutMs);
  }

  /** Bodies with a chunk waiting for the consumer right now. */
  get waiting(): number {
    return this.#dog.size;
  }

  /**
   * A pass-through of `source` that cancels it when its consumer leaves a chunk untaken for the
   * deadline; `onStall` is told when that happens.
   */
  wrap(source: ReadableStream<Uint8Array>, onStall?: () => void): ReadableStream<Uint8Array> {
    const dog = this.#dog;
    const timeoutMs = this.timeoutMs;
    const reader = source.getReader();
    let ctrl: ReadableStreamDefaultController<Uint8Array> | null = null;
    let stalled = false;
    const item: Watched = {
      lastTick: 0,
      expire: () => {
        stalled = true;
        const err = new SendTimeoutError(timeoutMs);
        reader.cancel(err).catch(noop);
        try {
          ctrl?.error(err);
        } catch { /* already ended */ }
        try {
          onStall?.();
        } catch { /* a reporter must not break the stream */ }
      },
      [WATCH_SLOT]: -1,
    };
    return new ReadableStream<Uint8Array>({
      start(c) {
        ctrl = c;
      },
      async pull(c) {
        // Asked for more: the previous chunk was taken.
        dog.unwatch(item);
        if (stalled) return;
        const r = await reader.read();
        if (stalled) return;
        if (r.done) {
          c.close();
          return;
        }
        c.enqueue(r.value);
        // From now until the next pull, a chunk waits for the client.
        dog.watch(item);
      },
      cancel(reason) {
        dog.unwatch(item);
        return reader.cancel(reason);
      },
    }, { highWaterMark: 0 });
  }

  /** Stops the timer (the app is closing). */
  close(): void {
    this.#dog.close();
  }
}
