/**
 * `x-should-retry: false` on the relay's own final refusals (401, 403, 404, 413, 431), never on
 * A's answers. Without it Claude Code retries a relay 401 for as long as it runs, and the SDKs
 * back off and resend requests that cannot succeed.
 */

import assert from "node:assert/strict";
import { errorResponse, FINAL_STATUSES, RelayError } from "../lib/errors.ts";
import { deadline, rawRequest, startRelay, startUpstream } from "./helpers.ts";

Deno.test("errorResponse says x-should-retry: false for 401, 403, 404, 413 and 431 only", () => {
  assert.deepEqual([...FINAL_STATUSES].sort(), [401, 403, 404, 413, 431]);
  for (const status of [400, 401, 403, 404, 408, 413, 429, 431, 499, 500, 502, 503, 504]) {
    const res = errorResponse(new RelayError(status, "internal_error", "m"));
    assert.equal(
      res.headers.get("x-should-retry"),
      FINAL_STATUSES.has(status) ? "false" : null,
      `status ${status}`,
    );
  }
  // Headers of the error's own survive beside it.
  const res = errorResponse(
    new RelayError(401, "unauthorized", "m", { headers: { "www-authenticate": "Basic" } }),
  );
  assert.equal(res.headers.get("www-authenticate"), "Basic");
  assert.equal(res.headers.get("x-should-retry"), "false");
});

const request = (path: string, extra = "") =>
  `POST ${path} HTTP/1.1\r\nhost: b\r\nconnection: close\r\ncontent-type: application/json\r\n` +
  `${extra}content-length: 2\r\n\r\n{}`;

deadline.test("the relay's own 401, 403, 404, 413 and 431 on the wire carry x-should-retry: false", async () => {
  const up = startUpstream(() => Response.json({ ok: true }));
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    ROUTES: JSON.stringify({ "1": { apiKey: "sk-a-key", accessKey: "access-key-1" } }),
    MAX_BODY_MB: "0.001",
  });
  const denied = startRelay({ UPSTREAM_SERVER_A: up.url, ALLOW_IPS: "10.0.0.0/8" });
  // The 431 is the own server's: Deno.serve's parser refuses an over-long head itself, with 400.
  const own = startRelay({ UPSTREAM_SERVER_A: up.url, HTTP_SERVER: "relay" });
  try {
    const cases: Array<[number, number, string]> = [
      [401, relay.port, request("/u1/v1/messages", "x-api-key: wrong-key-1\r\n")],
      [404, relay.port, request("/u9/v1/messages")],
      [404, relay.port, request("/elsewhere")],
      [
        413,
        relay.port,
        "POST /v1/messages HTTP/1.1\r\nhost: b\r\nconnection: close\r\ncontent-length: 5000\r\n\r\n" +
        "x".repeat(5000),
      ],
      [431, own.port, request("/v1/messages", `x-big: ${"a".repeat(70 * 1024)}\r\n`)],
      [403, denied.port, request("/v1/messages")],
    ];
    for (const [status, port, raw] of cases) {
      const res = await rawRequest(port, raw);
      assert.equal(res.status, status, raw.slice(0, 40));
      assert.equal(res.headers.get("x-should-retry"), "false", `${status} ${raw.slice(0, 40)}`);
    }
    assert.equal(up.seen.length, 0, "no refused request reached A");
  } finally {
    await relay.close();
    await denied.close();
    await own.close();
    await up.close();
  }
});

deadline.test("A's own 401 and 404 pass through without an x-should-retry the relay made up", async () => {
  const up = startUpstream((req) =>
    new URL(req.url).pathname === "/v1/messages"
      ? Response.json({ error: { type: "authentication_error" } }, { status: 401 })
      : Response.json({ error: { type: "not_found_error" } }, {
        status: 404,
        headers: { "x-should-retry": "true" },
      })
  );
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const a401 = await rawRequest(relay.port, request("/v1/messages"));
    assert.equal(a401.status, 401);
    assert.equal(a401.headers.get("x-should-retry"), undefined);
    const a404 = await rawRequest(relay.port, request("/v1/other"));
    assert.equal(a404.status, 404);
    assert.equal(a404.headers.get("x-should-retry"), "true", "A's own advice stands");
  } finally {
    await relay.close();
    await up.close();
  }
});
