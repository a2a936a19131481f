/**
 * Integration: ALLOW_IPS, TRUSTED_PROXIES and the admin rule, and that secrets never show up in
 * logs, errors or diagnostics.
 */

import assert from "node:assert/strict";
import type { RequestRecord } from "../lib/relay.ts";
import { deadline, startRelay, startUpstream, waitFor } from "./helpers.ts";

function echoUpstream() {
  return startUpstream((req) =>
    Response.json({
      realIp: req.headers.get("x-real-ip"),
      xff: req.headers.get("x-forwarded-for"),
      auth: req.headers.get("authorization"),
    })
  );
}

async function get(url: string, headers: Record<string, string> = {}) {
  const res = await fetch(url, { headers });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: () => JSON.parse(text) };
}

deadline.test("ALLOW_IPS refuses other clients with 403 permission_error and A never sees them", async () => {
  const up = echoUpstream();
  const denied = startRelay({ UPSTREAM_SERVER_A: up.url, ALLOW_IPS: "10.0.0.0/8, fd00::/8" });
  const allowed = startRelay({ UPSTREAM_SERVER_A: up.url, ALLOW_IPS: "10.0.0.0/8,127.0.0.1" });
  try {
    const r = await get(`${denied.url}/v1/models`);
    assert.equal(r.status, 403);
    assert.equal(r.json().error.type, "permission_error");
    assert.equal(r.json().error.code, "forbidden");
    assert.match(r.json().error.message, /ALLOW_IPS/);
    assert.equal(up.seen.length, 0, "a refused request reached A");
    const ok = await get(`${allowed.url}/v1/models`);
    assert.equal(ok.status, 200);
    assert.equal(up.seen.length, 1);
  } finally {
    await denied.close();
    await allowed.close();
    await up.close();
  }
});

deadline.test("forwarding headers from an untrusted peer are ignored for allow-list, rate limit, records and A", async () => {
  const up = echoUpstream();
  const records: RequestRecord[] = [];
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    ALLOW_IPS: "127.0.0.1, 203.0.113.0/24",
    RATE_LIMIT: "2/minute",
  }, { observers: [(r) => records.push(r)] });
  try {
    // Claims to be an allowed address from elsewhere: irrelevant, the peer is 127.0.0.1.
    const a = await get(`${relay.url}/v1/models`, {
      "x-forwarded-for": "203.0.113.7",
      "x-real-ip": "203.0.113.8",
    });
    assert.equal(a.status, 200);
    assert.deepEqual(a.json(), { realIp: "127.0.0.1", xff: "127.0.0.1", auth: null });
    // A new spoofed address each time does not give a fresh rate-limit bucket.
    const b = await get(`${relay.url}/v1/models`, { "x-forwarded-for": "198.51.100.1" });
    const c = await get(`${relay.url}/v1/models`, { "x-forwarded-for": "198.51.100.2" });
    assert.equal(b.status, 200);
    assert.equal(c.status, 429);
    assert.ok(records.every((r) => r.clientIp === "127.0.0.1"), JSON.stringify(records));
  } finally {
    await relay.close();
    await up.close();
  }
  // And an address that is not allowed cannot get in by claiming an allowed one.
  const up2 = echoUpstream();
  const strict = startRelay({ UPSTREAM_SERVER_A: up2.url, ALLOW_IPS: "203.0.113.0/24" });
  try {
    const r = await get(`${strict.url}/v1/models`, { "x-forwarded-for": "203.0.113.7" });
    assert.equal(r.status, 403);
    assert.equal(up2.seen.length, 0);
  } finally {
    await strict.close();
    await up2.close();
  }
});

