/**
 * Access log: one line per request for success, A's errors, timeouts, client
 * aborts and refusals; request ids; LOG_FORMAT=pretty; DEBUG_LOG headers; LOG_FILE; ACCESS_LOG=0;
 * and no secret or body in any line.
 */

import assert from "node:assert/strict";
import {
  AccessLog,
  type AccessLogOptions,
  FileSink,
  formatJsonLine,
  formatPrettyLine,
  isFailure,
  openAccessLog,
} from "../lib/observe/access_log.ts";
import { createApp, type RequestRecord } from "../lib/relay.ts";
import { Logger } from "../lib/observe/mod.ts";
import { parseConfig } from "../lib/config/config.ts";
import {
  closedPort,
  deadline,
  delay,
  enc,
  readRequestHead,
  sseResponse,
  startRawUpstream,
  startRelay,
  startUpstream,
  waitFor,
} from "./helpers.ts";

// Everything secret any test here sends or configures. No line may contain any of these.
const SECRETS = [
  "sk-client-SECRET-0001",
  "sk-upstream-SECRET-0002",
  "access-SECRET-0003",
  "goog-SECRET-0004",
  "cookie-SECRET-0005",
  "query-SECRET-0006",
  "REQUEST-BODY-SECRET-0007",
  "RESPONSE-BODY-SECRET-0008",
];
/** Fails when a line holds any of {@link SECRETS}. */
function assertNoSecret(lines: readonly string[]): void {
  for (const line of lines) {
    for (const secret of SECRETS) {
      assert.ok(!line.includes(secret), `secret ${secret} leaked into: ${line}`);
    }
  }
}

function capture(options: AccessLogOptions = {}) {
  const lines: string[] = [];
  const log = new AccessLog({
    ...options,
    stdout: (text) => {
      for (const line of text.slice(0, -1).split("\n")) {
        lines.push(line);
      }
    },
  });
  return {
    log,
    lines,
    json: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>),
    /** Waits until `n` lines were written, checks them for secrets, returns them parsed. */
    async wait(n: number): Promise<Array<Record<string, unknown>>> {
      await waitFor(() => lines.length >= n, 3000, `${n} access-log lines`);
      assertNoSecret(lines);
      return lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    },
  };
}

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

