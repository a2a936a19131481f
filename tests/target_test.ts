import assert from "node:assert/strict";
import fc from "fast-check";
import { RelayError } from "../lib/errors.ts";
import {
  checkTarget,
  isApiPath,
  matchUidPath,
  splitRequestUrl,
  upstreamTarget,
} from "../lib/pipeline/target.ts";

/** How Deno.serve builds `Request.url` for an origin-form target: scheme + authority + target. */
const ORIGIN = "http://127.0.0.1:8000";

type Outcome = "refused" | { path: string; query: string };

/** Outcome of the relay's first two steps for one `Request.url`. */
function outcome(url: string): Outcome {
  const { path, query } = splitRequestUrl(url);
  const err = checkTarget(path, query);
  if (err === null) return { path, query };
  assert.ok(err instanceof RelayError);
  assert.equal(err.status, 400);
  assert.equal(err.code, "invalid_path");
  assert.equal(err.message, "The request path is not allowed.");
  return "refused";
}

// [Request.url as Deno.serve gives it, expected outcome]
const HOSTILE: ReadonlyArray<readonly [string, Outcome]> = [
  // Dot-segments, plain and percent-encoded in any case.
  [`${ORIGIN}/v1/../admin`, "refused"],
  [`${ORIGIN}/v1/..`, "refused"],
  [`${ORIGIN}/v1/x/..`, "refused"],
  [`${ORIGIN}/v1/x/../../api/users`, "refused"],
  [`${ORIGIN}/v1/./x`, "refused"],
  [`${ORIGIN}/v1/.`, "refused"],
  [`${ORIGIN}/./v1/x`, "refused"],
  [`${ORIGIN}/v1/%2e%2e/admin`, "refused"],
  [`${ORIGIN}/v1/%2E%2E/admin`, "refused"],
  [`${ORIGIN}/v1/%2E%2e/x`, "refused"],
  [`${ORIGIN}/v1/.%2e/x`, "refused"],
  [`${ORIGIN}/v1/%2e./x`, "refused"],
  [`${ORIGIN}/v1/%2e/x`, "refused"],
  // Dot-segments hidden behind encoded slashes.
  [`${ORIGIN}/v1/..%2f..%2fadmin`, "refused"],
  [`${ORIGIN}/v1/..%2F..%2Fadmin`, "refused"],
  [`${ORIGIN}/v1/x%2f..%2fadmin`, "refused"],
  [`${ORIGIN}/v1/x/%2E%2E%2Fadmin`, "refused"],
  [`${ORIGIN}/v1/x%2f.`, "refused"],
  // Backslashes, raw or encoded (some servers treat them as "/").
  [`${ORIGIN}/v1/a\\b`, "refused"],
  [`${ORIGIN}/v1\\..\\admin`, "refused"],
  [`${ORIGIN}/v1/%5c..%5cx`, "refused"],
  [`${ORIGIN}/v1/%5C..%5Cx`, "refused"],
  [`${ORIGIN}/v1/x%5c`, "refused"],
  // NUL, control characters, CRLF injection, DEL.
  [`${ORIGIN}/v1/%00`, "refused"],
  [`${ORIGIN}/v1/x%00.json`, "refused"],
  [`${ORIGIN}/v1/\u0000`, "refused"],
  [`${ORIGIN}/v1/\u0001`, "refused"],
  [`${ORIGIN}/v1/x\ty`, "refused"],
  [`${ORIGIN}/v1/x\r\nHost: evil.com`, "refused"],
  [`${ORIGIN}/v1/\u007f`, "refused"],
  [`${ORIGIN}/v1/x?a=\r\nX: y`, "refused"],
  // A second authority or scheme-relative path.
  [`${ORIGIN}//evil.com/v1/x`, "refused"],
  [`${ORIGIN}///evil.com/v1/x`, "refused"],
  // Characters not allowed in a request target.
  [`${ORIGIN}/v1/x y`, "refused"],
  [`${ORIGIN}/v1/x"y`, "refused"],
  [`${ORIGIN}/v1/<script>`, "refused"],
  [`${ORIGIN}/v1/x{y}`, "refused"],
  [`${ORIGIN}/v1/x|y`, "refused"],
  [`${ORIGIN}/v1/x^y`, "refused"],
  [`${ORIGIN}/v1/x\`y`, "refused"],
  [`${ORIGIN}/v1/x?a b`, "refused"],
  [`${ORIGIN}/v1/x?a="b"`, "refused"],
  [`${ORIGIN}/v1/x?a=<b>`, "refused"],
  // Bad percent-escapes and encodings that are not UTF-8.
  [`${ORIGIN}/v1/%zz`, "refused"],
  [`${ORIGIN}/v1/%`, "refused"],
  [`${ORIGIN}/v1/%2`, "refused"],
  [`${ORIGIN}/v1/%%32%65`, "refused"],
  [`${ORIGIN}/v1/x?a=%zz`, "refused"],
  [`${ORIGIN}/v1/x?a=%`, "refused"],
  [`${ORIGIN}/v1/%c0%ae%c0%ae/x`, "refused"], // overlong UTF-8 "."
  [`${ORIGIN}/v1/%ff`, "refused"],
  // Raw non-ASCII (Deno passes it through decoded).
  [`${ORIGIN}/v1/é`, "refused"],
  [`${ORIGIN}/v1/模型`, "refused"],
  [`${ORIGIN}/v1/\u202e`, "refused"],
  [`${ORIGIN}/v1/x?q=é`, "refused"],
  // Absolute-form: Deno gives the client's URL; the authority is ignored.
  [`http://evil.com/v1/x`, { path: "/v1/x", query: "" }],
  [`https://evil.com:8443/v1/chat/completions?a=1`, {
    path: "/v1/chat/completions",
    query: "?a=1",
  }],
  [`http://evil.com`, { path: "/", query: "" }],
  [`http://evil.com/../admin`, "refused"],
  // Fragments never reach the upstream.
  [`${ORIGIN}/v1/x#frag`, { path: "/v1/x", query: "" }],
  [`${ORIGIN}/v1/x?a=1#frag`, { path: "/v1/x", query: "?a=1" }],
  [`${ORIGIN}/v1/x#frag?a=1`, { path: "/v1/x", query: "" }],
  [`${ORIGIN}/v1/x#/../../admin`, { path: "/v1/x", query: "" }],
  // Look suspicious but are plain segments or stay encoded as sent.
  [`${ORIGIN}/v1/...`, { path: "/v1/...", query: "" }],
  [`${ORIGIN}/v1/..x`, { path: "/v1/..x", query: "" }],
  [`${ORIGIN}/v1/.well-known`, { path: "/v1/.well-known", query: "" }],
  [`${ORIGIN}/v1/%252e%252e/x`, { path: "/v1/%252e%252e/x", query: "" }],
  [`${ORIGIN}/v1/%C3%A9`, { path: "/v1/%C3%A9", query: "" }],
  [`${ORIGIN}/v1/a%2Fb`, { path: "/v1/a%2Fb", query: "" }],
  [`${ORIGIN}/v1//x`, { path: "/v1//x", query: "" }],
  [`${ORIGIN}/v1/x?next=/../../admin`, { path: "/v1/x", query: "?next=/../../admin" }],
  [`${ORIGIN}/v1/x?`, { path: "/v1/x", query: "?" }],
  [`${ORIGIN}/v1/x??a`, { path: "/v1/x", query: "??a" }],
  [`${ORIGIN}`, { path: "/", query: "" }],
];

