/**
 * Integration and unit: MAX_BODY_MB and CLIENT_BODY_TIMEOUT_SEC on streamed request bodies.
 */

import assert from "node:assert/strict";
import { LimitedBody } from "../lib/pipeline/body_limit.ts";
import { parseConfig } from "../lib/config/config.ts";
import { RelayError } from "../lib/errors.ts";
import {
  deadline,
  dec,
  delay,
  enc,
  rawRequest,
  readRequestHead,
  startRawUpstream,
  startRelay,
  startUpstream,
  waitFor,
  writeAll,
} from "./helpers.ts";

/** A raw upstream that reads the request body until EOF and records how it ended. */
function recordingUpstream() {
  const seen: Array<{ bytes: number; ended: "eof" | "complete" }> = [];
  const up = startRawUpstream(async (conn) => {
    const req = await readRequestHead(conn);
    if (req === null) return;
    const length = /content-length: (\d+)/i.exec(req.head);
    let bytes = req.rest.byteLength;
    const want = length ? Number(length[1]) : Infinity;
    const buf = new Uint8Array(65536);
    while (bytes < want) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) {
        seen.push({ bytes, ended: "eof" });
        return;
      }
      bytes += n;
      // A chunked body ends with the last-chunk marker.
      if (!length && dec.decode(buf.subarray(Math.max(0, n - 5), n)).endsWith("0\r\n\r\n")) break;
    }
    seen.push({ bytes, ended: "complete" });
    await writeAll(conn, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
  });
  return { up, seen };
}

function chunkedBody(chunks: number, size: number, gapMs = 5): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream<Uint8Array>({
    async pull(c) {
      if (i++ >= chunks) return c.close();
      await delay(gapMs);
      c.enqueue(new Uint8Array(size).fill(97));
    },
  });
}

deadline.test("a Content-Length over MAX_BODY_MB gets 413 invalid_request_error before A is contacted", async () => {
  const up = startUpstream(() => new Response("ok"));
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, MAX_BODY_MB: "0.001" }); // 1049 bytes
  try {
    const res = await fetch(`${relay.url}/v1/messages`, {
      method: "POST",
      body: "x".repeat(5000),
    });
    assert.equal(res.status, 413);
    const body = await res.json();
    assert.equal(body.error.type, "invalid_request_error");
    assert.equal(body.error.code, "body_too_large");
    assert.match(body.error.message, /MAX_BODY_MB/);
    assert.equal(up.seen.length, 0);
    const fine = await fetch(`${relay.url}/v1/messages`, {
      method: "POST",
      body: "x".repeat(1000),
    });
    assert.equal(fine.status, 200);
    await fine.text();
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a body of exactly MAX_BODY_MB passes and one byte more gets 413, sized or chunked", async (signal) => {
  const got: number[] = [];
  const up = startUpstream(async (req) => {
    got.push((await req.arrayBuffer()).byteLength);
    return new Response("ok");
  });
  const env = { UPSTREAM_SERVER_A: up.url, MAX_BODY_MB: "0.004" };
  const limit = parseConfig(env).maxBodyBytes;
  const relay = startRelay(env);
  const send = async (size: number, chunked: boolean) => {
    const bytes = new Uint8Array(size).fill(97);
    const res = await fetch(`${relay.url}/v1/messages`, {
      method: "POST",
      // Two chunks with no length: the limit is checked as the bytes pass, not from a header.
      body: chunked ? ReadableStream.from([bytes.subarray(0, 1000), bytes.subarray(1000)]) : bytes,
      // @ts-ignore: Deno's fetch takes duplex for streamed bodies
      duplex: "half",
      signal,
    });
    await res.body?.cancel();
    return res.status;
  };
  try {
    assert.equal(limit, 4194);
    assert.equal(await send(limit, false), 200, "content-length at the limit");
    assert.equal(await send(limit, true), 200, "chunked, at the limit");
    assert.deepEqual(got, [limit, limit]);
    assert.equal(await send(limit + 1, false), 413, "content-length one byte over");
    assert.equal(await send(limit + 1, true), 413, "chunked, one byte over");
    assert.deepEqual(got, [limit, limit], "nothing over the limit reached A in full");
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a chunked body crossing MAX_BODY_MB mid-stream gets 413 and its upstream call is aborted", async (signal) => {
  const { up, seen } = recordingUpstream();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, MAX_BODY_MB: "0.004" }); // 4194 bytes
  // Nine 512-byte chunks cross the limit; then the client holds its body open and sends nothing
  // more until the test has looked. The relay's 413 is then always readable: a client still
  // sending when the relay closes can get a reset instead, which would say nothing about the limit.
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  let chunks = 0;
  const body = new ReadableStream<Uint8Array>({
    async pull(c) {
      if (chunks++ === 9) {
        await held;
        return c.close();
      }
      await delay(5);
      c.enqueue(new Uint8Array(512).fill(97));
    },
  });
  try {
    const res = await fetch(`${relay.url}/v1/messages`, {
      method: "POST",
      body,
      // @ts-ignore: Deno's fetch takes duplex for streamed bodies
      duplex: "half",
      signal,
    });
    assert.equal(res.status, 413);
    assert.equal((await res.json()).error.code, "body_too_large");
    await waitFor(() => seen.length === 1, 3000, "upstream saw the end");
    assert.equal(seen[0]!.ended, "eof", "the upstream call was not aborted");
    assert.ok(seen[0]!.bytes < 9 * 512, `A received ${seen[0]!.bytes} bytes`);
    await waitFor(() => relay.app.inFlight === 0, 2000, "request end");
  } finally {
    release();
    await relay.close();
    up.close();
  }
});

