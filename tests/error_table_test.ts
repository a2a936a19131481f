import assert from "node:assert/strict";
import { type ErrorCode, ERRORS, FINAL_STATUSES, RelayError, relayError } from "../lib/errors.ts";

const ROOT = new URL("../", import.meta.url);

// A row of the docs' error table: `| 400    | `bad_request`    | When ... |`.
const ROW = /^\|\s*(\d{3})\s*\|\s*`([a-z_]+)`\s*\|/gm;

/** The code → status rows of a markdown error table; a code listed twice keeps every status. */
function docRows(markdown: string): Map<string, number[]> {
  const rows = new Map<string, number[]>();
  for (const m of markdown.matchAll(ROW)) {
    const code = m[2]!;
    rows.set(code, [...(rows.get(code) ?? []), Number(m[1])]);
  }
  return rows;
}

/** Every way the docs and the code table disagree, one line each; empty when they agree. */
function disagreements(
  table: ReadonlyMap<string, number>,
  markdown: string,
): string[] {
  const rows = docRows(markdown);
  const out: string[] = [];
  for (const [code, status] of table) {
    const documented = rows.get(code);
    if (documented === undefined) out.push(`${code} (${status}) is not in the docs`);
    else if (documented.some((s) => s !== status)) {
      out.push(`${code} is ${status} in the code, ${documented.join(" and ")} in the docs`);
    }
  }
  for (const code of rows.keys()) {
    if (!table.has(code)) out.push(`${code} is in the docs but not in lib/errors.ts`);
  }
  return out;
}

const CODE_TABLE: ReadonlyMap<string, number> = new Map(
  Object.entries(ERRORS).map(([code, spec]) => [code, spec.status]),
);

