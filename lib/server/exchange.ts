/**
 * @module exchange
 * The state of one request/response exchange on a connection of the own server: what the handler
 * sees as `info` (the client's address, `completed`, upgrade), the client-gone signal, and the
 * request body being read from the socket.
 */

import type { ServeInfo } from "./types.ts";
import { upgradeResponse } from "./upgrade.ts";
import type { RequestHead } from "./request_head.ts";
import { type BodyReaderLike, ChunkedDecoder } from "../http/mod.ts";

const noop = (): void => {};

export class Exchange implements ServeInfo {
  readonly remoteAddr: Deno.NetAddr;
  readonly upgrade = upgradeResponse;
  reader: BodyReaderLike | null = null;
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

  /** The Request's lazy signal registers here (`attachCancel` in http/deno_internals.ts). */
  readonly onCancel = (abort: () => void): void => {
    if (this.aborted) abort();
    // Made with its first listener (usually the only one): `[]` then push reserves 17 slots.
    else if (this.#onAbort === null) this.#onAbort = [abort];
    else this.#onAbort.push(abort);
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

export class RequestBody {
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
  /**
   * Where a streamed body of announced length is read next: the unread rest of a buffer of its
   * own, never read into twice (empty when full).
   */
  arena: Uint8Array<ArrayBuffer> | null = null;
  /** What the last read into {@link arena} brought, not yet handed on. */
  fresh: Uint8Array | null = null;
  /**
   * The pooled buffers under every arena so far: given back only by the handler's release, once
   * the whole body was read and nothing reads its chunks any more.
   */
  arenas: Uint8Array<ArrayBuffer>[] | null = null;

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
