/**
 * Integration: CLIENT_SEND_TIMEOUT_SEC. A client that asks for an endless response and never reads
 * it must not hold Server A's stream: the relay's own server closes it and A's connection; behind
 * Deno.serve A's connection is closed (the client's socket stays until it reads, a documented
 * limit). Readers that take bytes, however slowly, and quiet SSE streams are never cut.
 * All on 127.0.0.1, against a raw-TCP fake A that keeps sending until its connection is closed.
 */

import assert from "node:assert/strict";
import type { RequestRecord } from "../lib/relay.ts";
import {
  deadline,
  delay,
  enc,
  readRequestHead,
  serversOfThisPass,
  sseResponse,
  startRawUpstream,
  startRelay,
  startUpstream,
  waitFor,
  writeAll,
} from "./helpers.ts";

const CHUNK = new Uint8Array(64 * 1024).fill(0x61);
const FRAMED = enc.encode(`${CHUNK.byteLength.toString(16)}\r\n`);
const CRLF = enc.encode("\r\n");

/** A fake A answering every request with an endless chunked body; notes when it is cut off. */
function endlessUpstream() {
  const state = {
    /** When A's connection to the relay was closed (ms since the epoch), per connection. */
    closedAt: [] as number[],
    sent: 0,
    stop: false,
  };
  const up = startRawUpstream(async (conn) => {
    const req = await readRequestHead(conn);
    if (req === null) return;
    await writeAll(
      conn,
      enc.encode(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n" +
          "transfer-encoding: chunked\r\n\r\n",
      ),
    );
    // The relay never sends more on this connection: a read ends only when it closes it.
    const gone = conn.read(new Uint8Array(16)).then(() => {}, () => {});
    let writing = true;
    const writer = (async () => {
      // Bounded: at most ~1 GB or until the test stops it.
      for (let i = 0; i < 16_000 && writing && !state.stop; i++) {
        await writeAll(conn, FRAMED);
        await writeAll(conn, CHUNK);
        await writeAll(conn, CRLF);
        state.sent += CHUNK.byteLength;
      }
    })().catch(() => {});
    await Promise.race([gone, writer]);
    writing = false;
    state.closedAt.push(Date.now());
  });
  return { up, state };
}

const REQUEST = "GET /v1/files/big/content HTTP/1.1\r\nhost: relay\r\n\r\n";

/** Reads until the relay ends the socket; resolves with the byte count, or -1 if still open. */
async function drainUntilClosed(c: Deno.Conn, limitMs: number): Promise<number> {
  const buf = new Uint8Array(256 * 1024);
  let total = 0;
  const timer = setTimeout(() => c.close(), limitMs);
  try {
    while (true) {
      const n = await c.read(buf);
      if (n === null) return total;
      total += n;
    }
  } catch (err) {
    // A reset is an end too; our own close on the deadline is not.
    return err instanceof Deno.errors.BadResource || err instanceof Deno.errors.Interrupted
      ? -1
      : total;
  } finally {
    clearTimeout(timer);
  }
}

deadline.test("own server: a client that never reads is closed after CLIENT_SEND_TIMEOUT_SEC and A's connection with it", async () => {
  const { up, state } = endlessUpstream();
  const records: RequestRecord[] = [];
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    CLIENT_SEND_TIMEOUT_SEC: "1",
    HTTP_SERVER: "relay",
  }, { observers: [(r) => records.push(r)] });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
  try {
    const t0 = Date.now();
    await client.write(enc.encode(REQUEST));
    // Socket buffers on both hops fill within milliseconds; then nothing moves for 1 s.
    await waitFor(() => state.closedAt.length === 1, 15_000, "A's connection to be closed");
    const took = state.closedAt[0]! - t0;
    assert.ok(took >= 900, `A's stream was cut after ${took} ms, before the deadline`);
    assert.ok(took < 10_000, `A's stream was cut only after ${took} ms`);
    // The client's socket was closed by the relay: it ends once the queued bytes are read.
    const read = await drainUntilClosed(client, 10_000);
    assert.ok(read >= 0, "the client's socket was still open");
    assert.ok(read < state.sent + 1024 * 1024, `the client read ${read} of ${state.sent} bytes`);
    await waitFor(() => records.length === 1, 5000, "the access-log record");
    assert.equal(records[0]!.status, 499);
    assert.equal(records[0]!.errorCode, "client_closed");
    const info = relay.app.debugInfo() as {
      clientConnections: { closedByRelay: Record<string, number> };
      limits: { clientSendTimeoutSec: number };
    };
    assert.equal(info.clientConnections.closedByRelay.send_timeout, 1);
    assert.equal(info.limits.clientSendTimeoutSec, 1);
    const metrics = await (await fetch(`${relay.url}/metrics`)).text();
    assert.match(metrics, /^relay_client_connections_closed_total\{reason="send_timeout"\} 1$/m);
    // A's connection was not pooled: the next request opens a new one, and is served.
    const res = await fetch(`${relay.url}/v1/files/big/content`);
    const reader = res.body!.getReader();
    assert.equal(res.status, 200);
    assert.ok(!(await reader.read()).done);
    await reader.cancel();
    assert.equal(up.connections, 2);
  } finally {
    state.stop = true;
    try {
      client.close();
    } catch { /* closed by the relay */ }
    await relay.close();
    up.close();
  }
});