/** The docs page that holds the error table: its own page once there is one, else the README. */
async function errorDoc(own: string, readme: string): Promise<{ path: string; text: string }> {
  for (const path of [own, readme]) {
    try {
      return { path, text: await Deno.readTextFile(new URL(path, ROOT)) };
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
  throw new Error(`neither ${own} nor ${readme} exists`);
}

for (
  const [own, readme] of [
    ["docs/ERRORS.md", "README.md"],
    ["docs/ERRORS.zh-CN.md", "README.zh-CN.md"],
  ] as const
) {
  Deno.test(`the error table in ${own} (or ${readme}) lists every code of lib/errors.ts with its status`, async () => {
    const doc = await errorDoc(own, readme);
    assert.ok(docRows(doc.text).size > 0, `${doc.path} has no error table rows`);
    assert.deepEqual(disagreements(CODE_TABLE, doc.text), [], doc.path);
  });
}

Deno.test("the docs check reports a code missing from the docs, an unknown one and a wrong status", () => {
  const table = new Map([["bad_request", 400], ["overloaded", 503], ["forbidden", 403]]);
  const markdown = [
    "| Status | `code` | When |",
    "| ------ | ------ | ---- |",
    "| 400    | `bad_request` | Malformed. |",
    "| 502    | `overloaded`  | Too busy. |",
    "| 418    | `teapot`      | Not ours. |",
    "Prose mentioning `forbidden` is not a row.",
  ].join("\n");
  assert.deepEqual(disagreements(table, markdown), [
    "overloaded is 503 in the code, 502 in the docs",
    "forbidden (403) is not in the docs",
    "teapot is in the docs but not in lib/errors.ts",
  ]);
  const fixed = markdown.replace("| 502 ", "| 503 ").replace(
    "| 418    | `teapot`",
    "| 403 | `forbidden`",
  );
  assert.deepEqual(disagreements(table, fixed), []);
});

async function* tsFiles(dir: URL): AsyncGenerator<URL> {
  for await (const entry of Deno.readDir(dir)) {
    const url = new URL(entry.name + (entry.isDirectory ? "/" : ""), dir);
    if (entry.isDirectory) yield* tsFiles(url);
    else if (entry.name.endsWith(".ts")) yield url;
  }
}

Deno.test("no module in lib/ but errors.ts constructs a RelayError itself: every error comes from the table", async () => {
  const lib = new URL("lib/", ROOT);
  const offenders: string[] = [];
  let files = 0;
  for await (const file of tsFiles(lib)) {
    files++;
    const path = file.pathname.slice(lib.pathname.length);
    if (path === "errors.ts") continue;
    const lines = (await Deno.readTextFile(file)).split("\n");
    lines.forEach((line, i) => {
      if (/\bnew\s+RelayError\b/.test(line)) offenders.push(`lib/${path}:${i + 1}: ${line.trim()}`);
    });
  }
  assert.ok(files > 10, `only ${files} files found under lib/`);
  assert.deepEqual(offenders, []);
});

for (const [code, spec] of Object.entries(ERRORS)) {
  Deno.test(`the table gives ${code} the type its status ${spec.status} has everywhere else`, () => {
    assert.equal(new RelayError(spec.status, code as ErrorCode, "m").type, spec.type);
  });
}

Deno.test("relayError takes status, type, message and headers from the table", () => {
  const err = relayError("body_too_large", { maxBytes: 32 * 1024 * 1024 });
  assert.ok(err instanceof RelayError);
  assert.equal(err.status, 413);
  assert.equal(err.code, "body_too_large");
  assert.equal(err.type, "invalid_request_error");
  assert.equal(err.message, "Request body too large: the limit is 32 MB (MAX_BODY_MB).");
  // The final-refusal header first, as the constructor puts it, then the table's.
  assert.deepEqual(err.headers, { "x-should-retry": "false", connection: "close" });
  assert.equal(err.cause, undefined);
});

Deno.test("relayError answers without extra headers when neither the table nor the call has any", () => {
  const err = relayError("upstream_timeout");
  assert.equal(err.status, 504);
  assert.equal(err.message, "Server A did not answer in time.");
  assert.equal(err.headers, undefined);
});

Deno.test("relayError lets a call add headers and override the table's, and keeps the cause", () => {
  const cause = new Error("internal detail");
  const err = relayError("overloaded", {
    reason: "connections",
    headers: { "Retry-After": "9", "x-extra": "1" },
    cause,
  });
  assert.deepEqual(err.headers, { "Retry-After": "9", connection: "close", "x-extra": "1" });
  assert.equal(err.cause, cause);
  assert.ok(!err.message.includes("internal detail"));
  // The table's own headers are copied, never shared between errors.
  assert.deepEqual(relayError("overloaded", { reason: "connections" }).headers, {
    "Retry-After": "1",
    connection: "close",
  });
});

Deno.test("relayError picks the answer of a code that has several by reason", () => {
  assert.equal(
    relayError("forbidden", { reason: "allow_ips" }).message,
    "Your address is not allowed to use this relay (ALLOW_IPS).",
  );
  assert.equal(
    relayError("overloaded", { reason: "rate_limit_store" }).headers?.["Retry-After"],
    "5",
  );
  assert.equal(
    relayError("rate_limited", { reason: "rate_limit", limit: 10, windowSec: 60, retryAfterSec: 0 })
      .message,
    "Rate limit exceeded (10 requests per minute); retry after 1 s.",
  );
  assert.equal(
    relayError("headers_too_large", { reason: "parsed", maxBytes: 32 * 1024 }).message,
    "Request header section too large (limit 32 KiB).",
  );
  assert.equal(
    relayError("headers_too_large", { reason: "raw", maxBytes: 65536 }).message,
    "Request header section too large (limit 65536 bytes).",
  );
});

Deno.test("every answer in the table is a non-empty sentence, with x-should-retry only from the status", () => {
  for (const [code, spec] of Object.entries(ERRORS)) {
    const answers = "variants" in spec ? Object.values(spec.variants) : [spec];
    for (const answer of answers) {
      if (typeof answer.message === "string") {
        assert.match(answer.message, /^[A-Z].*\.$/, code);
      }
      const headers: Readonly<Record<string, string>> =
        ("headers" in answer ? answer.headers : undefined) ?? {};
      assert.ok(
        !Object.keys(headers).some((h) => h.toLowerCase() === "x-should-retry"),
        `${code}: x-should-retry follows the status (${[...FINAL_STATUSES]})`,
      );
    }
  }
});
