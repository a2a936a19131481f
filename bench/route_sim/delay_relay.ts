/**
 * A delay-injecting TCP relay: one simulated network link on loopback (there is no kernel netem
 * here). Every byte read from one side is written to the other `oneWayMs` later, in order, in both
 * directions, so a round trip through the link costs `2 × oneWayMs`.
 *
 * The TCP handshake is simulated too: a real client's `connect()` returns after one round trip,
 * and its first bytes reach the server half a round trip after that. Through a userspace relay
 * `connect()` returns at once, so bytes from the connecting side are held until
 * `accept time + 2 × oneWayMs` before their one-way delay starts. Bytes the server sends back only
 * get the one-way delay. TLS passes through untouched (the relay sees ciphertext).
 */

import { HOST } from "../common.ts";

/** One link. */
export interface DelayRelayOptions {
  /** Port to listen on (0 = any). */
  port: number;
  targetPort: number;
  oneWayMs: number;
  /** Simulate the handshake round trip (default true). */
  handshake?: boolean;
}

/** A running link. */
export interface DelayRelay {
  port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  close(): void;
}

interface Item {
  due: number;
  bytes: Uint8Array | null;
}

/** Starts a link listening on 127.0.0.1. */
export function startDelayRelay(opts: DelayRelayOptions): DelayRelay {
  const listener = Deno.listen({ hostname: HOST, port: opts.port });
  const open = new Set<Deno.Conn>();
  let connections = 0;
  (async () => {
    for await (const client of listener) {
      connections++;
      const acceptedAt = performance.now();
      client.setNoDelay(true);
      let server: Deno.TcpConn;
      try {
        server = await Deno.connect({ hostname: HOST, port: opts.targetPort });
      } catch {
        client.close();
        continue;
      }
      server.setNoDelay(true);
      open.add(client);
      open.add(server);
      const holdUntil = opts.handshake === false ? 0 : acceptedAt + 2 * opts.oneWayMs;
      let ended = 0;
      const done = () => {
        if (++ended < 2) return;
        for (const c of [client, server]) {
          open.delete(c);
          try {
            c.close();
          } catch { /* closed */ }
        }
      };
      pump(client, server, opts.oneWayMs, holdUntil).finally(done);
      pump(server, client, opts.oneWayMs, 0).finally(done);
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    get connections() {
      return connections;
    },
    close() {
      try {
        listener.close();
      } catch { /* closed */ }
      for (const c of open) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

/** Copies `from` → `to`, each chunk delivered `delay` ms after it was read (not before `hold`). */
async function pump(from: Deno.Conn, to: Deno.Conn, delay: number, hold: number): Promise<void> {
  const queue: Item[] = [];
  let wake: (() => void) | null = null;
  const writer = (async () => {
    while (true) {
      if (queue.length === 0) {
        await new Promise<void>((r) => (wake = r));
        continue;
      }
      const item = queue[0]!;
      const wait = item.due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      queue.shift();
      if (item.bytes === null) {
        try {
          await (to as Deno.TcpConn).closeWrite();
        } catch { /* closed */ }
        return;
      }
      try {
        let off = 0;
        while (off < item.bytes.byteLength) off += await to.write(item.bytes.subarray(off));
      } catch {
        try {
          from.close();
        } catch { /* closed */ }
        return;
      }
    }
  })();
  const buf = new Uint8Array(64 * 1024);
  while (true) {
    let n: number | null;
    try {
      n = await from.read(buf);
    } catch {
      n = null;
    }
    const due = Math.max(performance.now(), hold) + delay;
    queue.push({ due, bytes: n === null ? null : buf.slice(0, n) });
    const w = wake as (() => void) | null;
    wake = null;
    w?.();
    if (n === null) break;
  }
  await writer;
}
