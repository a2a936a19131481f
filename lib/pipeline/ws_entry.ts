/**
 * @module ws_entry
 * What every request needs of the WebSocket bridge: whether it asks for one. The bridge itself
 * (`websocket.ts` and its frame codec, `ws_frames.ts`) is imported when a client first asks.
 *
 * Why: most relays never carry a WebSocket, and the bridge loaded at start-up is idle memory (with
 * the dashboard, ~0.15 MiB of the relay's own memory). The import names a fixed module, so it stays
 * in Deno's module graph: `deno compile` and Deno Deploy include it, and the relay's narrow
 * permissions need no read access for it.
 */

import { requestField } from "../http/mod.ts";
import type { WebSocketContext } from "./websocket.ts";

/** Whether the request asks to switch to WebSocket. */
export function isWebSocketUpgrade(req: Request): boolean {
  return req.method === "GET" && requestField(req, "upgrade")?.toLowerCase() === "websocket";
}

let bridge: Promise<typeof import("./websocket.ts")> | null = null;

/** Relays a WebSocket handshake and then the session (see `websocket.ts`). */
export async function relayWebSocket(req: Request, ctx: WebSocketContext): Promise<Response> {
  // A failed import (a broken deployment) is tried again by the next request, not kept.
  bridge ??= import("./websocket.ts").catch((err) => {
    bridge = null;
    throw err;
  });
  return (await bridge).relayWebSocket(req, ctx);
}
