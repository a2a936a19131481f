/**
 * @module types
 * The own HTTP/1.1 server's public types: its options, what a handler gets, why it drops sockets.
 * Apart from `server.ts` so that the files behind it can name them without importing the server.
 */

import type { upgradeResponse } from "./upgrade.ts";

/** What the handler learns about the exchange besides the request. */
export interface ServeInfo {
  /** The client's address. */
  remoteAddr: Deno.NetAddr;
  /**
   * Resolves once the exchange is over: the response was written in full, or it could not be (the
   * client left, the body stream failed). Unlike `Deno.serve`'s it never rejects; `req.signal`
   * tells the two apart (it aborts only when the client left before the end of the response).
   */
  completed: Promise<void>;
  /** Switches this connection to another protocol: see {@link upgradeResponse}. */
  upgrade: typeof upgradeResponse;
}

/** Options of `serveHttp1`. */
export interface Http1ServerOptions {
  hostname: string;
  port: number;
  /**
   * The whole request head must arrive within this many ms of the first byte of that request (of
   * accept, for the first request). On expiry: `408` and close if some bytes arrived, else just
   * close. Default 20,000.
   */
  headerTimeoutMs?: number;
  /** A kept-alive connection with no request in progress is closed after this many ms. Default 75,000. */
  idleTimeoutMs?: number;
  /**
   * A request body of announced length up to 256 KiB is read by the server before the handler
   * runs; when no byte of it arrives for this many ms the client gets `408 body_timeout` and the
   * socket is closed (the handler never sees the request). Larger and chunked bodies stream to the
   * handler, whose reader keeps its own deadline. Default 60,000.
   */
  bodyTimeoutMs?: number;
  /**
   * Most open client sockets (upgraded ones included). A socket accepted above it gets `503` with
   * `connection: close` once its request head is in (at most 1 s), and is closed; its request is
   * never handled. 0 = unlimited.
   */
  maxConnections?: number;
  /**
   * Most open sockets from one client address (the socket's peer address). One more gets
   * `429 too_many_connections` with `connection: close`, like a socket over `maxConnections`.
   * 0 = unlimited.
   */
  maxConnectionsPerIp?: number;
  /**
   * A response write that makes no progress for this many ms (the client takes none of the bytes
   * offered) closes the socket and aborts the exchange: `req.signal` aborts and the response body
   * is cancelled. Default 60,000; 0 = no deadline.
   */
  sendTimeoutMs?: number;
  /**
   * When a connection ends after a response while the client may still be sending (a request body
   * the handler left unread, bytes of a request pipelined after `connection: close`), the server
   * shuts down its sending side and reads and drops what the client sends until the client closes,
   * so that those bytes cannot turn into a reset that loses the response. The socket is closed once
   * the client sends nothing for this many ms, or after six times this in all. Default 5,000
   * (nginx's `lingering_timeout`; its `lingering_time` is 30 s).
   */
  lingerTimeoutMs?: number;
  /** Largest request head (request line and headers) in bytes; over it `431`. Default 64 KiB. */
  maxHeadBytes?: number;
  /**
   * Serve HTTPS (HTTP/1.1 by ALPN) with this certificate and key (PEM), through `node:tls`, which
   * can turn Nagle off on each socket (`tls_listener.ts`). The handshake counts against
   * `headerTimeoutMs`.
   */
  tls?: { cert: string; key: string } | undefined;
  /** Called once the server accepts connections (with TLS, a moment after `serveHttp1` returns). */
  onListen?: (addr: Deno.NetAddr) => void;
  /** Turns a handler failure into a response. Default: the relay's JSON `500 internal_error`. */
  onError?: (err: unknown) => Response | Promise<Response>;
  /**
   * Called when accepting fails (e.g. EMFILE "Too many open files"). The server keeps running: it
   * waits (100 ms, doubling up to 2 s) and accepts again.
   */
  onAcceptError?: (err: unknown) => void;
  /** Told each time the server closes a client socket on its own, and why (for metrics). */
  onDrop?: (reason: DropReason) => void;
}

/** Why the server closed a client socket itself. */
export type DropReason =
  | "header_timeout"
  | "body_timeout"
  | "idle_timeout"
  | "over_capacity"
  | "over_ip_capacity"
  | "send_timeout"
  | "bad_request"
  | "headers_too_large";

/** A running server. */
export interface Http1Server {
  readonly addr: Deno.NetAddr;
  /** Resolves after {@link shutdown} once every connection is closed. */
  readonly finished: Promise<void>;
  /** Open client sockets, upgraded ones included. */
  readonly connections: number;
  /**
   * Stops accepting, closes idle connections at once, lets requests in flight finish (each
   * connection closes after its current response) and resolves when all connections are gone.
   * Upgraded sockets count until their owner closes them.
   */
  shutdown(): Promise<void>;
}

/** A request handler. */
export type Http1Handler = (req: Request, info: ServeInfo) => Response | Promise<Response>;
