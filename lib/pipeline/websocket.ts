/**
 * @module websocket
 * WebSocket pass-through for `/v1/...` (Codex opens one on `/v1/responses` before falling back to
 * HTTP).
 *
 * Owns: the upstream handshake (on a fresh connection from the pool's connector, with the same
 * header rules as HTTP), relaying A's non-101 answers unchanged so the client's fallback logic
 * sees A's real status, and the bridge: messages both ways in order, pings answered, close codes
 * and reasons passed on, either side closing closes the other, a 32 MiB message limit (A's).
 * Two ways to carry a session, depending on the server the client came in on:
 * - **Tunnel** (the relay's own HTTP/1.1 server, `server.ts`): the client's handshake goes to A as
 *   sent (its key, version, extensions, protocols), A's 101 goes back as sent, and from then on
 *   bytes are copied both ways untouched. Compression and every frame detail are end to end; A
 *   enforces its own limits.
 * - **Bridge** (`Deno.serve`, used with `HTTP_SERVER=deno`): the relay is a WebSocket client
 *   towards A (own key, no compression) and a server towards the client, passing messages, close
 *   codes and reasons, with A's 32 MiB message limit.
 * Must never: reuse the upgraded connection for HTTP, or, when bridging, forward the client's
 * handshake key or extensions.
 */

import type { Upstream } from "../config/mod.ts";
import type { HeaderList } from "../http/mod.ts";
import { responseHeaders } from "../http/mod.ts";
import { concat, encodeLatin1 } from "../http/mod.ts";
import type { Upgrader } from "../http/mod.ts";
import { ChunkedDecoder } from "../http/mod.ts";
import { bodyFraming, type Connection, readHead, UpstreamError } from "../upstream/mod.ts";
import type { LogWriter } from "../observe/record.ts";
import { type RawTarget, upstreamTarget } from "./target.ts";
import type { PoolSet, UpstreamSet } from "../upstream/mod.ts";
import {
  closePayload,
  CloseWatcher,
  encodeFrame,
  FrameDecoder,
  MessageAssembler,
  newMask,
  OP,
  parseClosePayload,
  WsProtocolError,
} from "./ws_frames.ts";

const utf8 = new TextEncoder();

/** A's limit on a WebSocket message. */
export const MAX_MESSAGE_BYTES = 32 * 1024 * 1024;

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const HANDSHAKE_OWN = new Set([
  "sec-websocket-key",
  "sec-websocket-version",
  "sec-websocket-extensions",
  "sec-websocket-accept",
]);

/** What the bridge needs. */
export interface WebSocketContext {
  /** Present when the client's server can hand over its socket: the session is then tunnelled. */
  upgrade?: Upgrader | undefined;
  upstreams: readonly Upstream[];
  /** Path and query, validated, without the upstream prefix. */
  target: RawTarget;
  /** Request headers after the relay's header rules (hop-by-hop already removed). */
  headers: HeaderList;
  pools: PoolSet;
  health: UpstreamSet | undefined;
  /** Longest wait for A's handshake answer. */
  timeoutMs: number;
  log: LogWriter;
  /** Called once A's answer to the handshake (101 or a refusal) has arrived. */
  onHead?(upstream: Upstream, status: number): void;
  /** Called once when the session (or the refused handshake) is over. */
  onEnd(end: WebSocketEnd): void;
}

/** How a session (or a refused handshake) ended, for the access log. */
export interface WebSocketEnd {
  /** A's status: 101, or its refusal. */
  status: number;
  /**
   * `closed`: over with a close frame (either way), or ended by A; `client_gone`: the client
   * dropped its connection with no close frame; `upstream_broken`: A's side failed.
   */
  outcome: "closed" | "client_gone" | "upstream_broken";
  /** Error name or message behind `upstream_broken`. */
  detail?: string;
  /** Bytes after the handshake, client to A. */
  bytesUp: number;
  /** Bytes after the handshake (or a refusal's body), A to client. */
  bytesDown: number;
}