deadline.test("own server: a client that keeps reading is not cut by CLIENT_SEND_TIMEOUT_SEC", async () => {
  const { up, state } = endlessUpstream();
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    CLIENT_SEND_TIMEOUT_SEC: "3",
    HTTP_SERVER: "relay",
  });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
  try {
    await client.write(enc.encode(REQUEST));
    // 256 KiB every 100 ms (~2.5 MB/s, slower than A sends). A write completes when the kernel
    // has room again (Linux wakes a writer once about a third of a ~4 MB send buffer drained):
    // measured ~0.7 s apart at this rate, well within the deadline.
    const buf = new Uint8Array(256 * 1024);
    let read = 0;
    const end = Date.now() + 5000;
    while (Date.now() < end) {
      const n = await client.read(buf);
      assert.notEqual(n, null, "the relay closed a reading client");
      read += n!;
      await delay(100);
    }
    assert.ok(read > 1024 * 1024, `read only ${read} bytes`);
    assert.equal(state.closedAt.length, 0, "A's stream was cut while the client read");
    const info = relay.app.debugInfo() as {
      clientConnections: { closedByRelay: Record<string, number> };
    };
    assert.equal(info.clientConnections.closedByRelay.send_timeout, undefined);
  } finally {
    state.stop = true;
    client.close();
    await waitFor(() => state.closedAt.length === 1, 10_000, "A's connection to end");
    await relay.close();
    up.close();
  }
});

for (const HTTP_SERVER of serversOfThisPass()) {
  deadline.test(`${HTTP_SERVER} server: an SSE stream quieter than CLIENT_SEND_TIMEOUT_SEC between events is not cut`, async () => {
    const up = startUpstream(() => sseResponse({ gapMs: 1200, count: 3 }));
    const relay = startRelay({
      UPSTREAM_SERVER_A: up.url,
      CLIENT_SEND_TIMEOUT_SEC: "0.5",
      HTTP_SERVER,
    });
    try {
      const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
      assert.equal(await res.text(), "data: 0\n\ndata: 1\n\ndata: 2\n\n");
      const info = relay.app.debugInfo() as {
        clientConnections: { closedByRelay: Record<string, number> };
      };
      assert.equal(info.clientConnections.closedByRelay.send_timeout, undefined);
    } finally {
      await relay.close();
      await up.close();
    }
  });
}

deadline.test("Deno.serve: a client that never reads gets A's stream aborted after CLIENT_SEND_TIMEOUT_SEC", async () => {
  const { up, state } = endlessUpstream();
  const records: RequestRecord[] = [];
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    CLIENT_SEND_TIMEOUT_SEC: "1",
    HTTP_SERVER: "deno",
  }, { observers: [(r) => records.push(r)] });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
  try {
    const t0 = Date.now();
    await client.write(enc.encode(REQUEST));
    await waitFor(() => state.closedAt.length === 1, 15_000, "A's connection to be closed");
    const took = state.closedAt[0]! - t0;
    assert.ok(took >= 900, `A's stream was cut after ${took} ms, before the deadline`);
    assert.ok(took < 10_000, `A's stream was cut only after ${took} ms`);
    await waitFor(() => records.length === 1, 5000, "the access-log record");
    assert.equal(records[0]!.status, 499);
    assert.equal(records[0]!.errorCode, "client_closed");
    const info = relay.app.debugInfo() as {
      clientConnections: { closedByRelay: Record<string, number> };
    };
    assert.equal(info.clientConnections.closedByRelay.send_timeout, 1);
    // Deno.serve gives the socket up only once the client has read what was queued for it.
    const read = await drainUntilClosed(client, 10_000);
    assert.ok(read >= 0, "the client's socket was still open after it read everything");
  } finally {
    state.stop = true;
    try {
      client.close();
    } catch { /* closed by the relay */ }
    await relay.close();
    up.close();
  }
});
