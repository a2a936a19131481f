/**
 * Integration: WebSocket pass-through on /v1/, with a real WebSocket server as A and Deno's
 * WebSocket client.
 */

import assert from "node:assert/strict";
import type { RequestRecord } from "../lib/relay.ts";
import { deadline, delay, rawRequest, startRelay, startUpstream, waitFor } from "./helpers.ts";

interface Seen {
  headers: Headers;
  messages: Array<string | number[]>;
  closed: { code: number; reason: string } | null;
}

/** A fake A: echoes messages with a prefix; `closeWith` makes it close after the first message. */
function wsUpstream(opts: { closeWith?: [number, string]; refuse?: number } = {}) {
  const seen: Seen = { headers: new Headers(), messages: [], closed: null };
  const up = startUpstream((req) => {
    seen.headers = new Headers(req.headers);
    if (opts.refuse) {
      return new Response(
        JSON.stringify({ error: { message: "no websocket here", type: "x", code: "y" } }),
        {
          status: opts.refuse,
          headers: { "content-type": "application/json" },
        },
      );
    }
    const protocol = req.headers.get("sec-websocket-protocol")?.split(",")[0]?.trim();
    const { socket, response } = Deno.upgradeWebSocket(req, protocol ? { protocol } : {});
    socket.binaryType = "arraybuffer";
    socket.onmessage = (e) => {
      const data = typeof e.data === "string" ? e.data : [...new Uint8Array(e.data as ArrayBuffer)];
      seen.messages.push(data);
      if (opts.closeWith) return socket.close(...opts.closeWith);
      socket.send(typeof e.data === "string" ? `echo:${e.data}` : e.data);
    };
    socket.onclose = (e) => (seen.closed = { code: e.code, reason: e.reason });
    return response;
  });
  return { up, seen };
}

function open(
  url: string,
  headers: Record<string, string>,
  protocols?: string[],
): Promise<WebSocket> {
  // Deno's WebSocket takes headers as an extension of the standard options.
  const ws = new WebSocket(
    url,
    { headers, ...(protocols ? { protocols } : {}) } as unknown as string[],
  );
  ws.binaryType = "arraybuffer";
  return new Promise((resolve, reject) => {
    ws.onopen = () => resolve(ws);
    ws.onerror = (e) => reject(new Error(`websocket failed: ${(e as ErrorEvent).message}`));
  });
}

const HANDSHAKE =
  "GET /v1/responses HTTP/1.1\r\nhost: b\r\nconnection: Upgrade\r\nupgrade: websocket\r\n" +
  "sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/** Reads a response head from a raw connection. */
async function readHead(conn: Deno.Conn): Promise<string> {
  const buf = new Uint8Array(4096);
  let head = "";
  while (!head.includes("\r\n\r\n")) {
    const n = await conn.read(buf);
    assert.ok(n !== null, "relay closed before its answer");
    head += new TextDecoder().decode(buf.subarray(0, n));
  }
  assert.match(head, /^HTTP\/1\.1 101 /);
  return head;
}

function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  return new Promise((
    resolve,
  ) => (ws.onclose = (e) => resolve({ code: e.code, reason: e.reason })));
}

