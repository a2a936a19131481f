/**
 * Integration: over-long header sections, malformed request lines, slowloris sockets and half-sent
 * bodies never crash the relay or stop it serving others.
 */

import assert from "node:assert/strict";
import { deadline, delay, enc, rawRequest, startRelay, startUpstream, waitFor } from "./helpers.ts";

const okUpstream = () => startUpstream(() => Response.json({ ok: true }));

async function stillServes(port: number): Promise<void> {
  const res = await rawRequest(
    port,
    "GET /v1/models HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
  );
  assert.equal(res.status, 200);
}

deadline.test("an over-long header section gets 431 from the relay or 400 from Deno's parser, and A sees nothing", async () => {
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

deadline.test("invalid request lines and framing get a 4xx or a closed connection, never a crash", async () => {
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
    const t0 = Date.now();
    for (const req of bad) {
      const res = await rawRequest(relay.port, req);
      assert.ok(
        Number.isNaN(res.status) || (res.status >= 400 && res.status < 500),
        `${JSON.stringify(req.slice(0, 40))} → ${res.status}`,
      );
    }
    // Answered at once, not after the header timeout (a ClientHello never ends its "head").
    assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms`);
    assert.equal(up.seen.length, 0);
    await stillServes(relay.port);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("slowloris sockets and half-sent bodies do not stop the relay serving others", async () => {
  const up = okUpstream();
  // The body timeout is well above the bound below, so a served request is never mistaken for one
  // that waited for the half-sent bodies to time out.
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, CLIENT_BODY_TIMEOUT_SEC: "5" });
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
      assert.ok(Date.now() - t0 < 2000, "a normal request was slowed down");
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

/** Resolves with how the socket ended: the status line the relay sent, or "closed". */
async function ending(c: Deno.Conn, limitMs: number): Promise<string> {
  const buf = new Uint8Array(4096);
  let text = "";
  const timer = setTimeout(() => c.close(), limitMs);
  try {
    while (true) {
      const n = await c.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
  } catch {
    return "still open";
  } finally {
    clearTimeout(timer);
  }
  return text === "" ? "closed" : text.split("\r\n")[0]!;
}

deadline.test("slowloris sockets get 408 and are closed after CLIENT_HEADER_TIMEOUT_SEC; idle keep-alive after CLIENT_IDLE_TIMEOUT_SEC", async () => {
  const up = okUpstream();
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    CLIENT_HEADER_TIMEOUT_SEC: "0.6",
    CLIENT_IDLE_TIMEOUT_SEC: "0.8",
    HTTP_SERVER: "relay",
  });
  const conns: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 20; i++) {
      conns.push(await Deno.connect({ hostname: "127.0.0.1", port: relay.port }));
    }
    // Half of them drip a header byte every 100 ms (never finishing); the rest send nothing.
    let dripping = true;
    const drip = (async () => {
      for (const c of conns.slice(0, 10)) {
        await c.write(enc.encode("GET /v1/models HTTP/1.1\r\nx-a: ")).catch(() => 0);
      }
      while (dripping) {
        for (const c of conns.slice(0, 10)) await c.write(enc.encode("a")).catch(() => 0);
        await delay(100);
      }
    })();
    const t0 = Date.now();
    const ends = await Promise.all(conns.map((c) => ending(c, 5000)));
    dripping = false;
    await drip;
    const took = Date.now() - t0;
    assert.deepEqual(ends.slice(0, 10), Array(10).fill("HTTP/1.1 408 Request Timeout"));
    assert.deepEqual(ends.slice(10), Array(10).fill("closed"));
    assert.ok(took < 3000, `sockets closed after ${took} ms`);
    await stillServes(relay.port);
    // Operators see it: counted by reason in /metrics and /debug/info.
    const metrics = await (await fetch(`${relay.url}/metrics`)).text();
    assert.match(metrics, /^relay_client_connections_closed_total\{reason="header_timeout"\} 20$/m);
    assert.match(metrics, /^relay_client_connections \d+$/m);
    const info = await (await fetch(`${relay.url}/debug/info`)).json();
    assert.equal(info.clientConnections.server, "relay");
    assert.equal(info.clientConnections.closedByRelay.header_timeout, 20);

    // A kept-alive connection that goes quiet after its response is closed by the relay.
    const c = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
    conns.push(c);
    await c.write(enc.encode("GET /v1/models HTTP/1.1\r\nhost: b\r\n\r\n"));
    const idleStart = Date.now();
    const end = await ending(c, 5000);
    assert.match(end, /^HTTP\/1\.1 200/);
    const idle = Date.now() - idleStart;
    assert.ok(idle >= 600 && idle < 3000, `idle connection closed after ${idle} ms`);
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

deadline.test("MAX_CONNECTIONS caps open client sockets: one more gets 503 once its request is in, and is closed", async () => {
  const up = okUpstream();
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    MAX_CONNECTIONS: "3",
    HTTP_SERVER: "relay",
  });
  const held: Deno.Conn[] = [];
  try {
    const open = () =>
      (relay.app.debugInfo().clientConnections as { open: number } | null)?.open ?? -1;
    // Three idle sockets (they never send a request) fill the cap.
    for (let i = 0; i < 3; i++) {
      held.push(await Deno.connect({ hostname: "127.0.0.1", port: relay.port }));
    }
    await waitFor(() => open() === 3, 5000, "the relay accepting the three idle sockets");
    const res = await rawRequest(
      relay.port,
      "GET /v1/models HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
    );
    assert.equal(res.status, 503);
    assert.equal(JSON.parse(new TextDecoder().decode(res.body)).error.code, "overloaded");
    // Real HTTP clients (fetch is hyper) read the 503 too: it is sent once their request is in.
    const statuses = await Promise.all(Array.from({ length: 200 }, async () => {
      const r = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
      await r.body?.cancel();
      return r.status;
    }));
    assert.deepEqual(statuses, Array(200).fill(503));
    assert.equal(up.seen.length, 0);
    // One socket freed: once the relay has seen it close, the next client is served.
    held.pop()!.close();
    await waitFor(() => open() <= 2, 5000, "the relay seeing the freed socket close");
    await stillServes(relay.port);
  } finally {
    for (const c of held) c.close();
    await relay.close();
    await up.close();
  }
});
