import assert from "node:assert/strict";
import fc from "fast-check";
import { swapKey, timingSafeEqual } from "../lib/pipeline/credentials.ts";
import { RelayError } from "../lib/errors.ts";
import type { HeaderList } from "../lib/http/headers.ts";

const ACCESS = "relay-access-key-0001";
const API = "sk-server-a-key/with+special=chars";
const KEYS = { accessKey: ACCESS, apiKey: API };
const API_Q = encodeURIComponent(API);

/** Asserts swapKey throws a 401 with `code`, and that the message holds neither key. */
function refuses(headers: HeaderList, query: string, code: string, keys = KEYS): void {
  assert.throws(
    () => swapKey(headers, query, keys),
    (err: unknown) => {
      assert.ok(err instanceof RelayError);
      assert.equal(err.status, 401);
      assert.equal(err.code, code);
      assert.equal(err.type, "authentication_error");
      for (const secret of [keys.accessKey, keys.apiKey]) {
        assert.ok(!err.message.includes(secret), err.message);
      }
      for (const [, value] of headers) {
        if (value.length >= 8) assert.ok(!err.message.includes(value), err.message);
      }
      return true;
    },
  );
}

function outputText(out: { headers: HeaderList; query: string }): string {
  return JSON.stringify(out.headers) + out.query + decodeURIComponent(out.query);
}

// ---------------------------------------------------------------------------------------------
// Accepted places

Deno.test("swapKey swaps a Bearer token whatever the case of the scheme", () => {
  for (const scheme of ["Bearer ", "bearer ", "BEARER ", "bEaReR  ", "Bearer\t"]) {
    const out = swapKey([["authorization", `${scheme}${ACCESS}`]], "", KEYS);
    assert.deepEqual(out.headers, [["authorization", `${scheme}${API}`]]);
    assert.equal(out.query, "");
  }
});

Deno.test("swapKey accepts a Bearer token with trailing whitespace", () => {
  const out = swapKey([["authorization", `Bearer ${ACCESS}  `]], "", KEYS);
  assert.deepEqual(out.headers, [["authorization", `Bearer ${API}`]]);
});

Deno.test("swapKey swaps x-api-key and x-goog-api-key in place", () => {
  for (const name of ["x-api-key", "x-goog-api-key"]) {
    const out = swapKey([["accept", "*/*"], [name, ACCESS], ["x-other", "1"]], "", KEYS);
    assert.deepEqual(out.headers, [["accept", "*/*"], [name, API], ["x-other", "1"]]);
  }
});

Deno.test("swapKey swaps ?key= and leaves other parameters untouched and in order", () => {
  const out = swapKey([], `?alt=sse&key=${ACCESS}&z=%20a+b&key2=x&k=1`, KEYS);
  assert.equal(out.query, `?alt=sse&key=${API_Q}&z=%20a+b&key2=x&k=1`);
  assert.deepEqual(out.headers, []);
});

Deno.test("swapKey swaps a percent-encoded ?key= value", () => {
  const access = "a+b/c d=e&f";
  const out = swapKey([], `?key=${encodeURIComponent(access)}`, { accessKey: access, apiKey: API });
  assert.equal(out.query, `?key=${API_Q}`);
  assert.equal(new URLSearchParams(out.query).get("key"), API);
});

Deno.test("swapKey swaps every place that carries the same access key", () => {
  const headers: HeaderList = [
    ["authorization", `Bearer ${ACCESS}`],
    ["x-api-key", ACCESS],
    ["x-goog-api-key", ACCESS],
    ["content-type", "application/json"],
  ];
  const out = swapKey(headers, `?key=${ACCESS}&alt=sse`, KEYS);
  assert.deepEqual(out.headers, [
    ["authorization", `Bearer ${API}`],
    ["x-api-key", API],
    ["x-goog-api-key", API],
    ["content-type", "application/json"],
  ]);
  assert.equal(out.query, `?key=${API_Q}&alt=sse`);
  assert.ok(!outputText(out).includes(ACCESS));
});

Deno.test("swapKey does not modify the header list it was given", () => {
  const headers: HeaderList = [["x-api-key", ACCESS]];
  swapKey(headers, "", KEYS);
  assert.deepEqual(headers, [["x-api-key", ACCESS]]);
});