deadline.test("a chunked body within MAX_BODY_MB reaches A byte-exact", async () => {
  let got = new Uint8Array(0);
  const up = startUpstream(async (req) => {
    got = new Uint8Array(await req.arrayBuffer());
    return new Response("ok");
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, MAX_BODY_MB: "0.004" });
  try {
    const res = await fetch(`${relay.url}/v1/messages`, {
      method: "POST",
      body: chunkedBody(8, 512, 1),
      // @ts-ignore: Deno's fetch takes duplex for streamed bodies
      duplex: "half",
    });
    assert.equal(res.status, 200);
    await res.text();
    assert.equal(got.byteLength, 4096);
    assert.ok(got.every((b) => b === 97));
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a body that stops arriving for CLIENT_BODY_TIMEOUT_SEC gets 408 and its upstream call is aborted", async () => {
  // 1,000 bytes announced: small, so taken whole (A sees nothing); 1,000,000: streamed to A as it
  // arrives, so A sees the first 100 bytes and then the end of the aborted call.
  for (const length of [1000, 1_000_000]) {
    const { up, seen } = recordingUpstream();
    const relay = startRelay({ UPSTREAM_SERVER_A: up.url, CLIENT_BODY_TIMEOUT_SEC: "0.3" });
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
      const t0 = Date.now();
      await writeAll(
        conn,
        `POST /v1/messages HTTP/1.1\r\nhost: b\r\ncontent-length: ${length}\r\n\r\n` +
          "x".repeat(100),
      );
      const buf = new Uint8Array(4096);
      const n = await conn.read(buf);
      const took = Date.now() - t0;
      const text = dec.decode(buf.subarray(0, n ?? 0));
      conn.close();
      assert.match(text, /^HTTP\/1\.1 408/);
      assert.match(text, /"body_timeout"/);
      assert.ok(took >= 250 && took < 2000, `answered after ${took} ms`);
      if (length === 1000) {
        await new Promise((r) => setTimeout(r, 100));
        assert.deepEqual(seen, [], "a small body that never completed must not reach A");
      } else {
        await waitFor(() => seen.length === 1, 2000, "upstream saw the end");
        assert.deepEqual(seen[0], { bytes: 100, ended: "eof" });
      }
      // The relay keeps serving.
      const ok = await rawRequest(
        relay.port,
        "POST /v1/messages HTTP/1.1\r\nhost: b\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
      );
      assert.equal(ok.status, 200);
    } finally {
      await relay.close();
      up.close();
    }
  }
});