for (const [url, expected] of HOSTILE) {
  const what = expected === "refused" ? "refuses" : "accepts";
  Deno.test(`checkTarget ${what} the target when Request.url is ${JSON.stringify(url)}`, () => {
    assert.deepEqual(outcome(url), expected);
  });
}

const LEGITIMATE: readonly string[] = [
  "/v1/chat/completions",
  "/v1/completions",
  "/v1/embeddings",
  "/v1/messages",
  "/v1/messages?beta=true",
  "/v1/messages/count_tokens",
  "/v1/responses",
  "/v1/responses/resp_123",
  "/v1/responses/resp_123/input_items?limit=20&order=desc",
  "/v1/models",
  "/v1/_ping",
  "/v1/files/file-abc/content",
  "/v1beta/models",
  "/v1beta/models/gemini-2.5-pro:generateContent",
  "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=abc",
  "/v1beta/files/abc-123",
  "/v1/models?q=a%20b+c&x=1",
  "/v1/x?a=1&a=2&b=&c",
  "/v1/x?filter=name:eq:'a',b;c@d!$*~",
];

for (const target of LEGITIMATE) {
  Deno.test(`checkTarget accepts ${target} unchanged when it is a legitimate API target`, () => {
    const q = target.indexOf("?");
    const expected = q < 0
      ? { path: target, query: "" }
      : { path: target.slice(0, q), query: target.slice(q) };
    assert.deepEqual(outcome(ORIGIN + target), expected);
    assert.equal(upstreamTarget("", expected), target);
    assert.equal(upstreamTarget("/api", expected), `/api${target}`);
  });
}

Deno.test("checkTarget refuses a path that does not start with a slash", () => {
  for (const path of ["", "v1/x", "*", "http://evil.com/v1"]) {
    assert.ok(checkTarget(path, "") instanceof RelayError, path);
  }
});

// ---------------------------------------------------------------------------------------------
// isApiPath and matchUidPath

const API_PATHS: ReadonlyArray<readonly [string, boolean]> = [
  ["/v1", true],
  ["/v1/", true],
  ["/v1/chat/completions", true],
  ["/v1beta", true],
  ["/v1beta/models/x:generateContent", true],
  ["/", false],
  ["/v2/x", false],
  ["/v1x", false],
  ["/v10/x", false],
  ["/v1beta2/x", false],
  ["/V1/x", false],
  ["/api/users", false],
  ["/admin", false],
  ["/u1/v1/x", false],
  ["v1/x", false],
  ["", false],
];