deadline.test("a chunked upload (no content-length) logs the bytes the relay counted", async () => {
  const up = startUpstream(async (req) =>
    new Response(`got ${(await req.arrayBuffer()).byteLength}`)
  );
  const cap = capture();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url }, { observers: [cap.log.observe] });
  try {
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(enc.encode("a".repeat(1000)));
        c.enqueue(enc.encode("b".repeat(234)));
        c.close();
      },
    });
    const res = await fetch(`${relay.url}/v1/files`, { method: "POST", body });
    assert.equal(await res.text(), "got 1234");
    const [line] = await cap.wait(1);
    assert.equal(line!.requestBytes, 1234);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a successful JSON request logs one line with timings, bytes, model and tokens", async () => {
  const up = startUpstream(async (req) => {
    await req.text();
    return Response.json({
      id: "x",
      model: "gpt-test",
      choices: [{ message: { content: "RESPONSE-BODY-SECRET-0008" } }],
      usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 },
    });
  });
  const cap = capture();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url }, { observers: [cap.log.observe] });
  try {
    const body = JSON.stringify({ messages: "REQUEST-BODY-SECRET-0007" });
    const res = await fetch(`${relay.url}/v1/chat/completions?key=query-SECRET-0006&x=1`, {
      method: "POST",
      headers: {
        authorization: "Bearer sk-client-SECRET-0001",
        "content-type": "application/json",
        "x-request-id": "client-req.42",
      },
      body,
    });
    const text = await res.text();
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("x-request-id"), "client-req.42");
    const [line, ...more] = await cap.wait(1);
    assert.equal(more.length, 0, "exactly one line");
    assert.match(String(line!.time), ISO);
    assert.equal(line!.level, "info");
    assert.equal(line!.msg, "access");
    assert.equal(line!.id, "client-req.42");
    assert.equal(line!.clientIp, "127.0.0.1");
    assert.equal(line!.method, "POST");
    assert.equal(line!.path, "/v1/chat/completions?key=[redacted]&x=1");
    assert.equal(line!.upstream, up.url);
    assert.equal(line!.route, undefined);
    assert.equal(line!.status, 200);
    assert.equal(line!.stream, false);
    assert.equal(line!.requestBytes, body.length);
    assert.equal(line!.responseBytes, enc.encode(text).length);
    assert.equal(line!.model, "gpt-test");
    assert.equal(line!.inputTokens, 11);
    assert.equal(line!.outputTokens, 7);
    assert.equal(line!.totalTokens, 18);
    assert.equal(line!.retries, 0);
    assert.equal(line!.failovers, 0);
    assert.equal(line!.error, undefined);
    const ttfb = line!.ttfbMs as number, total = line!.durationMs as number;
    const relayMs = line!.relayMs as number;
    assert.ok(ttfb >= 0 && total >= ttfb && relayMs >= 0 && relayMs <= total, cap.lines[0]);
    assert.ok(!("requestHeaders" in line!), "headers only with DEBUG_LOG");
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("an unsafe or missing x-request-id is replaced by a generated one that the client gets", async () => {
  const up = startUpstream(() => new Response("ok"));
  const cap = capture();
  let n = 0;
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url }, {
    observers: [cap.log.observe],
    newId: () => `gen-${++n}`,
  });
  try {
    for (const given of ["has space", "x".repeat(200), "<script>", null]) {
      const res = await fetch(`${relay.url}/v1/models`, {
        headers: given === null ? {} : { "x-request-id": given },
      });
      await res.text();
      assert.match(res.headers.get("x-request-id") ?? "", /^gen-\d$/);
    }
    const lines = await cap.wait(4);
    assert.deepEqual(lines.map((l) => l.id), ["gen-1", "gen-2", "gen-3", "gen-4"]);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("A's own x-request-id reaches the client and is logged as upstreamId beside ours", async () => {
  const up = startUpstream(() => new Response("ok", { headers: { "x-request-id": "a-req-77" } }));
  const cap = capture();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url }, { observers: [cap.log.observe] });
  try {
    const res = await fetch(`${relay.url}/v1/models`, { headers: { "x-request-id": "mine-1" } });
    await res.text();
    assert.equal(res.headers.get("x-request-id"), "a-req-77");
    const [line] = await cap.wait(1);
    assert.equal(line!.id, "mine-1");
    assert.equal(line!.upstreamId, "a-req-77");
    assert.match(formatPrettyLine(record({ upstreamRequestId: "a-req-77" })), / a-id=a-req-77$/);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a streamed response is logged once its body ends, with stream=true and SSE usage", async (signal) => {
  // A holds the rest of its stream until the test has looked: the stream is surely still open.
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const up = startUpstream(() => {
    const events = [
      `data: {"type":"message_start","message":{"model":"claude-test","usage":{"input_tokens":25}}}`,
      `data: {"type":"content_block_delta","delta":{"text":"RESPONSE-BODY-SECRET-0008"}}`,
      `data: {"type":"message_delta","usage":{"output_tokens":9}}`,
    ];
    const body = new ReadableStream<Uint8Array>({
      async start(c) {
        for (const [i, e] of events.entries()) {
          c.enqueue(enc.encode(`${e}\n\n`));
          if (i === 0) await released;
          await delay(20);
        }
        c.close();
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  });
  const cap = capture();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url }, { observers: [cap.log.observe] });
  try {
    const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}", signal });
    const reader = res.body!.getReader();
    await reader.read();
    await delay(10);
    assert.equal(cap.lines.length, 0, "no line while the stream is open");
    release();
    while (!(await reader.read()).done) { /* drain */ }
    const [line] = await cap.wait(1);
    assert.equal(line!.status, 200);
    assert.equal(line!.stream, true);
    assert.equal(line!.model, "claude-test");
    assert.equal(line!.inputTokens, 25);
    assert.equal(line!.outputTokens, 9);
    assert.ok((line!.durationMs as number) >= 40, "duration covers the whole body");
    assert.ok((line!.durationMs as number) > (line!.ttfbMs as number));
  } finally {
    release();
    await relay.close();
    await up.close();
  }
});

