/**
 * @module upgrade
 * Switching a connection of the own server to another protocol (WebSocket): the handler returns
 * the placeholder Response made by {@link upgradeResponse}; the connection recognises it with
 * {@link takeUpgrade}, writes the 101 and hands the socket over.
 */

import { errorResponse, relayError } from "../errors.ts";

export interface Upgrade {
  onSocket: (conn: Deno.Conn, buffered: Uint8Array) => void;
  headers: Headers;
}

const upgrades = new WeakMap<Response, Upgrade>();

/**
 * A response that switches protocols (e.g. WebSocket). When the handler returns it,
 * `serveHttp1` writes `HTTP/1.1 101 Switching Protocols` with `headers`, stops all HTTP
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

/** The upgrade a handler asked for with this response, once (the registration is removed). */
export function takeUpgrade(res: Response): Upgrade | undefined {
  const upgrade = upgrades.get(res);
  if (upgrade !== undefined) upgrades.delete(res);
  return upgrade;
}
