import assert from "node:assert/strict";
import fc from "fast-check";
import { errorBody, errorResponse, RelayError, toRelayError } from "../lib/errors.ts";

// [status, expected type], the vocabulary Server A uses.
const TYPES: ReadonlyArray<readonly [number, string]> = [
  [400, "invalid_request_error"],
  [401, "authentication_error"],
  [403, "permission_error"],
  [404, "not_found_error"],
  [405, "invalid_request_error"],
  [408, "invalid_request_error"],
  [413, "invalid_request_error"],
  [429, "rate_limit_error"],
  [431, "invalid_request_error"],
  [499, "client_closed_request"],
  [500, "internal_server_error"],
  [502, "bad_gateway_error"],
  [503, "service_unavailable_error"],
  [504, "gateway_timeout_error"],
  // Statuses without their own entry fall back by class.
  [418, "invalid_request_error"],
  [422, "invalid_request_error"],
  [501, "internal_server_error"],
  [507, "internal_server_error"],
  [524, "internal_server_error"],
];

for (const [status, type] of TYPES) {
  Deno.test(`RelayError has type ${type} when the status is ${status}`, () => {
    const err = new RelayError(status, "internal_error", "m");
    assert.equal(err.status, status);
    assert.equal(err.type, type);
  });
}

Deno.test("RelayError is an Error named RelayError with status, code and message", () => {
  const err = new RelayError(429, "rate_limited", "Slow down.", {
    headers: { "retry-after": "7" },
  });
  assert.ok(err instanceof Error);
  assert.equal(err.name, "RelayError");
  assert.equal(err.code, "rate_limited");
  assert.equal(err.message, "Slow down.");
  assert.deepEqual(err.headers, { "retry-after": "7" });
  assert.equal(err.cause, undefined);
  assert.equal(new RelayError(400, "invalid_path", "x").headers, undefined);
});

Deno.test("errorBody has exactly error.message, error.type and error.code", () => {
  const err = new RelayError(404, "unknown_route", "No route /u9 is configured on this relay.");
  const text = errorBody(err);
  assert.deepEqual(JSON.parse(text), {
    error: {
      message: "No route /u9 is configured on this relay.",
      type: "not_found_error",
      code: "unknown_route",
    },
  });
  assert.deepEqual(Object.keys(JSON.parse(text).error), ["message", "type", "code"]);
});

Deno.test("errorBody adds request_id beside error when one is given", () => {
  const err = new RelayError(502, "upstream_unreachable", "Server A could not be reached.");
  assert.deepEqual(JSON.parse(errorBody(err, "req_abc")), {
    error: {
      message: "Server A could not be reached.",
      type: "bad_gateway_error",
      code: "upstream_unreachable",
    },
    request_id: "req_abc",
  });
});

Deno.test("errorBody escapes messages so the body stays valid JSON", () => {
  fc.assert(
    fc.property(
      fc.string({ unit: "binary" }),
      fc.option(fc.string(), { nil: undefined }),
      (m, id) => {
        const body = JSON.parse(errorBody(new RelayError(400, "invalid_path", m), id));
        assert.equal(body.error.message, m);
        assert.equal(body.request_id, id);
      },
    ),
  );
});

Deno.test("errorResponse answers with the status, JSON body and extra headers", async () => {
  const err = new RelayError(429, "rate_limited", "Too many requests.", {
    headers: { "Retry-After": "30", "content-type": "text/plain" },
  });
  const res = errorResponse(err, "req_1");
  assert.equal(res.status, 429);
  assert.equal(res.headers.get("content-type"), "application/json; charset=utf-8");
  assert.equal(res.headers.get("retry-after"), "30");
  assert.equal(res.headers.get("x-request-id"), "req_1");
  assert.deepEqual(await res.json(), {
    error: { message: "Too many requests.", type: "rate_limit_error", code: "rate_limited" },
    request_id: "req_1",
  });
});

Deno.test("errorResponse sends no x-request-id when no request id is given", async () => {
  const res = errorResponse(new RelayError(503, "overloaded", "The relay is overloaded."));
  assert.equal(res.headers.has("x-request-id"), false);
  assert.equal((await res.json()).request_id, undefined);
});

Deno.test("toRelayError returns a RelayError unchanged", () => {
  const err = new RelayError(504, "upstream_timeout", "Server A took too long.");
  assert.equal(toRelayError(err), err);
});

const LEAKY: readonly unknown[] = [
  new Error("connect ECONNREFUSED 10.0.3.7:8443 (hub-internal.corp)"),
  new TypeError("Cannot read properties of undefined (reading 'sk-live-abc')"),
  Object.assign(new Error("boom"), { stack: "Error: boom\n    at /srv/app/lib/secret.ts:1:1" }),
  new Deno.errors.ConnectionReset("reset by 192.168.1.20"),
  "a thrown string mentioning /etc/passwd",
  { message: "an object with a message sk-live-abc" },
  42,
  null,
  undefined,
];

for (const thrown of LEAKY) {
  Deno.test(`toRelayError answers a generic 500 without the original text when ${String(thrown).split("\n")[0]} is thrown`, () => {
    const err = toRelayError(thrown);
    assert.ok(err instanceof RelayError);
    assert.equal(err.status, 500);
    assert.equal(err.code, "internal_error");
    assert.equal(err.type, "internal_server_error");
    assert.equal(err.message, "The relay failed to handle this request.");
    const body = errorBody(err, "req_x");
    for (
      const secret of [
        "10.0.3.7",
        "hub-internal",
        "sk-live-abc",
        "/srv/app",
        "192.168",
        "/etc/passwd",
        "boom",
      ]
    ) {
      assert.ok(!body.includes(secret), body);
    }
    // The original is kept for the operator's logs, never for the client.
    if (thrown !== undefined) assert.equal(err.cause, thrown);
  });
}

Deno.test("toRelayError never puts the thrown message into the client body", () => {
  fc.assert(
    fc.property(fc.string({ minLength: 4 }), (text) => {
      fc.pre(!"The relay failed to handle this request.".includes(text));
      fc.pre(
        !'{"error":{"message":"","type":"internal_server_error","code":"internal_error"}}'.includes(
          text,
        ),
      );
      const body = errorBody(toRelayError(new Error(text)));
      assert.ok(!body.includes(JSON.stringify(text).slice(1, -1)), body);
    }),
  );
});
