/**
 * Integration: RATE_LIMIT, MAX_CONCURRENT_PER_CLIENT, the access-key lockout and the Deno KV store
 * shared by several relays.
 */

import assert from "node:assert/strict";
import { AuthFailures } from "../lib/pipeline/guards.ts";
import { deadline, enc, sseResponse, startRelay, startUpstream, waitFor } from "./helpers.ts";

const ok = () => startUpstream(() => Response.json({ ok: true }));

async function call(url: string, headers: Record<string, string> = {}) {
  const res = await fetch(url, { headers });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text };
}

deadline.test("RATE_LIMIT answers 429 rate_limit_error with Retry-After and X-RateLimit-* and never reaches A", async () => {
  const up = ok();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, RATE_LIMIT: "2/minute" });
  try {
    assert.equal((await call(`${relay.url}/v1/models`)).status, 200);
    assert.equal((await call(`${relay.url}/v1/models`)).status, 200);
    const r = await call(`${relay.url}/v1/messages`);
    assert.equal(r.status, 429);
    const body = JSON.parse(r.text);
    assert.equal(body.error.type, "rate_limit_error");
    assert.equal(body.error.code, "rate_limited");
    assert.match(body.error.message, /2 requests per minute/);
    assert.equal(r.headers.get("x-ratelimit-limit"), "2");
    assert.equal(r.headers.get("x-ratelimit-remaining"), "0");
    assert.ok(Number(r.headers.get("retry-after")) >= 1);
    assert.ok(Number(r.headers.get("x-ratelimit-reset")) >= 1);
    assert.equal(up.seen.length, 2, "a refused request reached A");
    // The relay's own endpoints are not counted.
    assert.equal((await call(`${relay.url}/`)).status, 200);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("UID route requests are limited per access key, other requests per client IP", async () => {
  const up = ok();
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    RATE_LIMIT: "1/minute",
    ROUTES: JSON.stringify({
      "1": { apiKey: "sk-a-1", accessKey: "access-key-one" },
      "2": { apiKey: "sk-a-2", accessKey: "access-key-two" },
    }),
  });
  try {
    const k1 = { "x-api-key": "access-key-one" };
    const k2 = { "x-api-key": "access-key-two" };
    assert.equal((await call(`${relay.url}/u1/v1/models`, k1)).status, 200);
    assert.equal((await call(`${relay.url}/u2/v1/models`, k2)).status, 200);
    assert.equal((await call(`${relay.url}/v1/models`)).status, 200);
    assert.equal((await call(`${relay.url}/u1/v1/models`, k1)).status, 429);
    assert.equal((await call(`${relay.url}/v1/models`)).status, 429);
    assert.equal(up.seen.length, 3);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("repeated wrong access keys lock the address out, even with the right key", async () => {
  const up = ok();
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    ROUTES: JSON.stringify({ "1": { apiKey: "sk-a-1", accessKey: "access-key-one" } }),
  });
  try {
    for (let i = 0; i < 20; i++) {
      const r = await call(`${relay.url}/u1/v1/models`, { "x-api-key": `guess-${i}-xxxxxx` });
      assert.equal(r.status, 401);
    }
    const locked = await call(`${relay.url}/u1/v1/models`, { "x-api-key": "access-key-one" });
    assert.equal(locked.status, 429);
    assert.ok(Number(locked.headers.get("retry-after")) > 200);
    assert.equal(up.seen.length, 0);
    // Unkeyed paths are not affected (A applies its own lockout using the real client IP).
    assert.equal((await call(`${relay.url}/v1/models`)).status, 200);
  } finally {
    await relay.close();
    await up.close();
  }
});

Deno.test("AuthFailures forgets an address after its window and stays bounded", () => {
  const f = new AuthFailures(2, 1000, 3);
  f.fail("a", 0);
  assert.equal(f.lockedFor("a", 10), 0);
  f.fail("a", 10);
  assert.equal(f.lockedFor("a", 20), 1);
  assert.equal(f.lockedFor("a", 1000), 0);
  for (const ip of ["b", "c", "d", "e"]) f.fail(ip, 2000);
  assert.ok(f.size <= 3);
});