for (const [path, expected] of API_PATHS) {
  Deno.test(`isApiPath returns ${expected} when the path is ${JSON.stringify(path)}`, () => {
    assert.equal(isApiPath(path), expected);
  });
}

const UID_PATHS: ReadonlyArray<readonly [string, { id: string; rest: string } | null]> = [
  ["/u1/v1/x", { id: "1", rest: "/v1/x" }],
  ["/u42/v1beta/models", { id: "42", rest: "/v1beta/models" }],
  ["/u123456789/v1", { id: "123456789", rest: "/v1" }],
  ["/u1", { id: "1", rest: "/" }],
  ["/u1/", { id: "1", rest: "/" }],
  ["/u7/../admin", { id: "7", rest: "/../admin" }], // checkTarget refuses the rest afterwards
  ["/u/v1", null],
  ["/u1x/v1", null],
  ["/uabc", null],
  ["/u", null],
  ["/u-1/v1", null],
  ["/u1234567890/v1", null],
  ["/U1/v1", null],
  ["/v1/u1/x", null],
  ["u1/v1", null],
  ["/u1?x", null],
];

for (const [path, expected] of UID_PATHS) {
  Deno.test(`matchUidPath returns ${JSON.stringify(expected)} when the path is ${path}`, () => {
    assert.deepEqual(matchUidPath(path), expected);
  });
}

Deno.test("checkTarget refuses the rest of a UID path when it holds a dot-segment", () => {
  const m = matchUidPath("/u7/v1/%2e%2e/admin");
  assert.notEqual(m, null);
  assert.ok(checkTarget(m!.rest, "") instanceof RelayError);
});

// ---------------------------------------------------------------------------------------------
// Properties

const PIECES = [
  "/",
  "//",
  ".",
  "..",
  "%2e",
  "%2E",
  "%2f",
  "%2F",
  "%5c",
  "%00",
  "%",
  "%2",
  "%252e",
  "\\",
  "?",
  "#",
  "v1",
  "v1beta",
  "u1",
  "a",
  " ",
  "é",
  ":",
  ";",
  "=",
  "&",
  "+",
  "@",
  "http://evil.com",
];

const rawTarget = fc.oneof(
  fc.string(),
  fc.string({ unit: "binary" }),
  fc.array(fc.constantFrom(...PIECES), { maxLength: 14 }).map((a) => a.join("")),
  fc.array(fc.constantFrom(...PIECES), { maxLength: 14 }).map((a) => `/${a.join("")}`),
);

Deno.test("upstreamTarget stays under the prefix with no dot-segment when checkTarget accepts", () => {
  fc.assert(
    fc.property(rawTarget, (raw) => {
      for (const url of [ORIGIN + raw, raw]) {
        const { path, query } = splitRequestUrl(url);
        if (checkTarget(path, query) !== null) continue;
        const target = upstreamTarget("/api", { path, query });
        assert.ok(target.startsWith("/api/"), target);
        // The query may hold anything URL-safe; the path part is what servers resolve.
        const pathPart = target.slice(0, target.length - query.length);
        assert.equal(pathPart, `/api${path}`);
        const decoded = decodeURIComponent(pathPart);
        for (const segment of decoded.split("/")) {
          assert.notEqual(segment, "..", target);
          assert.notEqual(segment, ".", target);
        }
        assert.ok(!decoded.includes("\\"), target);
        assert.ok(!decoded.includes("\0"), target);
        // Nothing on the request line that could end or split it.
        assert.match(target, /^[\x21-\x7e]*$/);
        assert.ok(!target.includes("#"), target);
      }
    }),
    { numRuns: 2000 },
  );
});

Deno.test("checkTarget refuses an unescaped path exactly when a segment is . or ..", () => {
  const piece = fc.constantFrom("/", "//", ".", "..", "...", ".a", "a.", "v1", "a");
  fc.assert(
    fc.property(fc.array(piece, { maxLength: 12 }), (pieces) => {
      const path = `/${pieces.join("")}`;
      if (path.startsWith("//")) return;
      const dotted = path.split("/").some((s) => s === "." || s === "..");
      assert.equal(checkTarget(path, "") !== null, dotted, path);
    }),
    { numRuns: 2000 },
  );
});

Deno.test("splitRequestUrl always yields a path starting with a slash and a query that is empty or starts with ?", () => {
  fc.assert(
    fc.property(rawTarget, (raw) => {
      const { path, query } = splitRequestUrl(ORIGIN + raw);
      assert.ok(path.startsWith("/"), path);
      assert.ok(query === "" || query.startsWith("?"), query);
      assert.ok(!path.includes("?") && !path.includes("#"), path);
      assert.ok(!query.includes("#"), query);
    }),
  );
});