// The relay's own server tunnels the upgraded connection byte for byte; Deno.serve (TLS at the
// relay, or HTTP_SERVER=deno) bridges messages. Both must behave the same for a client.
for (
  const [HTTP_SERVER, label] of [["relay", "tunnel"], ["deno", "bridge"]] as const
) {
  deadline.test(`${label}: WebSocket on /v1/responses relays messages both ways in order, with headers and client IP`, async () => {
    const { up, seen } = wsUpstream();
    const relay = startRelay({ UPSTREAM_SERVER_A: up.url, HTTP_SERVER });
    try {
      const ws = await open(`${relay.url.replace("http", "ws")}/v1/responses?x=1`, {
        authorization: "Bearer sk-codex",
        session_id: "sess-9",
        "x-forwarded-for": "6.6.6.6",
      }, ["responses-v1"]);
      assert.equal(ws.protocol, "responses-v1");
      const replies: Array<string | number[]> = [];
      ws.onmessage = (e) =>
        replies.push(typeof e.data === "string" ? e.data : [...new Uint8Array(e.data)]);
      for (let i = 0; i < 20; i++) ws.send(`m${i}`);
      ws.send(new Uint8Array([1, 2, 3, 250]));
      await waitFor(() => replies.length === 21, 3000, "21 replies");
      assert.deepEqual(replies.slice(0, 20), Array.from({ length: 20 }, (_, i) => `echo:m${i}`));
      assert.deepEqual(replies[20], [1, 2, 3, 250]);
      assert.equal(seen.headers.get("authorization"), "Bearer sk-codex");
      assert.equal(seen.headers.get("session_id"), "sess-9");
      assert.equal(seen.headers.get("x-real-ip"), "127.0.0.1");
      assert.equal(seen.headers.get("x-forwarded-for"), "127.0.0.1");
      assert.equal(new URL(up.seen[0]!.url).search, "?x=1");
      const done = closed(ws);
      ws.close(4001, "client bye");
      await done;
      await waitFor(() => seen.closed !== null, 3000, "upstream close");
      assert.deepEqual(seen.closed, { code: 4001, reason: "client bye" });
      await waitFor(() => relay.app.inFlight === 0, 3000, "in-flight back to 0");
    } finally {
      await relay.close();
      await up.close();
    }
  });

  deadline.test(`${label}: A closing the WebSocket passes its close code and reason to the client`, async () => {
    for (
      const [code, reason] of [[4002, "done here"], [1011, "server error"], [
        1000,
        "normal",
      ]] as const
    ) {
      const { up } = wsUpstream({ closeWith: [code, reason] });
      const relay = startRelay({ UPSTREAM_SERVER_A: up.url, HTTP_SERVER });
      try {
        const ws = await open(`${relay.url.replace("http", "ws")}/v1/responses`, {});
        const done = closed(ws);
        ws.send("bye please");
        assert.deepEqual(await done, { code, reason });
      } finally {
        await relay.close();
        await up.close();
      }
    }
  });

  deadline.test(`${label}: a client that drops its socket without a close frame is logged as client_closed (499)`, async () => {
    const { up, seen } = wsUpstream();
    const records: RequestRecord[] = [];
    const relay = startRelay({ UPSTREAM_SERVER_A: up.url, HTTP_SERVER }, {
      observers: [(r) => records.push(r)],
    });
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
    try {
      await conn.write(new TextEncoder().encode(HANDSHAKE));
      await readHead(conn);
      const mask = [9, 8, 7, 6];
      const payload = [..."hi"].map((c, i) => c.charCodeAt(0) ^ mask[i % 4]!);
      await conn.write(new Uint8Array([0x81, 0x80 | 2, ...mask, ...payload]));
      await waitFor(() => seen.messages.length === 1, 3000, "A to get the message");
      conn.close();
      await waitFor(() => records.length === 1, 3000, "the session's record");
      assert.equal(records[0]!.errorCode, "client_closed");
      assert.equal(records[0]!.status, 499);
      await waitFor(() => seen.closed !== null, 3000, "A's side to close");
    } finally {
      try {
        conn.close();
      } catch { /* closed */ }
      await relay.close();
      await up.close();
    }
  });

  deadline.test(`${label}: a WebSocket session's record has the 101's time as ttfb, the upstream and the bytes each way`, async () => {
    const { up } = wsUpstream();
    const records: RequestRecord[] = [];
    const relay = startRelay({ UPSTREAM_SERVER_A: up.url, HTTP_SERVER }, {
      observers: [(r) => records.push(r)],
    });
    try {
      const ws = await open(`${relay.url.replace("http", "ws")}/v1/responses`, {});
      const replies: unknown[] = [];
      ws.onmessage = (e) => replies.push(e.data);
      ws.send("x".repeat(1000));
      await waitFor(() => replies.length === 1, 3000, "the echo");
      // The session lasts well beyond its handshake: ttfb must not grow with it.
      await delay(300);
      const done = closed(ws);
      ws.close(1000, "bye");
      await done;
      await waitFor(() => records.length === 1, 3000, "the session's record");
      const r = records[0]!;
      assert.equal(r.status, 101);
      assert.equal(r.errorCode, undefined);
      assert.equal(r.upstream, up.url);
      assert.ok(
        r.ttfbMs !== undefined && r.ttfbMs < r.durationMs - 250,
        `ttfb ${r.ttfbMs} of ${r.durationMs} ms`,
      );
      assert.ok(r.requestBytes >= 1000, `request bytes ${r.requestBytes}`);
      assert.ok(r.responseBytes >= 1005, `response bytes ${r.responseBytes}`);
      assert.equal(r.stream, true);
    } finally {
      await relay.close();
      await up.close();
    }
  });

  deadline.test(`${label}: A refusing the upgrade (426, 404) reaches the client as that HTTP answer`, async () => {
    for (const status of [426, 404, 405]) {
      const { up } = wsUpstream({ refuse: status });
      const relay = startRelay({ UPSTREAM_SERVER_A: up.url, HTTP_SERVER });
      try {
        const res = await rawRequest(
          relay.port,
          "GET /v1/responses HTTP/1.1\r\nhost: b\r\nconnection: Upgrade, close\r\nupgrade: websocket\r\n" +
            "sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        );
        assert.equal(res.status, status);
        assert.match(new TextDecoder().decode(res.body), /no websocket here/);
      } finally {
        await relay.close();
        await up.close();
      }
    }
  });
}

deadline.test("bridge: a message over A's 32 MiB limit closes the session with 1009", async () => {
  // Only the bridge reads messages; in a tunnel A's own limit applies.
  const { up } = wsUpstream();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, HTTP_SERVER: "deno" });
  try {
    const ws = await open(`${relay.url.replace("http", "ws")}/v1/responses`, {});
    const done = closed(ws);
    ws.send(new Uint8Array(32 * 1024 * 1024 + 1));
    const { code } = await done;
    assert.equal(code, 1009);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("an unreachable A makes the WebSocket handshake a JSON 502", async () => {
  const { closedPort } = await import("./helpers.ts");
  const relay = startRelay({ UPSTREAM_SERVER_A: `http://127.0.0.1:${closedPort()}` });
  try {
    const res = await rawRequest(
      relay.port,
      "GET /v1/responses HTTP/1.1\r\nhost: b\r\nconnection: Upgrade, close\r\nupgrade: websocket\r\n" +
        "sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert.equal(res.status, 502);
    assert.equal(JSON.parse(new TextDecoder().decode(res.body)).error.code, "upstream_unreachable");
    assert.equal(relay.app.inFlight, 0);
  } finally {
    await relay.close();
  }
});

deadline.test("tunnel: the client's handshake reaches A as sent and A's 101 comes back as sent", async () => {
  const { up } = wsUpstream();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, HTTP_SERVER: "relay" });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
  try {
    const key = "dGhlIHNhbXBsZSBub25jZQ==";
    await conn.write(
      new TextEncoder().encode(
        "GET /v1/responses HTTP/1.1\r\nhost: b\r\nconnection: Upgrade\r\nupgrade: websocket\r\n" +
          `sec-websocket-version: 13\r\nsec-websocket-key: ${key}\r\n` +
          "sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
      ),
    );
    const buf = new Uint8Array(4096);
    let head = "";
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      assert.ok(n !== null, "relay closed before its 101");
      head += new TextDecoder().decode(buf.subarray(0, n));
    }
    assert.match(head, /^HTTP\/1\.1 101 /);
    // RFC 6455's example key: A answered the client's own key, not one made up by the relay.
    assert.match(head, /sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/i);
    assert.equal(up.seen[0]!.headers.get("sec-websocket-key"), key);
    assert.match(up.seen[0]!.headers.get("sec-websocket-extensions") ?? "", /permessage-deflate/);
    // A masked text frame "hi" goes through byte for byte and A's echo comes back.
    const mask = [1, 2, 3, 4];
    const payload = [..."hi"].map((c, i) => c.charCodeAt(0) ^ mask[i % 4]!);
    await conn.write(new Uint8Array([0x81, 0x80 | 2, ...mask, ...payload]));
    const n = await conn.read(buf);
    assert.ok(n !== null);
    const frame = buf.subarray(0, n);
    assert.equal(frame[0], 0x81);
    assert.equal(new TextDecoder().decode(frame.subarray(2, 2 + frame[1]!)), "echo:hi");
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
    await waitFor(() => relay.app.inFlight === 0, 3000, "in-flight back to 0");
    await relay.close();
    await up.close();
  }
});