deadline.test("MAX_CONCURRENT_PER_CLIENT caps in-flight requests per client until a stream ends", async () => {
  const releases: Array<() => void> = [];
  const up = startUpstream(() => {
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(enc.encode("data: 1\n\n"));
        releases.push(() => c.close());
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, MAX_CONCURRENT_PER_CLIENT: "2" });
  try {
    const a = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    const b = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    const c = await call(`${relay.url}/v1/models`);
    assert.equal(c.status, 429);
    assert.equal(JSON.parse(c.text).error.code, "too_many_concurrent");
    assert.equal(c.headers.get("retry-after"), "1");
    assert.equal(up.seen.length, 2);
    releases[0]!();
    await a.text();
    await waitFor(() => relay.app.inFlight === 1, 2000, "slot release");
    const d = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    assert.equal(d.status, 200);
    releases[1]!();
    releases[2]!();
    await b.text();
    await d.text();
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a client that goes away mid-stream gives its concurrency slot back", async () => {
  const up = startUpstream(() => {
    return sseResponse({ gapMs: 20 });
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, MAX_CONCURRENT_PER_CLIENT: "1" });
  try {
    const ac = new AbortController();
    const a = await fetch(`${relay.url}/v1/messages`, { signal: ac.signal });
    await a.body!.getReader().read();
    assert.equal((await call(`${relay.url}/v1/models`)).status, 429);
    ac.abort();
    await waitFor(() => relay.app.inFlight === 0, 3000, "abort release");
    const b = await fetch(`${relay.url}/v1/messages`);
    assert.equal(b.status, 200);
    await b.body!.cancel();
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("RATE_LIMIT_STORE=kv shares one limit across two relay instances", async () => {
  const up = ok();
  const dir = await Deno.makeTempDir();
  const env = {
    UPSTREAM_SERVER_A: up.url,
    RATE_LIMIT: "3/minute",
    RATE_LIMIT_STORE: "kv",
    RATE_LIMIT_KV_URL: `${dir}/limits.sqlite`,
  };
  const one = startRelay(env);
  const two = startRelay(env);
  try {
    const statuses: number[] = [];
    for (const relay of [one, two, one, two]) {
      statuses.push((await call(`${relay.url}/v1/models`)).status);
    }
    assert.deepEqual(statuses, [200, 200, 200, 429]);
    assert.equal(up.seen.length, 3);
  } finally {
    await one.close();
    await two.close();
    await up.close();
    await Deno.remove(dir, { recursive: true });
  }
});

deadline.test("an unusable KV store answers 503 and never forwards", async () => {
  const up = ok();
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    RATE_LIMIT: "3/minute",
    RATE_LIMIT_STORE: "kv",
    RATE_LIMIT_KV_URL: "/nonexistent-dir-for-test/x/limits.sqlite",
  });
  try {
    const r = await call(`${relay.url}/v1/models`);
    assert.equal(r.status, 503);
    assert.equal(JSON.parse(r.text).error.type, "service_unavailable_error");
    assert.equal(up.seen.length, 0);
    await waitFor(
      () => relay.logs.some((l) => l.includes("rate-limit store unavailable")),
      3000,
      "the store-unavailable log line",
    );
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("MAX_CONCURRENT_PER_CLIENT=1 never refuses a client that sends its requests one after another", async () => {
  // A whole answer's record is made once the answer was written (`info.completed`), but its slot
  // is freed when the handler returns, as before: a slot kept until then would refuse a next
  // request that came first. Fails when a whole answer never frees its slot.
  const up = startUpstream(() => Response.json({ usage: { prompt_tokens: 1 } }));
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, MAX_CONCURRENT_PER_CLIENT: "1" });
  try {
    const statuses: number[] = [];
    for (let i = 0; i < 40; i++) {
      const res = await fetch(`${relay.url}/v1/chat/completions`, { method: "POST", body: "{}" });
      await res.arrayBuffer();
      statuses.push(res.status);
    }
    assert.deepEqual(statuses.filter((s) => s !== 200), []);
  } finally {
    await relay.close();
    await up.close();
  }
});