deadline.test("A's own 500 is logged as a failure (level warn) without a relay error code", async () => {
  const up = startUpstream(() => Response.json({ error: "boom" }, { status: 500 }));
  const cap = capture();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url }, { observers: [cap.log.observe] });
  try {
    const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    await res.text();
    assert.equal(res.status, 500);
    const [line] = await cap.wait(1);
    assert.equal(line!.status, 500);
    assert.equal(line!.level, "warn");
    assert.equal(line!.upstream, up.url);
    assert.equal(line!.error, undefined);
    assert.equal(typeof line!.ttfbMs, "number");
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("an unreachable A is logged as 502 upstream_unreachable with no upstream or TTFB", async () => {
  const cap = capture();
  const relay = startRelay(
    { UPSTREAM_SERVER_A: `http://127.0.0.1:${closedPort()}` },
    { observers: [cap.log.observe] },
  );
  try {
    const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    await res.text();
    const [line] = await cap.wait(1);
    assert.equal(line!.status, 502);
    assert.equal(line!.level, "warn");
    assert.equal(line!.error, "upstream_unreachable");
    assert.equal(line!.ttfbMs, undefined);
  } finally {
    await relay.close();
  }
});

deadline.test("a timeout waiting for A is logged as 504 and the wait is not counted as relay time", async () => {
  const up = startRawUpstream(async (conn) => {
    await readRequestHead(conn);
    await delay(1500);
  });
  const cap = capture();
  const relay = startRelay(
    { UPSTREAM_SERVER_A: up.url, UPSTREAM_TIMEOUT_SEC: "0.3" },
    { observers: [cap.log.observe] },
  );
  try {
    const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    await res.text();
    assert.equal(res.status, 504);
    const [line] = await cap.wait(1);
    assert.equal(line!.status, 504);
    assert.equal(line!.error, "upstream_timeout");
    assert.equal(line!.level, "warn");
    assert.ok((line!.durationMs as number) >= 250, cap.lines[0]);
    // Counting A's wait would make it 300 ms or more.
    assert.ok((line!.relayMs as number) < 200, `relay time excludes A's wait: ${cap.lines[0]}`);
  } finally {
    await relay.close();
    up.close();
  }
});

deadline.test("a stream that stalls past the timeout is logged with A's status and upstream_timeout", async (signal) => {
  const up = startRawUpstream(async (conn) => {
    await readRequestHead(conn);
    await conn.write(enc.encode(
      "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" +
        "9\r\ndata: 1\n\n\r\n",
    ));
    await delay(1500);
  });
  const cap = capture();
  const relay = startRelay(
    { UPSTREAM_SERVER_A: up.url, UPSTREAM_TIMEOUT_SEC: "0.3" },
    { observers: [cap.log.observe] },
  );
  try {
    const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}", signal });
    await res.text().catch(() => {});
    const [line] = await cap.wait(1);
    assert.equal(line!.status, 200);
    assert.equal(line!.error, "upstream_timeout");
    assert.equal(line!.level, "warn", "a broken stream is a failure even after a 200 head");
  } finally {
    await relay.close();
    up.close();
  }
});

