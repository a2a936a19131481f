/**
 * The usage tap's event reader (lib/observe/sse_events.ts) against eventsource-parser, a
 * well-kept implementation of the same WHATWG rules, as the oracle: for any stream of lines and
 * any way of cutting it into pieces, both report the same event data.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { cutAt } from "./helpers.ts";
import { createParser } from "eventsource-parser";
import { SseEvents } from "../lib/observe/sse_events.ts";

function ours(pieces: string[], max = 1 << 20): string[] {
  const out: string[] = [];
  const r = new SseEvents((d) => out.push(d), max);
  for (const p of pieces) r.feed(p);
  return out;
}

function oracle(pieces: string[]): string[] {
  const out: string[] = [];
  const p = createParser({ onEvent: (e) => out.push(e.data) });
  for (const piece of pieces) p.feed(piece);
  return out;
}

const line = fc.oneof(
  fc.constantFrom("", "data", "data:", "data: ", ":comment", "event: x", "id: 7", "retry: 10"),
  fc.string({ unit: fc.constantFrom("a", "{", '"', ":", " ", "é", "😀") }).map((v) => `data: ${v}`),
  fc.string({ unit: fc.constantFrom("a", ":", " ", "d") }).map((v) => `data${v}`),
  fc.string({ unit: fc.constantFrom("x", ":", " ") }),
);
const ending = fc.constantFrom("\n", "\r\n", "\r");

Deno.test("SseEvents reports the same event data as eventsource-parser, however the stream is cut", () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(line, ending), { maxLength: 30 }),
      fc.boolean(),
      fc.array(fc.nat(), { maxLength: 12 }),
      (lines, bom, points) => {
        const text = (bom ? "\ufeff" : "") + lines.map(([l, e]) => l + e).join("");
        const pieces = cutAt(text, points);
        assert.deepEqual(ours(pieces), oracle([text]), JSON.stringify(pieces));
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("SseEvents skips a line or event longer than its limit, and later events still count", () => {
  const long = "x".repeat(50);
  assert.deepEqual(ours([`data: ${long}\n\ndata: ok\n\n`], 20), ["ok"]);
  // Cut inside the long line: the rest of it is skipped, not read as a field.
  assert.deepEqual(ours([`data: ${long}`, `data: no\n`, "data: still no\n\ndata: ok\n\n"], 20), [
    "ok",
  ]);
  // Lines under the limit that add up to more: that event goes, the next one counts.
  assert.deepEqual(ours(["data: 0123456789\ndata: 0123456789\n\ndata: ok\n\n"], 20), ["ok"]);
  assert.deepEqual(ours(["data: 0123456789\n\n"], 20), ["0123456789"]);
});

Deno.test("SseEvents: a CR at the end of one piece and an LF at the start of the next end one line", () => {
  assert.deepEqual(ours(["data: a\r", "\ndata: b\r", "\n\r", "\n"]), ["a\nb"]);
  assert.deepEqual(ours(["data: a\r", "\r"]), ["a"]);
});
