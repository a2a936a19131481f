/**
 * @module listen
 * Starts the client-facing server the configuration asks for.
 *
 * The relay's own HTTP/1.1 server (`server.ts`) serves by default, plain HTTP or TLS (through
 * `node:tls`, `tls_listener.ts`: `Deno.listenTls` keeps Nagle on, which held every kept-alive
 * answer back ~40 ms): it closes sockets that never finish their request head (slowloris), idle
 * too long between requests or take no response bytes (`CLIENT_SEND_TIMEOUT_SEC`), and caps open
 * sockets at `MAX_CONNECTIONS`, and per client address at `MAX_CONNECTIONS_PER_IP`.
 * `HTTP_SERVER=deno` runs on `Deno.serve` (`conn_limit.ts`'s resilient wrapper), which offers
 * HTTP/2 to TLS clients but has neither timeout nor socket cap: there `MAX_CONNECTIONS_PER_IP` caps
 * requests in flight per address (counted here, until `info.completed`), and the send deadline
 * watches response bodies (`send_watch.ts`, set up by the app).
 * Must never: let a listener failure become an unhandled rejection.
 */

import type { ClientInfo } from "../http/mod.ts";
import { PerIpCap, serveResilient, tooManyConnections } from "./conn_limit.ts";
import { errorResponse } from "../errors.ts";
import type { LogWriter } from "../observe/record.ts";
import { type DropReason, serveHttp1 } from "./server.ts";

/** The running server, whichever it is. */
export interface Listener {
  readonly addr: Deno.NetAddr;
  readonly finished: Promise<void>;
  /** "relay" (own HTTP/1.1 server) or "deno" (Deno.serve). */
  readonly kind: "relay" | "deno";
  /** Open client sockets (own server only; null when Deno.serve does not tell). */
  readonly connections: number | null;
  shutdown(): Promise<void>;
}

/** What {@link listen} needs besides the config. */
export interface ListenOptions {
  handler: (req: Request, info: ClientInfo) => Response | Promise<Response>;
  log?: LogWriter | undefined;
  /** The socket cap (the app's effective `MAX_CONNECTIONS`). */
  maxConnections: number;
  /** TLS certificate and key (PEM) when the relay serves HTTPS itself. */
  tls?: { cert: string; key: string } | null | undefined;
  onListen?: (addr: Deno.NetAddr) => void;
  onError?: (err: unknown) => Response | Promise<Response>;
  /** Client sockets the own server closed itself, and why (metrics). */
  onDrop?: (reason: DropReason) => void;
  /** Overrides the config's host and port (tests listen on 127.0.0.1:0). */
  hostname?: string;
  port?: number;
}

/** Listens on the configured address with the configured server. Throws like `Deno.listen`. */
/**
 * The settings {@link listen} reads: plain values, so the server layer needs no configuration
 * module (the relay's `Config` has them all).
 */
export interface ListenSettings {
  readonly host: string;
  readonly port: number;
  readonly httpServer: "relay" | "deno";
  readonly maxConnectionsPerIp: number;
  readonly clientHeaderTimeoutMs: number;
  readonly clientIdleTimeoutMs: number;
  readonly clientSendTimeoutMs: number;
  readonly clientBodyTimeoutMs: number;
}

export function listen(config: ListenSettings, o: ListenOptions): Listener {
  const hostname = o.hostname ?? config.host;
  const port = o.port ?? config.port;
  if (config.httpServer === "deno") {
    const perIp = new PerIpCap(config.maxConnectionsPerIp);
    const handler: ListenOptions["handler"] = perIp.max === 0 ? o.handler : (req, info) => {
      // Deno.serve shows no sockets: what one address holds is its requests in flight (a stream
      // until its body has been sent), refused before the app sees them.
      const ip = info.remoteAddr.hostname;
      if (!perIp.take(ip)) {
        o.onDrop?.("over_ip_capacity");
        return errorResponse(tooManyConnections(perIp.max));
      }
      const release = () => perIp.release(ip);
      (info as Partial<Deno.ServeHandlerInfo>).completed?.then(release, release) ?? release();
      return o.handler(req, info);
    };
    const server = serveResilient({
      hostname,
      port,
      // DENO_SERVE_AUTOMATIC_COMPRESSION=1 would otherwise re-encode A's bodies.
      automaticCompression: false,
      ...(o.tls ?? {}),
      ...(o.onListen ? { onListen: o.onListen } : { onListen: () => {} }),
      ...(o.onError ? { onError: o.onError } : {}),
      log: o.log,
    }, handler);
    return {
      get addr() {
        return server.addr;
      },
      finished: server.finished,
      kind: "deno",
      connections: null,
      shutdown: () => server.shutdown(),
    };
  }
  const server = serveHttp1({
    hostname,
    port,
    headerTimeoutMs: config.clientHeaderTimeoutMs,
    idleTimeoutMs: config.clientIdleTimeoutMs,
    bodyTimeoutMs: config.clientBodyTimeoutMs,
    sendTimeoutMs: config.clientSendTimeoutMs,
    maxConnections: o.maxConnections,
    maxConnectionsPerIp: config.maxConnectionsPerIp,
    tls: o.tls ?? undefined,
    ...(o.onListen ? { onListen: o.onListen } : {}),
    ...(o.onError ? { onError: o.onError } : {}),
    ...(o.onDrop ? { onDrop: o.onDrop } : {}),
    onAcceptError: (err) => {
      const emfile = err instanceof Error && /too many open files/i.test(err.message);
      o.log?.[emfile ? "warn" : "error"]("accepting a connection failed; retrying", {
        detail: err instanceof Error ? `${err.name}: ${err.message.slice(0, 200)}` : "error",
        ...(emfile
          ? {
            hint: "raise the descriptor limit (systemd LimitNOFILE, docker --ulimit nofile) or " +
              "lower MAX_CONNECTIONS",
          }
          : {}),
      });
    },
  }, o.handler);
  return {
    addr: server.addr,
    finished: server.finished,
    kind: "relay",
    get connections() {
      return server.connections;
    },
    shutdown: () => server.shutdown(),
  };
}
