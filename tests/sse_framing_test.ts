/**
 * An event stream keeps A's framing and is logged as a stream, even when A's whole answer arrives
 * in the relay's first read (a short answer, or a fast A): the relay used to re-frame such an
 * answer with content-length where A sent it chunked, and log it as `stream:false`.
 */

import assert from "node:assert/strict";
import type { RequestRecord } from "../lib/relay.ts";
import {
  deadline,
  rawRequest,
  readRequestHead,
  serversOfThisPass,
  startRawUpstream,
  startRelay,
  waitFor,
  writeAll,
} from "./helpers.ts";

const EVENTS = 'event: message_start\ndata: {"type":"message_start"}\n\n' +
  'event: message_stop\ndata: {"type":"message_stop"}\n\n';

/** A fake A that writes its whole answer, head and body, in one write. */
function oneWriteUpstream(framing: "chunked" | "length", contentType = "text/event-stream") {
  const body = new TextEncoder().encode(EVENTS);
  return startRawUpstream(async (conn) => {
    const req = await readRequestHead(conn);
    if (req === null) return;
    const head = `HTTP/1.1 200 OK\r\ncontent-type: ${contentType}\r\n` +
      (framing === "chunked"
        ? `transfer-encoding: chunked\r\n\r\n${
          body.byteLength.toString(16)
        }\r\n${EVENTS}\r\n0\r\n\r\n`
        : `content-length: ${body.byteLength}\r\n\r\n${EVENTS}`);
    await writeAll(conn, head);
    // Keep the connection until the relay is done with it.
    await conn.read(new Uint8Array(1024)).catch(() => null);
  });
}

const REQUEST = "POST /v1/messages HTTP/1.1\r\nhost: b\r\nconnection: close\r\n" +
  "content-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

for (const HTTP_SERVER of serversOfThisPass()) {
  deadline.test(`${HTTP_SERVER} server: an SSE answer A sent chunked in one read stays chunked and is logged as a stream`, async () => {
    const up = oneWriteUpstream("chunked");
    const records: RequestRecord[] = [];
    const relay = startRelay({ UPSTREAM_SERVER_A: up.url, HTTP_SERVER }, {
      observers: [(r) => records.push(r)],
    });
    try {
      const res = await rawRequest(relay.port, REQUEST);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("transfer-encoding"), "chunked", res.head);
      assert.equal(res.headers.get("content-length"), undefined, res.head);
      assert.equal(new TextDecoder().decode(res.body), EVENTS);
      await waitFor(() => records.length === 1, 3000, "the record");
      assert.equal(records[0]!.stream, true);
      assert.equal(records[0]!.responseBytes, new TextEncoder().encode(EVENTS).byteLength);
    } finally {
      await relay.close();
      up.close();
    }
  });

  deadline.test(`${HTTP_SERVER} server: an SSE answer A sent with content-length keeps it and is logged as a stream`, async () => {
    const up = oneWriteUpstream("length", "Text/Event-Stream; charset=utf-8");
    const records: RequestRecord[] = [];
    const relay = startRelay({ UPSTREAM_SERVER_A: up.url, HTTP_SERVER }, {
      observers: [(r) => records.push(r)],
    });
    try {
      const res = await rawRequest(relay.port, REQUEST);
      assert.equal(res.status, 200);
      assert.equal(
        res.headers.get("content-length"),
        String(new TextEncoder().encode(EVENTS).byteLength),
        res.head,
      );
      assert.equal(new TextDecoder().decode(res.body), EVENTS);
      await waitFor(() => records.length === 1, 3000, "the record");
      assert.equal(records[0]!.stream, true);
    } finally {
      await relay.close();
      up.close();
    }
  });
}

deadline.test("a JSON answer that arrives in one read is still sent whole with content-length", async () => {
  const json = '{"ok":true}';
  const up = startRawUpstream(async (conn) => {
    if ((await readRequestHead(conn)) === null) return;
    await writeAll(
      conn,
      `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n` +
        `${json.length.toString(16)}\r\n${json}\r\n0\r\n\r\n`,
    );
    await conn.read(new Uint8Array(1024)).catch(() => null);
  });
  const records: RequestRecord[] = [];
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, HTTP_SERVER: "relay" }, {
    observers: [(r) => records.push(r)],
  });
  try {
    const res = await rawRequest(relay.port, REQUEST);
    assert.equal(res.headers.get("content-length"), String(json.length));
    assert.equal(new TextDecoder().decode(res.body), json);
    await waitFor(() => records.length === 1, 3000, "the record");
    assert.equal(records[0]!.stream, false);
  } finally {
    await relay.close();
    up.close();
  }
});