/** Performs the upstream handshake and, on 101, upgrades the client and bridges the two. */
export async function relayWebSocket(req: Request, ctx: WebSocketContext): Promise<Response> {
  const upstreams = ctx.health ? ctx.health.order(ctx.upstreams) : ctx.upstreams;
  let lastError: unknown = null;
  for (let i = 0; i < upstreams.length; i++) {
    const upstream = upstreams[i]!;
    let conn: Connection;
    try {
      conn = await ctx.pools.get(upstream).h1.connect();
    } catch (err) {
      lastError = err;
      if (err instanceof UpstreamError) {
        ctx.health?.failure(upstream, err.kind, i + 1 < upstreams.length);
      }
      continue;
    }
    ctx.health?.success(upstream);
    return await handshake(req, conn, upstream, ctx);
  }
  throw lastError ?? new UpstreamError("connect", "no upstream");
}

async function handshake(
  req: Request,
  conn: Connection,
  upstream: Upstream,
  ctx: WebSocketContext,
): Promise<Response> {
  const tunnel = ctx.upgrade;
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  const target = upstreamTarget(upstream.prefix, ctx.target);
  let head = `GET ${target} HTTP/1.1\r\nhost: ${upstream.hostHeader}\r\n`;
  for (const [name, value] of ctx.headers) {
    if (tunnel || !HANDSHAKE_OWN.has(name)) head += `${name}: ${value}\r\n`;
  }
  head += `connection: Upgrade\r\nupgrade: websocket\r\n` +
    (tunnel ? "" : `sec-websocket-version: 13\r\nsec-websocket-key: ${key}\r\n`) + "\r\n";
  const timer = setTimeout(() => conn.close(), ctx.timeoutMs);
  const onAbort = () => conn.close();
  req.signal.addEventListener("abort", onAbort);
  let answer;
  try {
    await conn.write(encodeLatin1(head));
    answer = await readHead(conn, () => {}, true);
  } catch (err) {
    conn.close();
    throw req.signal.aborted
      ? new UpstreamError("aborted", "client went away")
      : err instanceof UpstreamError
      ? err
      : new UpstreamError(conn.closed ? "timeout" : "reset", "handshake failed", { cause: err });
  } finally {
    clearTimeout(timer);
    req.signal.removeEventListener("abort", onAbort);
  }
  ctx.onHead?.(upstream, answer.status);
  if (answer.status !== 101) {
    // A refused the upgrade: its answer goes to the client as is (Codex falls back on 426).
    const body = await readSmallBody(conn, answer);
    conn.close();
    ctx.onEnd({
      status: answer.status,
      outcome: "closed",
      bytesUp: 0,
      bytesDown: body?.byteLength ?? 0,
    });
    return new Response(body, {
      status: answer.status,
      headers: responseHeaders(answer.headers, answer.status),
    });
  }
  if (tunnel) {
    // The client checks A's sec-websocket-accept against its own key: pass A's answer on as is.
    const headers = responseHeaders(answer.headers, answer.status);
    headers.set("connection", "Upgrade");
    headers.set("upgrade", "websocket");
    return tunnel((client, buffered) => void splice(client, buffered, conn, ctx), headers);
  }
  const headers = new Map(answer.headers);
  const expected = btoa(String.fromCharCode(
    ...new Uint8Array(await crypto.subtle.digest("SHA-1", utf8.encode(key + GUID))),
  ));
  if (headers.get("sec-websocket-accept") !== expected) {
    conn.close();
    throw new UpstreamError("protocol", "bad sec-websocket-accept");
  }
  const protocol = headers.get("sec-websocket-protocol");
  const { socket, response } = Deno.upgradeWebSocket(req, protocol ? { protocol } : {});
  bridge(socket, conn, ctx);
  return response;
}