deadline.test("a trusted proxy's X-Forwarded-For decides allow-list, rate-limit key, records and what A sees", async () => {
  const up = echoUpstream();
  const records: RequestRecord[] = [];
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    TRUSTED_PROXIES: "127.0.0.1/32",
    ALLOW_IPS: "203.0.113.0/24",
    RATE_LIMIT: "1/minute",
  }, { observers: [(r) => records.push(r)] });
  try {
    const a = await get(`${relay.url}/v1/models`, { "x-forwarded-for": "6.6.6.6, 203.0.113.7" });
    assert.equal(a.status, 200);
    assert.equal(a.json().realIp, "203.0.113.7");
    // The relay appends its peer (the trusted proxy), as every proxy in a chain does.
    assert.equal(a.json().xff, "6.6.6.6, 203.0.113.7, 127.0.0.1");
    // Another client behind the same proxy has its own bucket.
    const b = await get(`${relay.url}/v1/models`, { "x-forwarded-for": "203.0.113.8" });
    assert.equal(b.status, 200);
    const again = await get(`${relay.url}/v1/models`, { "x-forwarded-for": "203.0.113.7" });
    assert.equal(again.status, 429);
    const outsider = await get(`${relay.url}/v1/models`, { "x-real-ip": "198.51.100.1" });
    assert.equal(outsider.status, 403);
    assert.deepEqual(records.map((r) => r.clientIp), [
      "203.0.113.7",
      "203.0.113.8",
      "203.0.113.7",
      "198.51.100.1",
    ]);
    assert.equal(up.seen.length, 2);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("/debug/info needs the admin token when set, else a loopback or allowed client after proxy resolution", async () => {
  const up = echoUpstream();
  const token = "admin-token-0123456789";
  const withToken = startRelay({ UPSTREAM_SERVER_A: up.url, ADMIN_TOKEN: token });
  const behindProxy = startRelay({ UPSTREAM_SERVER_A: up.url, TRUSTED_PROXIES: "127.0.0.1" });
  try {
    assert.equal((await get(`${withToken.url}/debug/info`)).status, 401);
    assert.equal(
      (await get(`${withToken.url}/debug/info`, { authorization: "Bearer wrong-token-000000" }))
        .status,
      401,
    );
    const ok = await get(`${withToken.url}/debug/info`, { authorization: `Bearer ${token}` });
    assert.equal(ok.status, 200);
    assert.ok(!ok.text.includes(token), "the token is echoed in diagnostics");
    // Behind a local reverse proxy every client is 127.0.0.1: the forwarded address decides.
    assert.equal((await get(`${behindProxy.url}/debug/info`)).status, 200);
    const remote = await get(`${behindProxy.url}/debug/info`, { "x-forwarded-for": "8.8.8.8" });
    assert.equal(remote.status, 403);
    assert.equal(remote.json().error.type, "permission_error");
  } finally {
    await withToken.close();
    await behindProxy.close();
    await up.close();
  }
});

deadline.test("secrets never appear in logs, error bodies or diagnostics", async () => {
  const up = echoUpstream();
  const API = "sk-server-a-secret-key-0001";
  const ACCESS = "client-access-secret-0002";
  const ADMIN = "admin-secret-token-0003";
  const CLIENT_KEY = "sk-client-own-key-0004";
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    DEBUG_LOG: "1",
    ADMIN_TOKEN: ADMIN,
    RATE_LIMIT: "100/minute",
    ROUTES: JSON.stringify({ "1": { upstream: up.url, apiKey: API, accessKey: ACCESS } }),
  });
  const bodies: string[] = [];
  try {
    for (
      const [path, headers] of [
        ["/v1/models", { authorization: `Bearer ${CLIENT_KEY}` }],
        [`/v1beta/models?key=${CLIENT_KEY}`, {}],
        ["/u1/v1/models", { "x-api-key": ACCESS }],
        ["/u1/v1/models", { "x-api-key": `${ACCESS}x` }],
        [`/u1/v1/models?key=${ACCESS}`, {}],
        ["/u9/v1/models", { authorization: `Bearer ${ACCESS}` }],
        ["/debug/info", { authorization: `Bearer ${ADMIN}` }],
        ["/debug/info", { authorization: `Bearer ${ADMIN}x` }],
      ] as const
    ) {
      const r = await get(`${relay.url}${path}`, headers);
      if (!(path === "/v1/models" || path.startsWith("/u1/v1/models")) || r.status !== 200) {
        bodies.push(r.text);
      }
    }
    bodies.push(JSON.stringify(relay.app.debugInfo()));
    await waitFor(() => relay.app.inFlight === 0, 3000, "every request finished and logged");
    const everything = relay.logs.join("\n") + bodies.join("\n");
    assert.ok(relay.logs.length > 0, "debug logging produced nothing");
    for (const secret of [API, ACCESS, ADMIN, CLIENT_KEY]) {
      assert.ok(!everything.includes(secret), `secret ${secret.slice(0, 6)}… leaked`);
    }
  } finally {
    await relay.close();
    await up.close();
  }
});