deadline.test("a client that leaves mid-stream is logged as 499 client_closed at level info", async () => {
  const up = startUpstream(() => {
    return sseResponse({ gapMs: 30 });
  });
  const cap = capture();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url }, { observers: [cap.log.observe] });
  try {
    const ac = new AbortController();
    const res = await fetch(`${relay.url}/v1/messages`, {
      method: "POST",
      body: "{}",
      signal: ac.signal,
    });
    const reader = res.body!.getReader();
    await reader.read();
    ac.abort();
    await reader.read().catch(() => {});
    const [line] = await cap.wait(1);
    assert.equal(line!.status, 499);
    assert.equal(line!.error, "client_closed");
    assert.equal(line!.level, "info", "a client leaving is not a failure");
    assert.equal(line!.stream, true);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a client that leaves while A holds the headers is logged as 499", async () => {
  const up = startUpstream((req) =>
    new Promise<Response>((resolve) => {
      req.signal.addEventListener("abort", () => resolve(new Response("late")));
    })
  );
  const cap = capture();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url }, { observers: [cap.log.observe] });
  try {
    const ac = new AbortController();
    const pending = fetch(`${relay.url}/v1/messages`, {
      method: "POST",
      body: "{}",
      signal: ac.signal,
    }).catch((e) => e);
    await waitFor(() => up.seen.length === 1, 3000, "request at A");
    ac.abort();
    await pending;
    const [line] = await cap.wait(1);
    assert.equal(line!.status, 499);
    assert.equal(line!.error, "client_closed");
    assert.equal(line!.level, "info");
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a refused request (401 on a UID route) is logged with the route, code and no key", async () => {
  const up = startUpstream(() => new Response("never"));
  const cap = capture();
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    ROUTES: JSON.stringify({
      "7": { apiKey: "sk-upstream-SECRET-0002", accessKey: "access-SECRET-0003" },
    }),
  }, { observers: [cap.log.observe] });
  try {
    const res = await fetch(`${relay.url}/u7/v1/messages`, {
      method: "POST",
      headers: { "x-api-key": "sk-client-SECRET-0001" },
      body: "{}",
    });
    await res.text();
    assert.equal(res.status, 401);
    const [line] = await cap.wait(1);
    assert.equal(line!.status, 401);
    assert.equal(line!.route, "7");
    assert.equal(line!.error, "invalid_api_key");
    assert.equal(line!.level, "info", "a refusal is not a relay failure");
    assert.equal(line!.upstream, undefined);
    assert.equal(up.seen.length, 0);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a rate-limited refusal (429 rate_limited) is logged at level info and counted", async () => {
  const up = startUpstream(() => new Response("ok"));
  const cap = capture();
  const relay = startRelay(
    { UPSTREAM_SERVER_A: up.url, RATE_LIMIT: "1/minute" },
    { observers: [cap.log.observe] },
  );
  try {
    // The first request uses the one allowed; the second is refused before reaching A.
    const statuses: number[] = [];
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
      await res.text();
      statuses.push(res.status);
    }
    assert.deepEqual(statuses, [200, 429]);
    const [, limited] = await cap.wait(2);
    assert.equal(limited!.status, 429);
    assert.equal(limited!.error, "rate_limited");
    assert.equal(limited!.level, "info", "a refusal is not a relay failure");
    assert.equal(limited!.upstream, undefined);
    assert.equal(up.seen.length, 1);
    const metrics = await (await fetch(`${relay.url}/metrics`)).text();
    assert.match(metrics, /^relay_rate_limited_total\{code="rate_limited"\} 1$/m);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("DEBUG_LOG=1 adds request and response headers with every credential redacted", async () => {
  const up = startUpstream(() =>
    new Response("ok", {
      headers: { "set-cookie": "sid=cookie-SECRET-0005", "x-upstream": "yes" },
    })
  );
  const cap = capture({ headers: true });
  const relay = startRelay(
    { UPSTREAM_SERVER_A: up.url, DEBUG_LOG: "1" },
    { observers: [cap.log.observe] },
  );
  try {
    const res = await fetch(`${relay.url}/v1beta/models?key=query-SECRET-0006`, {
      headers: {
        authorization: "Bearer sk-client-SECRET-0001",
        "x-goog-api-key": "goog-SECRET-0004",
        cookie: "a=cookie-SECRET-0005",
        "x-custom-token": "sk-client-SECRET-0001",
        "user-agent": "debug-test/1",
      },
    });
    await res.text();
    const [line] = await cap.wait(1);
    const reqH = line!.requestHeaders as Record<string, string>;
    const resH = line!.responseHeaders as Record<string, string>;
    assert.equal(reqH["user-agent"], "debug-test/1");
    assert.equal(reqH["authorization"], "[redacted]");
    assert.equal(reqH["x-goog-api-key"], "[redacted]");
    assert.equal(reqH["cookie"], "[redacted]");
    assert.equal(reqH["x-custom-token"], "[redacted]");
    assert.equal(resH["x-upstream"], "yes");
    assert.equal(resH["set-cookie"], "[redacted]");
    // The pretty form carries them too, redacted the same way.
    const pretty = formatPrettyLine(recordWithHeaders(), { headers: true });
    assertNoSecret([pretty]);
    assert.match(pretty, /req=\{.*"authorization":"\[redacted\]"/);
  } finally {
    await relay.close();
    await up.close();
  }
});

/** A record as app.ts builds it; fields overridable. */
function record(over: Partial<RequestRecord> = {}): RequestRecord {
  return {
    id: "r1",
    time: Date.UTC(2025, 0, 2, 3, 4, 5, 678),
    clientIp: "203.0.113.9",
    method: "POST",
    path: "/v1/messages",
    route: undefined,
    upstream: "http://a.example:8080",
    status: 200,
    ttfbMs: 812.345,
    durationMs: 1520.5,
    relayMs: 0.4321,
    requestBytes: 1200,
    responseBytes: 38_000,
    stream: true,
    usage: { model: "claude-sonnet-4", inputTokens: 12, outputTokens: 340, totalTokens: 352 },
    attempts: 1,
    failovers: 0,
    errorCode: undefined,
    ...over,
  };
}

function recordWithHeaders(): RequestRecord {
  const r = record();
  r.requestHeaders = { authorization: "[redacted 28 chars]", "x-api-key": "sk-client-SECRET-0001" };
  r.responseHeaders = { "content-type": "text/event-stream" };
  return r;
}

Deno.test("isFailure counts 5xx and broken streams, not refusals, A's 4xx or client disconnects", () => {
  const cases: Array<[Partial<RequestRecord>, boolean]> = [
    [{ status: 200 }, false],
    [{ status: 404 }, false],
    [{ status: 401, errorCode: "invalid_api_key" }, false],
    [{ status: 429, errorCode: "rate_limited" }, false],
    [{ status: 499, errorCode: "client_closed" }, false],
    [{ status: 500 }, true],
    [{ status: 502, errorCode: "upstream_unreachable" }, true],
    [{ status: 504, errorCode: "upstream_timeout" }, true],
    [{ status: 200, errorCode: "upstream_stream_broken" }, true],
    [{ status: 200, errorCode: "upstream_timeout" }, true],
  ];
  for (const [over, want] of cases) {
    assert.equal(isFailure(record(over)), want, JSON.stringify(over));
  }
});

Deno.test("JSON lines round times to 0.01 ms and omit fields that are not known", () => {
  const line = JSON.parse(formatJsonLine(record({ usage: undefined, upstream: undefined })));
  assert.equal(line.time, "2025-01-02T03:04:05.678Z");
  assert.equal(line.ttfbMs, 812.35);
  assert.equal(line.relayMs, 0.43);
  for (const k of ["model", "inputTokens", "upstream", "route", "error"]) {
    assert.ok(!(k in line), k);
  }
});

Deno.test("LOG_FORMAT=pretty gives a readable line, coloured on request and free of escapes from A", () => {
  const plain = formatPrettyLine(record({ route: "3", failovers: 1, attempts: 2 }));
  assert.equal(
    plain,
    "03:04:05.678 200 POST /v1/messages 1.52s ttfb=812ms relay=0.4ms 1.2kB→37.1kB stream " +
      "claude-sonnet-4 in=12 out=340 route=3 up=http://a.example:8080 retries=1 failovers=1 " +
      "ip=203.0.113.9 id=r1",
  );
  const coloured = formatPrettyLine(record({ status: 502, errorCode: "upstream_unreachable" }), {
    color: true,
  });
  assert.ok(coloured.includes("\x1b[31;1m502\x1b[0m"), JSON.stringify(coloured));
  const gone = formatPrettyLine(record({ status: 499, errorCode: "client_closed" }), {
    color: true,
  });
  assert.ok(gone.includes("\x1b[35m499"), JSON.stringify(gone));
  const hostile = formatPrettyLine(record({ usage: { model: "evil\x1b[2J\x07model" } }), {
    color: false,
  });
  assertNoSecret([plain, coloured, hostile]);
  assert.ok(!hostile.includes("\x1b") && !hostile.includes("\x07"), JSON.stringify(hostile));
});

Deno.test("ACCESS_LOG=0 sets up no access log at all", () => {
  const config = parseConfig({ UPSTREAM_SERVER_A: "http://127.0.0.1:9", ACCESS_LOG: "0" });
  assert.equal(openAccessLog(config), null);
});

deadline.test("LOG_FILE gets JSON lines even when stdout is pretty, and is reopened after rotation", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/access.log`;
  try {
    const out: string[] = [];
    const config = parseConfig({
      UPSTREAM_SERVER_A: "http://127.0.0.1:9",
      LOG_FORMAT: "pretty",
      LOG_FILE: path,
    });
    const handle = openAccessLog(config, { stdout: (t) => void out.push(t), color: false })!;
    handle.observe(record({ id: "one" }));
    handle.observe(record({ id: "two" }));
    await delay(0);
    await Deno.rename(path, `${path}.1`);
    await handle.reopen();
    handle.observe(record({ id: "three" }));
    await handle.close();
    const rotated = (await Deno.readTextFile(`${path}.1`)).trimEnd().split("\n");
    const current = (await Deno.readTextFile(path)).trimEnd().split("\n");
    assert.deepEqual(rotated.map((l) => JSON.parse(l).id), ["one", "two"]);
    assert.deepEqual(current.map((l) => JSON.parse(l).id), ["three"]);
    assert.match(out.join(""), /^\d\d:\d\d:\d\d\.\d{3} 200 POST \/v1\/messages/);
    assertNoSecret([...rotated, ...current, ...out]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a LOG_FILE that cannot be opened is a configuration error naming the variable", () => {
  const config = parseConfig({
    UPSTREAM_SERVER_A: "http://127.0.0.1:9",
    LOG_FILE: "/nonexistent-dir-for-test/access.log",
  });
  assert.throws(() => openAccessLog(config), /LOG_FILE="\/nonexistent-dir-for-test\/access\.log"/);
});

deadline.test("FileSink appends to an existing file and writeSync writes what is queued at once", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/a.log`;
  try {
    await Deno.writeTextFile(path, "old\n");
    const sink = new FileSink(path);
    sink.write("a\n");
    await sink.close();
    assert.equal(await Deno.readTextFile(path), "old\na\n");
    const sink2 = new FileSink(path);
    sink2.write("b\n"); // in flight
    sink2.write("c\n"); // queued behind it
    sink2.writeSync("d\n"); // the forced-exit path: c and d are on disk when this returns
    const now = await Deno.readTextFile(path);
    assert.ok(now.includes("c\nd\n"), JSON.stringify(now));
    await sink2.close();
    const text = await Deno.readTextFile(path);
    assert.equal(text.split("\n").sort().join(""), "abcdold");
    assert.equal(sink2.dropped, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

deadline.test("main.ts writes access lines to stdout and LOG_FILE, flushed on SIGTERM", async () => {
  const up = startUpstream(() => Response.json({ model: "m", usage: { input_tokens: 1 } }));
  const dir = await Deno.makeTempDir();
  const file = `${dir}/access.log`;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--unstable-no-legacy-abort",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      `--allow-write=${file}`,
      new URL("../main.ts", import.meta.url).pathname,
    ],
    env: { HOST: "127.0.0.1", PORT: "0", UPSTREAM_SERVER_A: up.url, LOG_FILE: file },
    clearEnv: true,
    stdout: "piped",
    stderr: "null",
  }).spawn();
  let out = "";
  const outDone = child.stdout.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (t) => void (out += t) }),
  );
  try {
    await waitFor(() => /"address":"http:\/\/127\.0\.0\.1:\d+"/.test(out), 10_000, "listening");
    const port = /"address":"http:\/\/127\.0\.0\.1:(\d+)"/.exec(out)![1];
    const res = await fetch(`http://127.0.0.1:${port}/v1/messages?key=query-SECRET-0006`, {
      method: "POST",
      headers: { "x-api-key": "sk-client-SECRET-0001", "x-request-id": "proc-1" },
      body: "REQUEST-BODY-SECRET-0007",
    });
    await res.text();
    await waitFor(() => out.includes('"msg":"access"'), 3000, "access line on stdout");
    child.kill("SIGTERM");
    await child.status;
    await outDone;
    const fileLines = (await Deno.readTextFile(file)).trimEnd().split("\n");
    assert.equal(fileLines.length, 1);
    const line = JSON.parse(fileLines[0]!);
    assert.equal(line.id, "proc-1");
    assert.equal(line.model, "m");
    const stdoutLine = out.split("\n").find((l) => l.includes('"msg":"access"'))!;
    assert.deepEqual(JSON.parse(stdoutLine), line);
    assertNoSecret([...out.split("\n"), ...fileLines]);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await Deno.remove(dir, { recursive: true });
    await up.close();
  }
});