async function readSmallBody(
  conn: Connection,
  head: Awaited<ReturnType<typeof readHead>>,
): Promise<Uint8Array<ArrayBuffer> | null> {
  const framing = bodyFraming("GET", head);
  if (framing.kind === "none") return null;
  const parts: Uint8Array[] = [];
  let size = 0;
  const decoder = framing.kind === "chunked" ? new ChunkedDecoder() : null;
  const limit = framing.kind === "length" ? framing.length : 1024 * 1024;
  try {
    while (size < limit) {
      const chunk = await conn.read();
      if (chunk === null) break;
      const pieces = decoder ? decoder.push(chunk) : [chunk];
      for (const p of pieces) {
        parts.push(p);
        size += p.byteLength;
      }
      if (decoder?.done) break;
    }
  } catch { /* keep what arrived */ }
  const body = concat(parts);
  return body.slice(0, Math.min(body.byteLength, limit));
}

/**
 * Copies bytes both ways between the client's socket and A's connection until either side ends,
 * then closes both. Bytes A sent right after its 101 are already in `up` and go first.
 */
async function splice(
  client: Deno.Conn,
  buffered: Uint8Array,
  up: Connection,
  ctx: WebSocketContext,
): Promise<void> {
  /** The side whose read or write ended the session first, and how. */
  type Ender = { side: "client" | "upstream"; error: unknown };
  let first: Ender | null = null;
  let bytesUp = 0;
  let bytesDown = 0;
  const fromClient = new CloseWatcher();
  const fromUpstream = new CloseWatcher();
  const end = (side: "client" | "upstream", error: unknown) => {
    // Once one side has ended, the other fails because we closed it: only the first counts.
    first ??= { side, error };
    up.close();
    try {
      client.close();
    } catch { /* already closed */ }
  };
  const toClient = async () => {
    while (true) {
      let c: Uint8Array | null;
      try {
        c = await up.read();
      } catch (err) {
        return end("upstream", err);
      }
      if (c === null) return end("upstream", null);
      fromUpstream.push(c);
      bytesDown += c.byteLength;
      try {
        let off = 0;
        while (off < c.byteLength) off += await client.write(c.subarray(off));
      } catch (err) {
        return end("client", err);
      }
    }
  };
  const toUpstream = async () => {
    const buf = new Uint8Array(64 * 1024);
    let chunk = buffered;
    while (true) {
      if (chunk.byteLength > 0) {
        fromClient.push(chunk);
        bytesUp += chunk.byteLength;
        try {
          await up.write(chunk);
        } catch (err) {
          return end("upstream", err);
        }
      }
      let n: number | null;
      try {
        n = await client.read(buf);
      } catch (err) {
        return end("client", err);
      }
      if (n === null) return end("client", null);
      chunk = buf.subarray(0, n);
    }
  };
  await Promise.all([toClient(), toUpstream()]);
  const closeSeen = fromClient.sawClose || fromUpstream.sawClose;
  // Set inside the copy loops: the compiler cannot see that, so it is read through a cast.
  const by = first as Ender | null;
  // A client that leaves without a close frame is gone, as an HTTP client that leaves mid-body;
  // A ending the connection is how a WebSocket session normally ends (RFC 6455 §7.1.1).
  const outcome = closeSeen || by === null
    ? "closed"
    : by.side === "client"
    ? "client_gone"
    : by.error === null
    ? "closed"
    : "upstream_broken";
  const detail = by?.error instanceof Error ? by.error.name : undefined;
  ctx.onEnd({
    status: 101,
    outcome,
    ...(outcome === "upstream_broken" && detail !== undefined ? { detail } : {}),
    bytesUp,
    bytesDown,
  });
}