deadline.test("LimitedBody does not count upstream back-pressure as client silence", async () => {
  const source = new ReadableStream<Uint8Array>({
    start(c) {
      for (let i = 0; i < 3; i++) c.enqueue(enc.encode("abc"));
      c.close();
    },
  });
  const body = new LimitedBody(source, { maxBytes: 100, idleTimeoutMs: 30 });
  const reader = body.stream.getReader();
  let text = "";
  while (true) {
    await delay(80); // a slow upstream: longer than the idle timeout between reads
    const { value, done } = await reader.read();
    if (done) break;
    text += dec.decode(value);
  }
  assert.equal(text, "abcabcabc");
  assert.equal(body.error, null);
  assert.equal(body.bytes, 9);
});

deadline.test("LimitedBody errors with the 408 and cancels the source when the client goes silent", async () => {
  let cancelled: unknown = null;
  const source = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(enc.encode("abc"));
    },
    cancel(reason) {
      cancelled = reason;
    },
  });
  const body = new LimitedBody(source, { maxBytes: 100, idleTimeoutMs: 40 });
  const reader = body.stream.getReader();
  assert.equal(dec.decode((await reader.read()).value), "abc");
  // The sweeper's interval is unref'd (a server keeps the process alive): keep this test alive.
  const alive = setTimeout(() => {}, 2000);
  await assert.rejects(
    () => reader.read(),
    (err) => err instanceof RelayError && err.status === 408,
  );
  clearTimeout(alive);
  assert.equal(body.error?.code, "body_timeout");
  assert.ok(cancelled instanceof RelayError);
});

/**
 * Sends a request with an 8 MiB body in full before reading anything, as Python's `http.client`
 * does, then reads: the status line, or the error that broke the exchange.
 */
async function sendWholeThenRead(port: number): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const size = 8 * 1024 * 1024;
    await writeAll(
      conn,
      `POST /v1/messages HTTP/1.1\r\nhost: b\r\ncontent-type: application/json\r\n` +
        `content-length: ${size}\r\n\r\n`,
    );
    await writeAll(conn, new Uint8Array(size).fill(32));
    let text = "";
    const buf = new Uint8Array(65536);
    // Only the status line: a server that read the whole body may keep the connection open.
    while (!text.includes("\r\n")) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += dec.decode(buf.subarray(0, n));
    }
    return text.slice(0, text.indexOf("\r\n"));
  } catch (err) {
    return String(err);
  } finally {
    conn.close();
  }
}

deadline.test("a client that sends its whole over-limit body before reading still gets the 413", async () => {
  const up = startUpstream(() => new Response("ok"));
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, MAX_BODY_MB: "1" });
  try {
    // Closed at once, the relay's socket would answer the rest of the body with a reset, and the
    // client would see a broken pipe instead of the answer.
    assert.equal(await sendWholeThenRead(relay.port), "HTTP/1.1 413 Payload Too Large");
    assert.equal(up.seen.length, 0);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("A's early answer (before it read the body) reaches a client that sends its whole body first, as directly", async () => {
  const up = startUpstream(() => new Response("no key", { status: 401 }));
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    assert.equal(
      await sendWholeThenRead(Number(new URL(up.url).port)),
      "HTTP/1.1 401 Unauthorized",
    );
    assert.equal(await sendWholeThenRead(relay.port), "HTTP/1.1 401 Unauthorized");
  } finally {
    await relay.close();
    await up.close();
  }
});
