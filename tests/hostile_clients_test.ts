/**
 * Integration: over-long header sections, malformed request lines, slowloris sockets and half-sent
 * bodies never crash the relay or stop it serving others (issue #4 point 5).
 */

import assert from "node:assert/strict";
import { delay, enc, rawRequest, startRelay, startUpstream } from "./helpers.ts";

const okUpstream = () => startUpstream(() => Response.json({ ok: true }));

async function stillServes(port: number): Promise<void> {
  const res = await rawRequest(
    port,
    "GET /v1/models HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
  );
  assert.equal(res.status, 200);
}

Deno.test("an over-long header section gets 431 from the relay or 400 from Deno's parser, and A sees nothing", async () => {
  const up = okUpstream();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const big = (kb: number) =>
      `GET /v1/models HTTP/1.1\r\nhost: b\r\nx-big: ${"a".repeat(kb * 1024)}\r\n` +
      "connection: close\r\n\r\n";
    const r40 = await rawRequest(relay.port, big(40));
    assert.equal(r40.status, 431);
    const body = JSON.parse(new TextDecoder().decode(r40.body));
    assert.equal(body.error.code, "headers_too_large");
    assert.equal(body.error.type, "invalid_request_error");
    // Many small fields add up the same way.
    const many = "GET /v1/models HTTP/1.1\r\nhost: b\r\n" +
      Array.from({ length: 90 }, (_, i) => `x-f${i}: ${"v".repeat(400)}\r\n`).join("") +
      "connection: close\r\n\r\n";
    assert.equal((await rawRequest(relay.port, many)).status, 431);
    for (const kb of [100, 1024]) {
      const r = await rawRequest(relay.port, big(kb));
      assert.ok(r.status === 400 || r.status === 431, `${kb} KB → ${r.status}`);
    }
    assert.equal(up.seen.length, 0);
    await stillServes(relay.port);
  } finally {
    await relay.close();
    await up.close();
  }
});

Deno.test("invalid request lines and framing get a 4xx or a closed connection, never a crash", async () => {
  const up = okUpstream();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const bad = [
      "GARBAGE\r\n\r\n",
      "G@T /v1/models HTTP/1.1\r\nhost: b\r\n\r\n",
      "GET /v1/models HTTP/9.9\r\nhost: b\r\n\r\n",
      `GET /${"a".repeat(100_000)} HTTP/1.1\r\nhost: b\r\n\r\n`,
      "GET /v1/models HTTP/1.1\r\nhost: b\r\nx-a: b\0c\r\n\r\n",
      "GET /v1/models HTTP/1.1\r\nhost: b\r\nbad name: v\r\n\r\n",
      "GET /v1/models HTTP/1.1\r\nhost: b\r\nx-a: b\r\n folded\r\n\r\n",
      "POST /v1/messages HTTP/1.1\r\nhost: b\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
      "POST /v1/messages HTTP/1.1\r\nhost: b\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
      "POST /v1/messages HTTP/1.1\r\nhost: b\r\ncontent-length: -1\r\n\r\n",
      "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello on the plain port
      "\r\n\r\n\r\n",
    ];
    for (const req of bad) {
      const res = await rawRequest(relay.port, req);
      assert.ok(
        Number.isNaN(res.status) || (res.status >= 400 && res.status < 500),
        `${JSON.stringify(req.slice(0, 40))} → ${res.status}`,
      );
    }
    assert.equal(up.seen.length, 0);
    await stillServes(relay.port);
  } finally {
    await relay.close();
    await up.close();
  }
});

Deno.test("slowloris sockets and half-sent bodies do not stop the relay serving others", async () => {
  const up = okUpstream();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, CLIENT_BODY_TIMEOUT_SEC: "0.5" });
  const conns: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 50; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
      conns.push(c);
      await c.write(
        enc.encode(
          i % 2 === 0
            ? "GET /v1/models HTTP/1.1\r\nho"
            : "POST /v1/messages HTTP/1.1\r\nhost: b\r\ncontent-length: 100\r\n\r\nx",
        ),
      );
    }
    for (let round = 0; round < 3; round++) {
      for (const c of conns.slice(0, 25)) await c.write(enc.encode("x")).catch(() => 0);
      const t0 = Date.now();
      await stillServes(relay.port);
      assert.ok(Date.now() - t0 < 500, "a normal request was slowed down");
      await delay(50);
    }
  } finally {
    for (const c of conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await relay.close();
    await up.close();
  }
});