deadline.test("a whole response's record (and its usage) is made once the server says it was written", async () => {
  const up = startUpstream(() =>
    Response.json({ model: "gpt-test", usage: { prompt_tokens: 5, completion_tokens: 2 } })
  );
  const records: RequestRecord[] = [];
  const config = parseConfig({ UPSTREAM_SERVER_A: up.url, ACCESS_LOG: "0" });
  const app = createApp(config, {
    background: false,
    log: new Logger({ level: "error", sink: () => {} }),
    observers: [(r) => records.push(r)],
  });
  const remoteAddr = { hostname: "127.0.0.1", port: 1 };
  const ask = () => new Request("http://relay/v1/chat/completions", { method: "POST", body: "{}" });
  try {
    // As both servers give it: settles once the response went out (or the client left).
    const written = Promise.withResolvers<void>();
    const res = await app.fetch(ask(), { remoteAddr, completed: written.promise });
    assert.equal(res.status, 200);
    await delay(20);
    assert.equal(records.length, 0, "no record before the response was written");
    const body = await res.text();
    written.resolve();
    await waitFor(() => records.length === 1);
    assert.equal(records[0]!.status, 200);
    assert.equal(records[0]!.responseBytes, body.length);
    assert.deepEqual(records[0]!.usage, {
      model: "gpt-test",
      inputTokens: 5,
      outputTokens: 2,
      totalTokens: 7,
    });

    // A client that left settles it too: the record is still made.
    const left = Promise.withResolvers<void>();
    const gone = await app.fetch(ask(), { remoteAddr, completed: left.promise });
    await gone.body?.cancel();
    left.reject(new Error("client left"));
    await waitFor(() => records.length === 2);
    assert.equal(records[1]!.usage?.totalTokens, 7);

    // A caller that gives no `completed` gets the record before the response.
    await (await app.fetch(ask(), { remoteAddr })).text();
    assert.equal(records.length, 3);
  } finally {
    app.close();
    await up.close();
  }
});
