/**
 * Unit and integration: MAX_CONNECTIONS_PER_IP. One client address cannot take every slot of
 * MAX_CONNECTIONS: on the relay's own server it holds at most N sockets, on Deno.serve at most N
 * requests in flight. A second client address comes from binding fetch's client to 127.0.0.2
 * (still loopback; the relay listens on 127.0.0.1 only).
 */

import assert from "node:assert/strict";
import { PerIpCap } from "../lib/server/conn_limit.ts";
import { deadline, delay, enc, rawRequest, startRelay, startUpstream, waitFor } from "./helpers.ts";

Deno.test("PerIpCap counts each address apart, refuses over the cap and forgets addresses that hold nothing", () => {
  const cap = new PerIpCap(2);
  assert.ok(cap.take("10.0.0.1"));
  assert.ok(cap.take("10.0.0.1"));
  assert.ok(!cap.take("10.0.0.1"));
  assert.ok(cap.take("10.0.0.2"));
  assert.equal(cap.held("10.0.0.1"), 2);
  cap.release("10.0.0.1");
  assert.ok(cap.take("10.0.0.1"));
  cap.release("10.0.0.1");
  cap.release("10.0.0.1");
  cap.release("10.0.0.2");
  assert.equal(cap.addresses, 0);
  // A release without a take changes nothing.
  cap.release("10.0.0.3");
  assert.equal(cap.held("10.0.0.3"), 0);
  const off = new PerIpCap(0);
  for (let i = 0; i < 5; i++) assert.ok(off.take("10.0.0.1"));
  assert.equal(off.addresses, 0);
});

function secondAddress(): Deno.HttpClient {
  return Deno.createHttpClient({ localAddress: "127.0.0.2" });
}

deadline.test("own server: MAX_CONNECTIONS_PER_IP refuses one more socket from an address with 429, serves other addresses, and a closed socket frees its slot", async () => {
  const up = startUpstream(() => Response.json({ ok: true }));
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    MAX_CONNECTIONS_PER_IP: "2",
    HTTP_SERVER: "relay",
  });
  const other = secondAddress();
  const held: Deno.Conn[] = [];
  const open = () =>
    (relay.app.debugInfo() as { clientConnections: { open: number } }).clientConnections.open;
  try {
    // Two idle sockets from 127.0.0.1 (they never send a request) fill its share.
    for (let i = 0; i < 2; i++) {
      held.push(await Deno.connect({ hostname: "127.0.0.1", port: relay.port }));
    }
    await waitFor(() => open() === 2, 5000, "two sockets accepted");
    const refused = await rawRequest(
      relay.port,
      "GET /v1/models HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
    );
    assert.equal(refused.status, 429);
    assert.equal(refused.headers.get("retry-after"), "1");
    assert.equal(refused.headers.get("connection"), "close");
    const err = JSON.parse(new TextDecoder().decode(refused.body)).error;
    assert.equal(err.code, "too_many_connections");
    assert.equal(err.type, "rate_limit_error");
    assert.match(err.message, /MAX_CONNECTIONS_PER_IP is 2/);
    // fetch (hyper) reads the refusal too: it is sent once its request is in.
    const viaFetch = await fetch(`${relay.url}/v1/models`);
    assert.equal(viaFetch.status, 429);
    await viaFetch.body?.cancel();
    assert.equal(up.seen.length, 0, "a refused request reached A");

    // Another address is not affected.
    const res = await fetch(`${relay.url}/v1/models`, { client: other });
    assert.equal(res.status, 200);
    await res.body?.cancel();
    assert.equal(up.seen.length, 1);

    // One of 127.0.0.1's sockets closes: its next connection is served.
    held.pop()!.close();
    await waitFor(() => open() === 2, 5000, "the closed socket to be counted out");
    const served = await rawRequest(
      relay.port,
      "GET /v1/models HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
    );
    assert.equal(served.status, 200);
    const info = relay.app.debugInfo() as {
      clientConnections: { closedByRelay: Record<string, number> };
      limits: { maxConnectionsPerIp: number };
    };
    assert.equal(info.clientConnections.closedByRelay.over_ip_capacity, 2);
    assert.equal(info.limits.maxConnectionsPerIp, 2);
  } finally {
    for (const c of held) c.close();
    other.close();
    await relay.close();
    await up.close();
  }
});

deadline.test("Deno.serve: MAX_CONNECTIONS_PER_IP caps requests in flight per address, a stream until it ends", async () => {
  let finish: (() => void) | null = null;
  const up = startUpstream((req) => {
    if (!req.url.includes("stream")) return Response.json({ ok: true });
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(enc.encode("data: first\n\n"));
        finish = () => {
          finish = null;
          c.enqueue(enc.encode("data: last\n\n"));
          c.close();
        };
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  });
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    MAX_CONNECTIONS_PER_IP: "1",
    HTTP_SERVER: "deno",
  });
  const other = secondAddress();
  let reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  try {
    const stream = await fetch(`${relay.url}/v1/stream`, { method: "POST", body: "{}" });
    reader = stream.body!.getReader();
    assert.equal(new TextDecoder().decode((await reader.read()).value), "data: first\n\n");

    const refused = await fetch(`${relay.url}/v1/models`);
    assert.equal(refused.status, 429);
    assert.equal((await refused.json()).error.code, "too_many_connections");
    const res = await fetch(`${relay.url}/v1/models`, { client: other });
    assert.equal(res.status, 200);
    await res.body?.cancel();

    // The stream ends: its slot is free again.
    finish!();
    while (!(await reader.read()).done) { /* rest of the stream */ }
    // Deno.serve settles `completed` just after the last byte went out: poll briefly.
    let status = 0;
    const end = Date.now() + 5000;
    while (status !== 200 && Date.now() < end) {
      const r = await fetch(`${relay.url}/v1/models`);
      await r.body?.cancel();
      status = r.status;
      if (status !== 200) await delay(20);
    }
    assert.equal(status, 200, "the slot was not released when the stream ended");
  } finally {
    // A stream left open would hold the relay's shutdown.
    (finish as (() => void) | null)?.();
    await reader?.cancel().catch(() => {});
    other.close();
    await relay.close();
    await up.close();
  }
});
