/**
 * What each Deno internal in `lib/http/deno_internals.ts` saves per request, against its public-API
 * fallback, and what the public replacements in `lib/http/handoff.ts` cost or save (Headers made
 * only when read):
 *
 *   deno bench bench/deno_internals.ts
 *
 * Each pair does the work the own server does per request, once with the internal and once
 * without; the difference is the number quoted in the module's comment.
 */

import { attachCancel, readConn, staticBody } from "../lib/http/deno_internals.ts";
import { lazyFieldLines, lazyRequestFields, requestField } from "../lib/http/handoff.ts";
import { appendAll } from "../lib/http/headers.ts";

const json = JSON.stringify({ id: "chatcmpl-1", choices: [{ message: { content: "hello" } }] });
const bytes = new TextEncoder().encode(json);
let sink = 0;

Deno.bench("JSON body: staticBody (internal)", { group: "body" }, () => {
  const res = new Response(bytes);
  sink += staticBody(res)!.byteLength;
});

Deno.bench("JSON body: read the stream (fallback)", { group: "body", baseline: true }, async () => {
  const res = new Response(bytes);
  const reader = res.body!.getReader();
  const first = await reader.read();
  const end = await reader.read();
  sink += (first.value?.byteLength ?? 0) + (end.done ? 1 : 0);
  reader.releaseLock();
});

Deno.bench("request signal: attachCancel (internal)", { group: "signal" }, () => {
  const req = new Request("http://b/v1/chat/completions", { method: "POST", body: bytes });
  let abort: (() => void) | null = null;
  attachCancel(req, (f) => (abort = f));
  sink += req.signal.aborted ? 1 : 0;
  sink += abort === null ? 0 : 1;
});

Deno.bench("request signal: RequestInit.signal (fallback)", {
  group: "signal",
  baseline: true,
}, () => {
  const ac = new AbortController();
  const req = new Request("http://b/v1/chat/completions", {
    method: "POST",
    body: bytes,
    signal: ac.signal,
  });
  sink += req.signal.aborted ? 1 : 0;
});

const list: [string, string][] = [
  ["content-type", "application/json"],
  ["date", "Fri, 04 Dec 2026 19:00:00 GMT"],
  ["x-request-id", "abc123"],
  ["cache-control", "no-cache"],
  ["x-ratelimit-remaining", "100"],
  ["x-ratelimit-limit", "200"],
  ["server", "cch"],
  ["vary", "accept-encoding"],
  ["content-encoding", "gzip"],
  ["anthropic-ratelimit-requests-remaining", "5"],
];
const HEADER_LIST = Object.getOwnPropertySymbols(new Headers()).find((s) =>
  s.description === "header list"
)!;

Deno.bench("10 response headers: Headers.forEach (public, used)", { group: "headers" }, () => {
  const h = new Headers(list);
  h.forEach((v, n) => (sink += v.length + n.length));
});

Deno.bench("10 response headers: private header list (dropped)", {
  group: "headers",
  baseline: true,
}, () => {
  const h = new Headers(list);
  const entries = (h as unknown as Record<symbol, [string, string][]>)[HEADER_LIST]!;
  for (const e of entries) sink += e[0].length + e[1].length;
});

// A request's lines as the own server parsed them; the pipeline reads three fields of them.
const requestLines: [string, string][] = [
  ["Host", "127.0.0.1:8000"],
  ["User-Agent", "OpenAI/JS 4.0"],
  ["Content-Type", "application/json"],
  ["Authorization", "Bearer sk-abcdefghijklmnopqrstuvwxyz"],
  ["Accept", "application/json"],
  ["Content-Length", String(bytes.byteLength)],
  ["x-stainless-os", "Linux"],
  ["x-stainless-lang", "js"],
];

Deno.bench("request: Headers made on read, fields read from lines (used)", {
  group: "request headers",
}, () => {
  const req = new Request("http://b/v1/chat/completions", { method: "POST", body: bytes });
  lazyRequestFields(req, requestLines);
  sink += (requestField(req, "content-length")?.length ?? 0) +
    (requestField(req, "x-request-id") === null ? 1 : 0) +
    (requestField(req, "transfer-encoding") === null ? 1 : 0);
});

Deno.bench("request: Headers filled at once, fields from Headers (before)", {
  group: "request headers",
  baseline: true,
}, () => {
  const req = new Request("http://b/v1/chat/completions", { method: "POST", body: bytes });
  appendAll(req.headers, requestLines);
  sink += (req.headers.get("content-length")?.length ?? 0) +
    (req.headers.get("x-request-id") === null ? 1 : 0) +
    (req.headers.has("transfer-encoding") ? 0 : 1);
});

Deno.bench("response: Headers made on read (used, own server)", {
  group: "response headers",
}, () => {
  const res = new Response(bytes, { status: 200 });
  lazyFieldLines(res, list);
  sink += res.status;
});

Deno.bench("response: Headers filled at once (before; Deno.serve)", {
  group: "response headers",
  baseline: true,
}, () => {
  const res = new Response(bytes, { status: 200 });
  appendAll(res.headers, list);
  sink += res.status;
});

// One socket pair on 127.0.0.1: each iteration writes 300 bytes (an SSE event) one way and reads
// them on the other end, as the relay reads each event from A.
const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const writer = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
const reader = await listener.accept();
writer.setNoDelay(true);
const event = new Uint8Array(300);
const readBuf = new Uint8Array(1024);

Deno.bench("socket read: readConn (internal op)", { group: "read" }, async () => {
  const read = readConn(reader, readBuf);
  await writer.write(event);
  sink += (await read) ?? 0;
});

Deno.bench("socket read: conn.read (fallback)", { group: "read", baseline: true }, async () => {
  const read = reader.read(readBuf);
  await writer.write(event);
  sink += (await read) ?? 0;
});

// Keeps `sink` observable so the measured work is not optimised away.
globalThis.addEventListener("unload", () => {
  if (sink === -1) throw new Error("unreachable");
});