Deno.test("swapKey never adds a credential in a place the client did not use", () => {
  const cases: Array<[HeaderList, string]> = [
    [[["authorization", `Bearer ${ACCESS}`]], ""],
    [[["x-api-key", ACCESS]], "?alt=sse"],
    [[["x-goog-api-key", ACCESS]], ""],
    [[], `?key=${ACCESS}`],
  ];
  for (const [headers, query] of cases) {
    const out = swapKey(headers, query, KEYS);
    assert.deepEqual(out.headers.map(([n]) => n), headers.map(([n]) => n));
    assert.equal(out.query.includes("key="), query.includes("key="));
    assert.equal(out.query === "", query === "");
  }
});

Deno.test("swapKey leaves a non-Bearer Authorization alone when another place has the key", () => {
  const out = swapKey(
    [["authorization", "Basic dXNlcjpwYXNz"], ["x-api-key", ACCESS]],
    "",
    KEYS,
  );
  assert.deepEqual(out.headers, [["authorization", "Basic dXNlcjpwYXNz"], ["x-api-key", API]]);
});

// ---------------------------------------------------------------------------------------------
// Refusals

Deno.test("swapKey answers 401 missing_api_key when the client sent no key", () => {
  refuses([], "", "missing_api_key");
  refuses([["content-type", "application/json"]], "?alt=sse", "missing_api_key");
  refuses([["authorization", "Basic dXNlcjpwYXNz"]], "", "missing_api_key");
  refuses([], "?", "missing_api_key");
  refuses([], "?keys=abc&monkey=1", "missing_api_key");
});

Deno.test("swapKey answers 401 invalid_api_key when the only key is wrong", () => {
  refuses([["authorization", "Bearer wrong-key-1234"]], "", "invalid_api_key");
  refuses([["x-api-key", "wrong-key-1234"]], "", "invalid_api_key");
  refuses([["x-goog-api-key", "wrong-key-1234"]], "", "invalid_api_key");
  refuses([], "?key=wrong-key-1234", "invalid_api_key");
  refuses([["authorization", "Bearer "]], "", "invalid_api_key");
  refuses([["x-api-key", ""]], "", "invalid_api_key");
  refuses([], "?key=", "invalid_api_key");
  refuses([], "?key=%E0%A4%A", "invalid_api_key");
});

Deno.test("swapKey answers 401 invalid_api_key when the key is a prefix or extension of it", () => {
  refuses([["x-api-key", ACCESS.slice(0, -1)]], "", "invalid_api_key");
  refuses([["x-api-key", `${ACCESS}x`]], "", "invalid_api_key");
  refuses([["x-api-key", ACCESS.toUpperCase()]], "", "invalid_api_key");
});

Deno.test("swapKey answers 401 invalid_api_key when one of several places is wrong", () => {
  const good: Array<[HeaderList, string]> = [
    [[["authorization", `Bearer ${ACCESS}`]], ""],
    [[["x-api-key", ACCESS]], ""],
    [[["x-goog-api-key", ACCESS]], ""],
    [[], `?key=${ACCESS}`],
  ];
  const bad: Array<[HeaderList, string]> = [
    [[["authorization", "Bearer sk-client-own-key"]], ""],
    [[["x-api-key", "sk-client-own-key"]], ""],
    [[["x-goog-api-key", "sk-client-own-key"]], ""],
    [[], "?key=sk-client-own-key"],
  ];
  for (const [gh, gq] of good) {
    for (const [bh, bq] of bad) {
      const query = gq !== "" && bq !== "" ? `${gq}&${bq.slice(1)}` : gq || bq;
      refuses([...gh, ...bh], query, "invalid_api_key");
      refuses([...bh, ...gh], query, "invalid_api_key");
    }
  }
});

