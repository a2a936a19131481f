/**
 * A TCP tap on 127.0.0.1 in front of a server: it copies bytes both ways and keeps what the client
 * wrote, so a test can compare the request bodies a client sent with what Server A received.
 * When either side closes, the tap closes both, as the kernel does when a process is killed.
 */

import { concatBytes, writeAll } from "./http_wire.ts";

/** One client connection through the tap. */
export interface TappedConn {
  /** Bytes the client sent, in order. */
  fromClient: Uint8Array[];
  /** Bytes the server sent back, in order. */
  toClient: Uint8Array[];
  /** When the tap closed the pair (ms, `performance.now()`), null while open. */
  closedAt: number | null;
}

export interface Tap {
  port: number;
  url: string;
  conns: TappedConn[];
  /** Everything the client sent on connection `i`. */
  sent(i: number): Uint8Array;
  close(): void;
}

export function startTap(targetPort: number): Tap {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const open = new Set<Deno.Conn>();
  const tap: Tap = {
    port,
    url: `http://127.0.0.1:${port}`,
    conns: [],
    sent: (i) => concatBytes(tap.conns[i]?.fromClient ?? []),
    close() {
      try {
        listener.close();
      } catch { /* closed */ }
      for (const c of open) quietClose(c);
    },
  };
  (async () => {
    try {
      for await (const client of listener) {
        const record: TappedConn = { fromClient: [], toClient: [], closedAt: null };
        tap.conns.push(record);
        open.add(client);
        void pair(client, targetPort, record, open);
      }
    } catch { /* listener closed */ }
  })();
  return tap;
}

function quietClose(c: Deno.Conn): void {
  try {
    c.close();
  } catch { /* closed */ }
}

async function pair(
  client: Deno.Conn,
  targetPort: number,
  record: TappedConn,
  open: Set<Deno.Conn>,
): Promise<void> {
  let server: Deno.Conn;
  try {
    server = await Deno.connect({ hostname: "127.0.0.1", port: targetPort });
  } catch {
    quietClose(client);
    open.delete(client);
    return;
  }
  open.add(server);
  const closeBoth = () => {
    if (record.closedAt === null) record.closedAt = performance.now();
    quietClose(client);
    quietClose(server);
    open.delete(client);
    open.delete(server);
  };
  const copy = async (from: Deno.Conn, to: Deno.Conn, keep: Uint8Array[]) => {
    const buf = new Uint8Array(64 * 1024);
    try {
      let n: number | null;
      while ((n = await from.read(buf)) !== null) {
        const bytes = buf.slice(0, n);
        keep.push(bytes);
        await writeAll(to, bytes);
      }
    } catch { /* reset or closed by the other direction */ }
    closeBoth();
  };
  await Promise.all([
    copy(client, server, record.fromClient),
    copy(server, client, record.toClient),
  ]);
}
