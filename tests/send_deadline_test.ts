/**
 * The own server's send deadline, one connection on a scripted socket: a write counts against
 * `CLIENT_SEND_TIMEOUT_SEC` only while it is in flight. A quiet stream (every write done, the next
 * chunk not there yet) is never cut, however long; a write that makes no progress at all is cut
 * once the deadline passes, even after earlier writes on the same response completed.
 *
 * Why a scripted socket: on a real one, the write that stalls usually takes part of its bytes
 * first, and that progress restarts the deadline (the integration tests in send_timeout_test.ts
 * see only that case). A write that takes nothing from its start is what this file pins down.
 */

import assert from "node:assert/strict";
import { Connection, type ConnectionHost } from "../lib/server/connection.ts";
import { BodyPool } from "../lib/server/body_pool.ts";
import { POOL_BUF } from "../lib/server/response_writer.ts";
import { IDLE_SLOT, Watchdog, WriteSlabs } from "../lib/http/mod.ts";
import { deadline, delay, waitFor } from "./helpers.ts";

const enc = new TextEncoder();

/**
 * A socket that delivers one request, then no more bytes until closed; its writes complete at once
 * until `stall` is set, and from then on never (until the socket is closed, when they fail).
 */
function scriptedSocket(request: string) {
  const state = { stall: false, closed: false, written: "", stalledAt: 0, closedAt: 0 };
  let pending = enc.encode(request);
  const closers: Array<() => void> = [];
  const gone = () => Promise.reject(new Deno.errors.BadResource("closed"));
  const conn = {
    remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 40000 },
    localAddr: { transport: "tcp", hostname: "127.0.0.1", port: 8000 },
    read(buf: Uint8Array): Promise<number | null> {
      if (state.closed) return Promise.resolve(null);
      if (pending.byteLength > 0) {
        const n = Math.min(buf.byteLength, pending.byteLength);
        buf.set(pending.subarray(0, n));
        pending = pending.subarray(n);
        return Promise.resolve(n);
      }
      return new Promise((resolve) => closers.push(() => resolve(null)));
    },
    write(bytes: Uint8Array): Promise<number> {
      if (state.closed) return gone();
      if (!state.stall) {
        state.written += new TextDecoder().decode(bytes);
        return Promise.resolve(bytes.byteLength);
      }
      state.stalledAt ||= Date.now();
      return new Promise((_, reject) =>
        closers.push(() => reject(new Deno.errors.BadResource("closed")))
      );
    },
    close() {
      if (state.closed) return;
      state.closed = true;
      state.closedAt = Date.now();
      for (const c of closers.splice(0)) c();
    },
    setNoDelay() {},
    setKeepAlive() {},
    ref() {},
    unref() {},
  };
  return { conn: conn as unknown as Deno.TcpConn, state };
}

/** The parts of the server a connection uses, with a send deadline of `sendMs`. */
function host(
  sendMs: number,
  handler: () => Response,
): { host: ConnectionHost; dropped: string[]; close(): void } {
  const dropped: string[] = [];
  const dogs = [new Watchdog(5000), new Watchdog(5000), new Watchdog(sendMs)];
  const idleDog = new Watchdog(5000, IDLE_SLOT);
  const h: ConnectionHost = {
    handler,
    maxHeadBytes: 16 * 1024,
    fallbackHost: "relay",
    headerDog: dogs[0]!,
    idleDog,
    bodyDog: dogs[1]!,
    sendDog: dogs[2]!,
    closing: false,
    errorResponse: () => Promise.resolve(new Response("error", { status: 500 })),
    dropped: (reason) => void dropped.push(reason),
    linger: (conn) => conn.close(),
    closeAfterResponse: (conn) => conn.close(),
    takeBuffer: () => new Uint8Array(POOL_BUF),
    giveBuffer: () => {},
    bodies: new BodyPool(),
    slabs: new WriteSlabs(),
    remove: () => {},
  };
  return { host: h, dropped, close: () => [...dogs, idleDog].forEach((d) => d.close()) };
}

deadline.test("own server: a quiet stream outlasts the send deadline, and a write that takes nothing is cut after it", async () => {
  const sendMs = 300;
  let ctrl!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({ start: (c) => void (ctrl = c) });
  const h = host(
    sendMs,
    () => new Response(body, { headers: { "content-type": "text/event-stream" } }),
  );
  const { conn, state } = scriptedSocket(
    "POST /v1/chat/completions HTTP/1.1\r\nhost: relay\r\ncontent-length: 2\r\n\r\n{}",
  );
  const connection = new Connection(h.host, conn);
  const served = connection.run();
  try {
    for (let i = 0; i < 3; i++) {
      ctrl.enqueue(enc.encode(`data: ${i}\n\n`));
      await delay(20);
    }
    // However the writer grouped them (a busy machine may gather two in one write).
    await waitFor(() => state.written.includes("data: 2\n\n"), 5000, "the three events written");
    // Every write done, nothing to send for three deadlines: a quiet stream, not a stalled client.
    await delay(3 * sendMs);
    assert.equal(state.closed, false, "a quiet stream was cut");
    assert.deepEqual(h.dropped, []);
    // The client stops taking bytes: the next write makes no progress from its start.
    state.stall = true;
    ctrl.enqueue(enc.encode("data: 3\n\n"));
    await waitFor(() => state.closed, 5000, "the stalled connection to be closed");
    const took = state.closedAt - state.stalledAt;
    assert.ok(took >= sendMs - 50, `cut ${took} ms into the stalled write, before the deadline`);
    assert.ok(took < sendMs * 5, `cut only ${took} ms into the stalled write`);
    assert.deepEqual(h.dropped, ["send_timeout"]);
    await served;
  } finally {
    conn.close();
    h.close();
  }
});