/** Relays messages between the client socket and the upstream connection until either closes. */
function bridge(socket: WebSocket, conn: Connection, ctx: WebSocketContext): void {
  socket.binaryType = "arraybuffer";
  let writing: Promise<void> = Promise.resolve();
  let upstreamClosed = false;
  let sentClose = false;
  let ended = false;
  let bytesUp = 0;
  let bytesDown = 0;
  const end = (outcome: WebSocketEnd["outcome"], detail?: string) => {
    if (ended) return;
    ended = true;
    ctx.onEnd({ status: 101, outcome, ...(detail ? { detail } : {}), bytesUp, bytesDown });
  };
  const send = (opcode: number, payload: Uint8Array) => {
    const frame = encodeFrame(opcode, payload, newMask());
    writing = writing.then(() => conn.write(frame)).catch(() => {
      conn.close();
    });
    return writing;
  };
  const closeUpstream = (code: number, reason: string) => {
    if (!sentClose && !conn.closed) {
      sentClose = true;
      send(OP.close, closePayload(code, reason)).then(() => {
        // Give A a moment to answer the close, then drop the socket either way.
        setTimeout(() => conn.close(), 1000);
      });
    } else {
      conn.close();
    }
  };
  const closeClient = (code: number, reason: string) => {
    if (socket.readyState === WebSocket.CLOSED || socket.readyState === WebSocket.CLOSING) return;
    try {
      if (code === 1005) socket.close();
      else socket.close(code, reason);
    } catch {
      socket.close(1011, reason.slice(0, 100));
    }
  };

  socket.onmessage = (e) => {
    if (typeof e.data === "string") {
      const bytes = utf8.encode(e.data);
      if (bytes.byteLength > MAX_MESSAGE_BYTES) return closeClient(1009, "message too large");
      bytesUp += bytes.byteLength;
      send(OP.text, bytes);
    } else {
      const bytes = new Uint8Array(e.data as ArrayBuffer);
      if (bytes.byteLength > MAX_MESSAGE_BYTES) return closeClient(1009, "message too large");
      bytesUp += bytes.byteLength;
      send(OP.binary, bytes);
    }
  };
  socket.onclose = (e) => {
    // Not clean: the client's connection ended without a close frame, i.e. the client is gone.
    // Deno then reports code 0 (or 1006), neither of which may be sent on the wire: say 1001.
    const dropped = !e.wasClean || e.code === 1006 || e.code === 0;
    if (!upstreamClosed) closeUpstream(dropped ? 1001 : e.code, e.reason);
    end(dropped && !upstreamClosed ? "client_gone" : "closed");
  };
  socket.onerror = () => {
    if (!upstreamClosed) closeUpstream(1001, "");
  };
  socket.onopen = async () => {
    const decoder = new FrameDecoder(MAX_MESSAGE_BYTES);
    const assembler = new MessageAssembler(MAX_MESSAGE_BYTES);
    const text = new TextDecoder();
    try {
      while (true) {
        const chunk = await conn.read();
        if (chunk === null) break;
        for (const frame of decoder.push(chunk)) {
          if (frame.opcode === OP.ping) {
            send(OP.pong, frame.payload);
          } else if (frame.opcode === OP.pong) {
            // Nothing to do: the relay sends no pings of its own upstream.
          } else if (frame.opcode === OP.close) {
            upstreamClosed = true;
            const { code, reason } = parseClosePayload(frame.payload);
            if (!sentClose) {
              sentClose = true;
              await send(OP.close, frame.payload.subarray(0, 2));
            }
            conn.close();
            closeClient(code, reason);
            return;
          } else {
            const msg = assembler.push(frame);
            if (msg === null) continue;
            if (socket.readyState !== WebSocket.OPEN) continue;
            bytesDown += msg.data.byteLength;
            if (msg.opcode === OP.text) socket.send(text.decode(msg.data));
            else socket.send(msg.data);
          }
        }
      }
      upstreamClosed = true;
      closeClient(1011, "Server A closed the connection");
    } catch (err) {
      upstreamClosed = true;
      if (err instanceof WsProtocolError) {
        ctx.log.warn("websocket protocol error from upstream", { detail: err.message });
        closeUpstream(err.closeCode, "");
        closeClient(err.closeCode, err.closeCode === 1009 ? "message too large" : "protocol error");
      } else {
        conn.close();
        closeClient(1011, "Server A connection failed");
      }
      end("upstream_broken", err instanceof Error ? err.message : "error");
    }
  };
}
