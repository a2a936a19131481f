/**
 * Integration: what the client sees when Server A is down, slow, silent or one of several.
 */

import assert from "node:assert/strict";
import {
  closedPort,
  deadline,
  delay,
  enc,
  readRequestHead,
  startRawUpstream,
  startRelay,
  startUpstream,
} from "./helpers.ts";

deadline.test("an unreachable A gives a JSON 502 bad_gateway_error within a second, without internals", async () => {
  const port = closedPort();
  const relay = startRelay({ UPSTREAM_SERVER_A: `http://127.0.0.1:${port}` });
  try {
    const t0 = performance.now();
    const res = await fetch(`${relay.url}/v1/chat/completions`, { method: "POST", body: "{}" });
    const text = await res.text();
    assert.ok(performance.now() - t0 < 1000);
    assert.equal(res.status, 502);
    const body = JSON.parse(text);
    assert.equal(body.error.type, "bad_gateway_error");
    assert.equal(body.error.code, "upstream_unreachable");
    assert.ok(
      !text.includes(String(port)) && !text.includes("127.0.0.1"),
      "internal address leaked",
    );
    assert.ok(!/refused|os error/i.test(text), "raw error text leaked");
  } finally {
    await relay.close();
  }
});

deadline.test("A holding its headers past UPSTREAM_TIMEOUT_SEC gives a JSON 504", async () => {
  const up = startRawUpstream(async (conn) => {
    await readRequestHead(conn);
    await delay(2000);
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, UPSTREAM_TIMEOUT_SEC: "0.3" });
  try {
    const t0 = performance.now();
    const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    const body = await res.json();
    const took = performance.now() - t0;
    assert.equal(res.status, 504);
    assert.equal(body.error.type, "gateway_timeout_error");
    assert.equal(body.error.code, "upstream_timeout");
    assert.ok(took >= 250 && took < 1500, `took ${took} ms`);
  } finally {
    await relay.close();
    up.close();
  }
});

deadline.test("silence mid-stream longer than UPSTREAM_TIMEOUT_SEC ends the stream with an error", async () => {
  const up = startRawUpstream(async (conn) => {
    await readRequestHead(conn);
    const w = (s: string) => conn.write(enc.encode(s));
    await w(
      "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    await w("9\r\ndata: 1\n\n\r\n");
    await delay(3000);
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, UPSTREAM_TIMEOUT_SEC: "0.3" });
  try {
    const t0 = performance.now();
    const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    const reader = res.body!.getReader();
    assert.equal(new TextDecoder().decode((await reader.read()).value), "data: 1\n\n");
    await assert.rejects(() => reader.read());
    const took = performance.now() - t0;
    assert.ok(took >= 250 && took < 2000, `took ${took} ms`);
  } finally {
    await relay.close();
    up.close();
  }
});

deadline.test("a connect that hangs past CONNECT_TIMEOUT_SEC gives a JSON 504 and tries the next upstream", async () => {
  const up = startUpstream(() => new Response("second"));
  // A connector that never completes for the first upstream stands in for a black-holed host.
  const relay = startRelay(
    { UPSTREAM_SERVER_A: `http://blackhole.invalid:81,${up.url}`, CONNECT_TIMEOUT_SEC: "0.2" },
    {
      connector: (ep) =>
        ep.hostname === "blackhole.invalid"
          ? new Promise<Deno.Conn>(() => {})
          : Deno.connect({ hostname: ep.hostname, port: ep.port }),
    },
  );
  const only = startRelay(
    { UPSTREAM_SERVER_A: `http://blackhole.invalid:81`, CONNECT_TIMEOUT_SEC: "0.2" },
    { connector: () => new Promise<Deno.Conn>(() => {}) },
  );
  try {
    const res = await fetch(`${relay.url}/v1/models`);
    assert.equal(await res.text(), "second");
    const t0 = performance.now();
    const res2 = await fetch(`${only.url}/v1/models`);
    const body = await res2.json();
    assert.equal(res2.status, 504);
    assert.equal(body.error.code, "upstream_connect_timeout");
    assert.ok(performance.now() - t0 < 1000);
  } finally {
    await relay.close();
    await only.close();
    await up.close();
  }
});

deadline.test("a request that cannot connect to the first upstream goes to the next, body intact", async () => {
  const up = startUpstream(async (req) => new Response(`got ${await req.text()}`));
  const relay = startRelay({
    UPSTREAM_SERVER_A:
      `http://127.0.0.1:${closedPort()}, http://127.0.0.1:${closedPort()},${up.url}`,
  });
  try {
    const res = await fetch(`${relay.url}/v1/chat/completions`, { method: "POST", body: "hello" });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "got hello");
    assert.equal(relay.app.counters.failovers, 2);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("A's own 5xx answers pass through untouched and do not fail over", async () => {
  const second = startUpstream(() => new Response("second should not answer"));
  const first = startUpstream(() =>
    new Response('{"error":{"message":"down","type":"service_unavailable_error","code":"x"}}', {
      status: 503,
      headers: { "content-type": "application/json" },
    })
  );
  const relay = startRelay({ UPSTREAM_SERVER_A: `${first.url},${second.url}` });
  try {
    const res = await fetch(`${relay.url}/v1/models`);
    assert.equal(res.status, 503);
    assert.equal(
      await res.text(),
      '{"error":{"message":"down","type":"service_unavailable_error","code":"x"}}',
    );
    assert.equal(second.seen.length, 0);
  } finally {
    await relay.close();
    await first.close();
    await second.close();
  }
});

deadline.test("garbage from A is a JSON 502 upstream_protocol_error", async () => {
  const up = startRawUpstream(async (conn) => {
    await readRequestHead(conn);
    await conn.write(enc.encode("SSH-2.0-OpenSSH_9.0\r\n\r\n"));
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const res = await fetch(`${relay.url}/v1/models`);
    const body = await res.json();
    assert.equal(res.status, 502);
    assert.equal(body.error.code, "upstream_protocol_error");
  } finally {
    await relay.close();
    up.close();
  }
});
