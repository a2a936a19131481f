/**
 * `/metrics`, `/dashboard/data` and `/debug/info` numbers: the
 * exposition parses as Prometheus text and says what happened; live gauges; the admin rule;
 * bounded labels; the snapshot's rates, percentiles and recent requests.
 */

import assert from "node:assert/strict";
import type { ClientInfo, RequestRecord } from "../lib/relay.ts";
import { createApp } from "../lib/relay.ts";
import { parseConfig } from "../lib/config/config.ts";
import { PROM_CONTENT_TYPE } from "../lib/observe/metrics.ts";
import { MAX_MODELS, SecondBuckets, Telemetry } from "../lib/observe/telemetry.ts";
import { parseExposition, valueOf } from "./prom_text.ts";
import { closedPort, deadline, enc, startRelay, startUpstream, waitFor } from "./helpers.ts";

async function scrape(url: string, init?: RequestInit) {
  const res = await fetch(`${url}/metrics`, init);
  const text = await res.text();
  assert.equal(res.status, 200, text);
  assert.equal(res.headers.get("content-type"), PROM_CONTENT_TYPE);
  return { text, families: parseExposition(text) };
}

deadline.test("/metrics parses as Prometheus text and counts requests, tokens, bytes and errors", async () => {
  const up = startUpstream(async (req) => {
    const path = new URL(req.url).pathname;
    await req.text();
    if (path === "/v1/fail") return new Response("no", { status: 503 });
    return Response.json({
      model: "gpt-x",
      usage: {
        prompt_tokens: 10,
        completion_tokens: 4,
        prompt_tokens_details: { cached_tokens: 3 },
      },
    });
  });
  // The first upstream is down: the first request fails over to the second, which marks the
  // first down, so later requests go straight to the second.
  const down = `http://127.0.0.1:${closedPort()}`;
  const relay = startRelay({
    UPSTREAM_SERVER_A: `${down},${up.url}`,
    ROUTES: JSON.stringify({ "5": {} }),
  });
  try {
    for (let i = 0; i < 3; i++) {
      await (await fetch(`${relay.url}/v1/chat/completions`, { method: "POST", body: "abcd" }))
        .text();
    }
    await (await fetch(`${relay.url}/v1/fail`, { method: "POST", body: "x" })).text();
    await (await fetch(`${relay.url}/u5/v1/chat/completions`, { method: "POST", body: "{}" }))
      .text();
    await (await fetch(`${relay.url}/u999/v1/models`)).text(); // unknown route: 404
    await (await fetch(`${relay.url}/nowhere`)).text(); // 404

    const { families } = await scrape(relay.url);
    const v = (name: string, labels: Record<string, string> = {}) =>
      valueOf(families, name, labels);
    assert.equal(v("relay_requests_total", { route: "default", status_class: "2xx" }), 3);
    assert.equal(v("relay_requests_total", { route: "default", status_class: "5xx" }), 1);
    assert.equal(v("relay_requests_total", { route: "default", status_class: "4xx" }), 1);
    assert.equal(v("relay_requests_total", { route: "5", status_class: "2xx" }), 1);
    assert.equal(v("relay_requests_total", { route: "unknown", status_class: "4xx" }), 1);
    assert.equal(v("relay_errors_total", { code: "unknown_route" }), 1);
    assert.equal(v("relay_errors_total", { code: "not_found" }), 1);
    assert.equal(v("relay_tokens_total", { model: "gpt-x", kind: "input" }), 40);
    assert.equal(v("relay_tokens_total", { model: "gpt-x", kind: "output" }), 16);
    assert.equal(v("relay_tokens_total", { model: "gpt-x", kind: "cache_read" }), 12);
    assert.equal(v("relay_request_bytes_total", { route: "default" }), 13);
    assert.ok(v("relay_response_bytes_total", { route: "default" })! > 0);
    assert.equal(v("relay_upstream_ttfb_seconds_count", { upstream: up.url }), 5);
    assert.equal(
      v("relay_upstream_responses_total", { upstream: up.url, status_class: "5xx" }),
      1,
    );
    assert.equal(v("relay_upstream_failovers_total"), 1);
    assert.equal(v("relay_upstream_up", { upstream: up.url }), 1);
    assert.equal(v("relay_upstream_up", { upstream: down }), 0);
    assert.equal(v("relay_added_seconds_count"), 7);
    assert.equal(
      v("relay_request_duration_seconds_count", { route: "default", stream: "false" }),
      5,
    );
    assert.equal(v("relay_in_flight_requests"), 0);
    assert.equal(v("relay_open_streams"), 0);
    assert.equal(
      v("relay_build_info", {
        version: relay.app.debugInfo().version as string,
        deno: Deno.version.deno,
      }),
      1,
    );
    assert.ok(v("process_resident_memory_bytes")! > 1e6);
    // Every family is documented: HELP present and non-empty.
    for (const f of families.values()) assert.ok(f.help && f.help.length > 10, f.name);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("/metrics shows open streams and in-flight requests while a stream is open", async () => {
  let release!: () => void;
  const released = new Promise<void>((r) => release = r);
  const up = startUpstream(() => {
    const body = new ReadableStream<Uint8Array>({
      async start(c) {
        c.enqueue(enc.encode("data: 1\n\n"));
        await released;
        c.close();
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    const reader = res.body!.getReader();
    await reader.read();
    const during = (await scrape(relay.url)).families;
    assert.equal(valueOf(during, "relay_open_streams"), 1);
    assert.equal(valueOf(during, "relay_in_flight_requests"), 1);
    release();
    while (!(await reader.read()).done) { /* drain */ }
    await waitFor(() => relay.app.openStreams === 0, 2000, "stream closed");
    const after = (await scrape(relay.url)).families;
    assert.equal(valueOf(after, "relay_open_streams"), 0);
    assert.equal(
      valueOf(after, "relay_request_duration_seconds_count", { route: "default", stream: "true" }),
      1,
    );
  } finally {
    release();
    await relay.close();
    await up.close();
  }
});

const info = (hostname: string): ClientInfo => ({ remoteAddr: { hostname } });

deadline.test("/metrics and the dashboard follow the /debug/info access rule", async () => {
  const open = createApp(
    parseConfig({ UPSTREAM_SERVER_A: "http://127.0.0.1:9" }),
    { background: false },
  );
  const token = "admin-token-0123456789";
  const locked = createApp(
    parseConfig({ UPSTREAM_SERVER_A: "http://127.0.0.1:9", ADMIN_TOKEN: token }),
    { background: false },
  );
  try {
    for (const path of ["/metrics", "/dashboard", "/dashboard/data", "/dashboard/app.js"]) {
      const url = `http://relay${path}`;
      assert.equal((await open.fetch(new Request(url), info("127.0.0.1"))).status, 200, path);
      const remote = await open.fetch(new Request(url), info("203.0.113.7"));
      assert.equal(remote.status, 403, path);
      assert.equal((await remote.json()).error.code, "forbidden");

      const none = await locked.fetch(new Request(url), info("127.0.0.1"));
      assert.equal(none.status, 401, path);
      await none.body?.cancel();
      const bearer = new Request(url, { headers: { authorization: `Bearer ${token}` } });
      assert.equal((await locked.fetch(bearer, info("203.0.113.7"))).status, 200, path);
      const basic = new Request(url, {
        headers: { authorization: `Basic ${btoa(`ops:${token}`)}` },
      });
      assert.equal((await locked.fetch(basic, info("203.0.113.7"))).status, 200, path);
      const wrong = new Request(url, { headers: { authorization: `Basic ${btoa("ops:nope")}` } });
      assert.equal((await locked.fetch(wrong, info("203.0.113.7"))).status, 401, path);
    }
    // A browser gets a Basic challenge on the dashboard, so it can ask for the token.
    const page = await locked.fetch(new Request("http://relay/dashboard"), info("127.0.0.1"));
    await page.body?.cancel();
    assert.match(page.headers.get("www-authenticate") ?? "", /Basic realm="proxy-forwarder"/);
    // An unknown dashboard path is a 404 even for an admin.
    const missing = await open.fetch(new Request("http://relay/dashboard/x"), info("127.0.0.1"));
    assert.equal(missing.status, 404);
  } finally {
    open.close();
    locked.close();
  }
});

deadline.test("/debug/info gains the counters and percentiles; /dashboard/data lists recent requests without queries", async () => {
  const up = startUpstream(() =>
    Response.json({ model: "m-1", usage: { input_tokens: 2, output_tokens: 3 } })
  );
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    for (let i = 0; i < 4; i++) {
      await (await fetch(`${relay.url}/v1/messages?key=query-SECRET-x&i=${i}`, {
        method: "POST",
        headers: { "x-api-key": "sk-SECRET-header" },
        body: "BODY-SECRET",
      })).text();
    }
    const infoRes = await fetch(`${relay.url}/debug/info`);
    const dbg = await infoRes.json();
    const m = dbg.metrics;
    assert.equal(m.totals.requests, 4);
    assert.equal(m.totals.byStatusClass["2xx"], 4);
    assert.equal(m.latency.ttfbMs.count, 4);
    assert.ok(m.latency.ttfbMs.p50 > 0 && m.latency.ttfbMs.p95 >= m.latency.ttfbMs.p50);
    assert.ok(m.latency.relayMs.p50 >= 0);
    assert.equal(m.tokensPerMin[0].model, "m-1");
    assert.equal(m.tokensPerMin[0].total, 20);
    assert.ok(!("recent" in m) && !("series" in m), "the big parts are for the dashboard only");

    const dataRes = await fetch(`${relay.url}/dashboard/data`);
    assert.equal(dataRes.headers.get("cache-control"), "no-store");
    const text = await dataRes.text();
    const data = JSON.parse(text);
    assert.equal(data.recent.length, 4);
    assert.equal(data.recent[0].path, "/v1/messages");
    assert.equal(data.recent[0].model, "m-1");
    assert.equal(data.recent[0].status, 200);
    assert.ok(data.requestsPerSec > 0);
    assert.equal(data.series.requests.length, 120);
    assert.equal(data.series.requests.reduce((a: number, b: number) => a + b, 0), 4);
    assert.equal(data.upstreams[0].url, up.url);
    assert.equal(data.upstreams[0].lastStatus, 200);
    assert.ok(!/SECRET/.test(text), "a secret reached the dashboard data");
  } finally {
    await relay.close();
    await up.close();
  }
});

function rec(over: Partial<RequestRecord> = {}): RequestRecord {
  return {
    id: "r",
    time: 0,
    clientIp: "127.0.0.1",
    method: "POST",
    path: "/v1/messages",
    route: undefined,
    upstream: "http://a:1",
    status: 200,
    ttfbMs: 100,
    durationMs: 120,
    relayMs: 1,
    requestBytes: 10,
    responseBytes: 20,
    stream: false,
    usage: undefined,
    attempts: 1,
    failovers: 0,
    errorCode: undefined,
    ...over,
  };
}

Deno.test("Telemetry computes rates, error rate and percentiles over its windows", () => {
  let now = 1_000_000_000_000;
  const t = new Telemetry({ upstreams: ["http://a:1"], now: () => now });
  for (let i = 1; i <= 100; i++) {
    t.observe(rec({ ttfbMs: i, relayMs: i / 100, status: i <= 10 ? 502 : 200 }));
    now += 50; // 20 requests a second for 5 s
  }
  const s = t.snapshot();
  assert.equal(s.totals.requests, 100);
  assert.equal(s.totals.failures, 10);
  assert.equal(s.errorRate, 0.1);
  assert.equal(s.requestsPerSec, 10); // 100 requests within the 10 s window
  assert.equal(s.latency.ttfbMs.p50, 50.5);
  assert.equal(s.latency.ttfbMs.p95, 95.05);
  assert.equal(s.latency.relayMs.count, 100);
  // A minute later the windows are empty but the totals stay.
  now += 61_000;
  const later = t.snapshot();
  assert.equal(later.latency.ttfbMs.p50, null);
  assert.equal(later.errorRate, 0);
  assert.equal(later.requestsPerSec, 0);
  assert.equal(later.totals.requests, 100);
});

Deno.test("Telemetry folds unknown route ids and excess model names into bounded labels", () => {
  const t = new Telemetry({ upstreams: [], isRoute: (id) => id === "1" });
  for (let i = 0; i < 1000; i++) t.observe(rec({ route: String(i), upstream: undefined }));
  for (let i = 0; i < MAX_MODELS + 50; i++) {
    t.observe(rec({ usage: { model: `model-${i}`, inputTokens: 1 } }));
  }
  t.observe(rec({ usage: { model: 'bad\nname"}', inputTokens: 1 } }));
  const families = parseExposition(t.render());
  const routes = new Set(
    families.get("relay_requests_total")!.samples.map((s) => s.labels.get("route")),
  );
  assert.deepEqual([...routes].sort(), ["1", "default", "unknown"]);
  const models = new Set(
    families.get("relay_tokens_total")!.samples.map((s) => s.labels.get("model")),
  );
  assert.ok(models.size <= MAX_MODELS + 1, `${models.size} model labels`);
  assert.ok(models.has("other"));
  assert.equal(
    valueOf(families, "relay_tokens_total", { model: "other", kind: "input" }),
    51,
  );
});

Deno.test("Telemetry counts rate-limit refusals and keeps only the last 50 requests", () => {
  const t = new Telemetry({ upstreams: [] });
  for (let i = 0; i < 60; i++) t.observe(rec({ id: `r${i}` }));
  t.observe(rec({ id: "limited", status: 429, errorCode: "rate_limited", upstream: undefined }));
  const recent = t.recent();
  assert.equal(recent.length, 50);
  assert.equal(recent[0]!.id, "limited");
  assert.equal(recent[49]!.id, "r11");
  const families = parseExposition(t.render());
  assert.equal(valueOf(families, "relay_rate_limited_total", { code: "rate_limited" }), 1);
  assert.equal(t.snapshot().totals.rateLimited, 1);
  assert.equal(t.snapshot().errorRate, 0, "a refusal is not a failure");
});

Deno.test("Telemetry reports upstreams as unknown until a health source says otherwise", () => {
  const t = new Telemetry({ upstreams: ["http://a:1", "http://b:2"] });
  assert.deepEqual(t.snapshot().upstreams.map((u) => u.state), ["unknown", "unknown"]);
  assert.equal(parseExposition(t.render()).get("relay_upstream_up")!.samples.length, 0);
  t.health = () => [{ url: "http://a:1", state: "up" }, { url: "http://b:2", state: "down" }];
  const families = parseExposition(t.render());
  assert.equal(valueOf(families, "relay_upstream_up", { upstream: "http://a:1" }), 1);
  assert.equal(valueOf(families, "relay_upstream_up", { upstream: "http://b:2" }), 0);
  t.health = () => {
    throw new Error("broken");
  };
  assert.deepEqual(t.snapshot().upstreams.map((u) => u.state), ["unknown", "unknown"]);
  parseExposition(t.render()); // still valid text
});

Deno.test("SecondBuckets sums per second and forgets seconds that scrolled out", () => {
  const b = new SecondBuckets(5);
  const t0 = 10_000_000;
  b.add(1, t0);
  b.add(2, t0 + 999);
  b.add(4, t0 + 1000);
  assert.equal(b.sum(5, t0 + 1000), 7);
  assert.deepEqual(b.series(t0 + 1000), [0, 0, 0, 3, 4]);
  assert.equal(b.sum(1, t0 + 1000), 4);
  b.add(8, t0 + 5000); // reuses the slot of t0
  assert.deepEqual(b.series(t0 + 5000), [4, 0, 0, 0, 8]);
  assert.equal(b.sum(5, t0 + 60_000), 0);
});

Deno.test("metrics stay cheap: 100k observations take well under a second", () => {
  const t = new Telemetry({ upstreams: ["http://a:1"], isRoute: () => true });
  const r = rec({ usage: { model: "m", inputTokens: 5, outputTokens: 7 } });
  const t0 = performance.now();
  for (let i = 0; i < 100_000; i++) t.observe(r);
  const perCall = (performance.now() - t0) / 100_000 * 1000;
  assert.ok(perCall < 10, `${perCall.toFixed(2)} µs per record`);
});
