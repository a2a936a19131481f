/**
 * @module proxy
 * Forwards one client request to Server A and streams the answer back.
 *
 * Owns: failover across upstreams on connect failure, the mapping from upstream failures to the
 * relay's errors, and the request/response lifecycle events observers see. Bodies pass straight
 * through in both directions: never read whole, never decoded.
 * Must never: retry a request once it may have reached A (except the stale-connection resend in
 * `http1.ts`), follow redirects, change A's status, headers or body bytes, or show a client raw
 * error text.
 */

import type { Upstream } from "../config/mod.ts";
import { RelayError, relayError } from "../errors.ts";
import type { HeaderList } from "../http/mod.ts";
import {
  appendAll,
  fieldValue,
  lazyFieldLines,
  responseFields,
  withDirectBody,
  withFieldLines,
} from "../http/mod.ts";
import {
  type BodyReader,
  BodySource,
  type BodyTap,
  exchangeOptions,
  type PoolSet,
  UpstreamError,
  type UpstreamResponse,
  type UpstreamSet,
} from "../upstream/mod.ts";
import { type RawTarget, upstreamTarget } from "./target.ts";
import type { Watchdog } from "../http/mod.ts";

/** What the proxy reports about one forwarded request. */
export interface ForwardResult {
  /** The response for the client, its body still streaming (its headers are final: see handoff.ts). */
  response: Response;
  upstream: Upstream;
  /** Upstreams tried before the one that answered (connect failures). */
  failovers: number;
  /** A's status. */
  status: number;
  /** A's header lines as received (hop-by-hop ones included), for debug output. */
  upstreamHeaders: HeaderList;
  /** The response's field lines as the client gets them (read these, not `response.headers`). */
  fields: HeaderList;
  /** A's `x-request-id`, when it sent one (all its lines joined, as `Headers.get` does). */
  upstreamRequestId: string | null;
  /** 1, or 2 when a stale pooled connection forced a resend. */
  attempts: number;
  /**
   * The whole body when it arrived with the head (the tap then sees nothing of it), else null: the
   * body streams and the tap sees each chunk and the end.
   */
  whole: Uint8Array | null;
  /** Whether there is a body stream (the tap's `end` will be called). */
  streaming: boolean;
}

/** Everything `forward` needs besides the request. */
export interface ForwardContext {
  upstreams: readonly Upstream[];
  /** The request body to send instead of `req.body` (e.g. checked by `body_limit.ts`). */
  body?: ReadableStream<Uint8Array> | BodyReader | null;
  /** The request's announced `Content-Length` (null: none, e.g. chunked). */
  length: number | null;
  /** Path and query to put behind the upstream's prefix (already validated). */
  target: RawTarget;
  headers: HeaderList;
  pools: PoolSet;
  watchdog: Watchdog;
  retryBodyMaxBytes: number;
  /** Health state: orders upstreams and learns from failures. */
  health?: UpstreamSet | undefined;
  /**
   * Wraps a streaming response body before it goes to the client (the send deadline where the
   * server cannot watch its own writes, `send_watch.ts`). Must pass bytes through unchanged.
   */
  watchBody?: ((body: ReadableStream<Uint8Array>) => ReadableStream<Uint8Array>) | undefined;
  /** Watches a streamed response body pass (bytes, usage, its end). */
  tap?: BodyTap | undefined;
  /** Sent to the client as `x-request-id` when A sends none. */
  requestId: string;
  /**
   * The server writes the response's registered field lines itself (the own server): its
   * `Headers` are then made only if something reads them.
   */
  writesFieldLines?: boolean | undefined;
}

/** Maps an upstream failure to the relay's client-facing error. */
export function relayErrorFor(err: unknown): RelayError {
  if (err instanceof RelayError) return err;
  const cause = { cause: err };
  if (err instanceof UpstreamError) {
    switch (err.kind) {
      case "connect":
        return relayError("upstream_unreachable", cause);
      case "connect_timeout":
        return relayError("upstream_connect_timeout", cause);
      case "timeout":
        return relayError("upstream_timeout", cause);
      case "aborted":
      case "body":
        return relayError("client_closed", cause);
      case "request":
        return relayError("bad_header_value", cause);
      case "protocol":
      case "reset":
        return relayError("upstream_protocol_error", { reason: "invalid_response", ...cause });
    }
  }
  return relayError("upstream_protocol_error", { reason: "unknown", ...cause });
}

/**
 * Sends the request to the first upstream that accepts a connection and returns its response
 * with the body still streaming. Throws RelayError.
 */
export async function forward(req: Request, ctx: ForwardContext): Promise<ForwardResult> {
  const src = ctx.body !== undefined ? ctx.body : req.body;
  const body = src === null ? null : new BodySource(src, ctx.length, ctx.retryBodyMaxBytes);
  let lastError: unknown = null;
  const upstreams = ctx.health ? ctx.health.order(ctx.upstreams) : ctx.upstreams;
  for (let i = 0; i < upstreams.length; i++) {
    const upstream = upstreams[i]!;
    let res: UpstreamResponse;
    try {
      res = await ctx.pools.get(upstream).exchange({
        method: req.method,
        target: upstreamTarget(upstream.prefix, ctx.target),
        headers: ctx.headers,
        body,
      }, exchangeOptions(ctx.watchdog, req.signal, ctx.tap));
    } catch (err) {
      lastError = err;
      // Only a failure to connect is known not to have reached A: anything else is final.
      const connectFailed = err instanceof UpstreamError &&
        (err.kind === "connect" || err.kind === "connect_timeout");
      if (err instanceof UpstreamError) {
        ctx.health?.failure(upstream, err.kind, connectFailed && i + 1 < upstreams.length);
      }
      if (connectFailed) continue;
      body?.cancel();
      throw relayErrorFor(err);
    }
    ctx.health?.success(upstream);
    let response: Response;
    const stream = res.body !== null && ctx.watchBody !== undefined
      ? ctx.watchBody(res.body)
      : res.body;
    const fields = responseFields(res.headers, res.status);
    const aId = fieldValue(fields, "x-request-id");
    if (aId === null) fields.push(["x-request-id", ctx.requestId]);
    try {
      response = new Response(res.complete ?? stream, {
        status: res.status,
        statusText: res.statusText,
      });
      if (!ctx.writesFieldLines || !lazyFieldLines(response, fields)) {
        appendAll(response.headers, fields);
        withFieldLines(response, fields);
      }
      // Unwrapped bodies only: a watched body must be read through its watch.
      if (stream === res.body && res.reader) withDirectBody(response, res.reader);
    } catch (err) {
      await stream?.cancel();
      throw relayError("upstream_protocol_error", { reason: "unusable_response", cause: err });
    }
    return {
      response,
      upstream,
      failovers: i,
      status: res.status,
      upstreamHeaders: res.headers,
      fields,
      upstreamRequestId: aId,
      attempts: res.attempts,
      whole: res.complete,
      streaming: res.body !== null,
    };
  }
  body?.cancel();
  throw relayErrorFor(lastError);
}