Deno.test("swapKey never leaves the access key in its output", () => {
  const place = fc.constantFrom("bearer", "x-api-key", "x-goog-api-key", "query");
  const filler = fc.array(
    fc.tuple(
      fc.constantFrom("accept", "content-type", "x-app", "session_id"),
      fc.stringMatching(/^[a-z0-9/.-]{0,12}$/),
    ),
    { maxLength: 3 },
  );
  fc.assert(
    fc.property(
      fc.uniqueArray(place, { minLength: 1, maxLength: 4 }),
      filler,
      fc.array(fc.stringMatching(/^[a-z]{1,4}=[a-z0-9]{0,4}$/), { maxLength: 3 }),
      fc.stringMatching(/^[A-Za-z0-9_-]{8,40}$/),
      (places, extra, params, access) => {
        const keys = { accessKey: access, apiKey: "sk-A" };
        fc.pre(!params.some((p) => p.startsWith("key=")));
        const headers: HeaderList = [...extra];
        const qs = [...params];
        for (const p of places) {
          if (p === "bearer") headers.push(["authorization", `Bearer ${access}`]);
          else if (p === "query") qs.push(`key=${access}`);
          else headers.push([p, access]);
        }
        const query = qs.length === 0 ? "" : `?${qs.join("&")}`;
        const out = swapKey(headers, query, keys);
        assert.ok(!outputText(out).includes(access));
        assert.equal(out.headers.length, headers.length);
      },
    ),
  );
});

Deno.test({
  name: "swapKey does not forward the access key when ?key= has a percent-encoded name",
  // Regression (found in review, fixed): lib/pipeline/credentials.ts swapKey only recognises a parameter written literally as `key=`.
  // A query like `?%6Bey=<accessKey>` (URLSearchParams, as used by Server A, decodes the name to
  // `key`) is passed on untouched next to the swapped header, so the relay's access key reaches
  // Server A — the module contract says it must never leave the access key in the request.
  // Failing input: headers [["x-api-key", ACCESS]], query `?%6Bey=${ACCESS}`.

  fn() {
    let out: { headers: HeaderList; query: string } | undefined;
    try {
      out = swapKey([["x-api-key", ACCESS]], `?%6Bey=${ACCESS}`, KEYS);
    } catch (err) {
      // Refusing the request is an acceptable fix too.
      assert.ok(err instanceof RelayError && err.status === 401);
      return;
    }
    assert.ok(!outputText(out).includes(ACCESS), out.query);
  },
});

// ---------------------------------------------------------------------------------------------
// timingSafeEqual

Deno.test("timingSafeEqual is true only for identical strings", () => {
  const cases: ReadonlyArray<readonly [string, string, boolean]> = [
    ["", "", true],
    ["a", "a", true],
    [ACCESS, ACCESS, true],
    ["é模型", "é模型", true],
    ["", "a", false],
    ["a", "", false],
    ["a", "b", false],
    ["ab", "a", false],
    ["a", "ab", false],
    ["abab", "ab", false],
    ["ab", "abab", false],
    ["\0", "", false],
    ["", "\0", false],
    ["e\u0301", "é", false],
    ["x".repeat(256), "", false],
    ["", "x".repeat(256), false],
  ];
  for (const [a, b, expected] of cases) {
    assert.equal(timingSafeEqual(a, b), expected, `${JSON.stringify(a)} vs ${JSON.stringify(b)}`);
  }
});

Deno.test("timingSafeEqual agrees with === for arbitrary strings", () => {
  fc.assert(
    fc.property(fc.string({ unit: "binary" }), fc.string({ unit: "binary" }), (a, b) => {
      assert.equal(timingSafeEqual(a, b), a === b);
      assert.equal(timingSafeEqual(a, a), true);
    }),
  );
  fc.assert(
    fc.property(fc.string(), fc.nat(), fc.nat(), (a, i, c) => {
      // One changed code unit, or a repetition of the string, is always a mismatch.
      if (a.length === 0) return;
      const at = i % a.length;
      const ch = String.fromCharCode(((a.charCodeAt(at) + 1 + (c % 50)) % 0x7f) || 1);
      const b = a.slice(0, at) + ch + a.slice(at + 1);
      assert.equal(timingSafeEqual(b, a), b === a);
      assert.equal(timingSafeEqual(a + a, a), false);
      assert.equal(timingSafeEqual(a, a + a), false);
    }),
  );
});
