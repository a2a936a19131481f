/**
 * @module client_info
 * What a client-facing server hands the request handler besides the request: the types both the
 * servers (`server/`) and the pipeline see, so neither imports the other.
 */

/**
 * Switches the client's connection to a raw byte tunnel once the response is written: the
 * server writes `101 Switching Protocols` with `headers`, then hands over the socket and any bytes
 * it had already read past the request head.
 */
export type Upgrader = (
  onSocket: (conn: Deno.Conn, buffered: Uint8Array) => void,
  headers: Headers,
) => Response;

/** Connection facts about the client, as `Deno.serve` (or `server.ts`) passes them. */
export interface ClientInfo {
  remoteAddr: { hostname: string; port?: number };
  /** Hands the client's socket over after a 101 (the relay's own server only). */
  upgrade?: Upgrader | undefined;
  /**
   * Settles once the response was written in full or the client left (both servers give it; a
   * caller of the handler may not).
   */
  readonly completed?: Promise<void>;
}
