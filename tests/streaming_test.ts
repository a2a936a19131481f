/**
 * Integration: SSE passes event by event, client aborts reach A, broken upstream streams reach
 * the client as errors.
 */

import assert from "node:assert/strict";
import {
  deadline,
  dec,
  delay,
  enc,
  readRequestHead,
  sseResponse,
  startRawUpstream,
  startRelay,
  startUpstream,
  waitFor,
  writeAll,
} from "./helpers.ts";

deadline.test("each SSE event reaches the client as soon as A sends it", async (signal) => {
  const gapMs = 150;
  const events = 6;
  const sentAt: number[] = [];
  const up = startUpstream(() => {
    const body = new ReadableStream<Uint8Array>({
      async start(c) {
        for (let i = 0; i < events; i++) {
          sentAt.push(performance.now());
          c.enqueue(enc.encode(`event: delta\ndata: {"i":${i}}\n\n`));
          await delay(gapMs);
        }
        c.close();
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  try {
    const res = await fetch(`${relay.url}/v1/chat/completions`, {
      method: "POST",
      body: "{}",
      signal,
    });
    assert.equal(res.headers.get("content-type"), "text/event-stream");
    reader = res.body!.getReader();
    const gotAt: number[] = [];
    let buf = "";
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        gotAt.push(performance.now());
        buf = buf.slice(i + 2);
      }
    }
    assert.equal(gotAt.length, events);
    for (let i = 0; i < events; i++) {
      const lag = gotAt[i]! - sentAt[i]!;
      // Each event must reach the client before A sends the next one: a coalescing or buffering
      // relay lags by a whole gap (150 ms) or more. Normal is about 1 ms.
      assert.ok(lag < gapMs, `event ${i} arrived ${lag.toFixed(1)} ms after A sent it`);
    }
  } finally {
    await reader?.cancel().catch(() => {});
    await relay.close();
    await up.close();
  }
});

deadline.test("a stream longer than UPSTREAM_TIMEOUT_SEC is never cut while A keeps sending", async (signal) => {
  const up = startUpstream(() => {
    return sseResponse({ gapMs: 100, count: 12 });
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, UPSTREAM_TIMEOUT_SEC: "0.6" });
  try {
    const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}", signal });
    const text = await res.text(); // 1.2 s in total, 2× the timeout
    assert.equal(text.split("\n\n").filter((s) => s !== "").length, 12);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a client that disconnects while A holds the headers aborts the upstream request", async () => {
  let upstreamAborted = false;
  const up = startUpstream((req) =>
    // A "thinks" until its client (the relay) goes away.
    new Promise<Response>((resolve) => {
      req.signal.addEventListener("abort", () => {
        upstreamAborted = true;
        resolve(new Response("too late"));
      });
    })
  );
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const ac = new AbortController();
    const pending = fetch(`${relay.url}/v1/messages`, {
      method: "POST",
      body: "{}",
      signal: ac.signal,
    })
      .catch((e) => e);
    await waitFor(() => up.seen.length === 1, 3000, "request at A");
    const t0 = performance.now();
    ac.abort();
    await pending;
    await waitFor(() => upstreamAborted, 2000, "upstream abort");
    assert.ok(performance.now() - t0 < 1000);
    await waitFor(() => relay.app.inFlight === 0, 2000, "in-flight back to 0");
    assert.equal(relay.app.counters.errorsByCode.client_closed, 1);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a client that disconnects mid-stream cancels the upstream stream", async () => {
  let cancelled = false;
  const up = startUpstream(() => {
    return sseResponse({ gapMs: 50, onCancel: () => (cancelled = true) });
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const ac = new AbortController();
    const res = await fetch(`${relay.url}/v1/chat/completions`, {
      method: "POST",
      body: "{}",
      signal: ac.signal,
    });
    const reader = res.body!.getReader();
    await reader.read();
    await reader.read();
    ac.abort();
    await reader.read().catch(() => {});
    await waitFor(() => cancelled, 2000, "upstream cancel");
    await waitFor(() => relay.app.inFlight === 0, 2000, "in-flight back to 0");
    // /debug/info and /metrics count the same request the same way: as the 499 it ended as, not
    // as the 200 A's head said.
    assert.deepEqual(relay.app.counters.byStatusClass, { "4xx": 1 });
    assert.deepEqual(
      relay.app.counters.byStatusClass,
      relay.app.telemetry.snapshot({ recent: false, series: false }).totals.byStatusClass,
    );
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("an upstream that breaks mid-stream ends the client's stream with an error", async (signal) => {
  const up = startRawUpstream(async (conn) => {
    await readRequestHead(conn);
    await writeAll(
      conn,
      "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" +
        "d\r\ndata: first\n\n\r\n",
    );
    await delay(100);
    // Closing without the terminating 0-chunk: the stream is incomplete.
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}", signal });
    const reader = res.body!.getReader();
    const first = await reader.read();
    assert.equal(dec.decode(first.value), "data: first\n\n");
    await assert.rejects(async () => {
      while (!(await reader.read()).done) { /* drain */ }
    });
    assert.equal(signal.aborted, false, "the relay ended the stream, not the test's deadline");
  } finally {
    await relay.close();
    up.close();
  }
});

deadline.test("a content-length body cut short by A is an error for the client, not a clean end", async (signal) => {
  const up = startRawUpstream(async (conn) => {
    await readRequestHead(conn);
    await writeAll(conn, "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly-part");
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const res = await fetch(`${relay.url}/v1/models`, { signal });
    await assert.rejects(() => res.arrayBuffer());
    assert.equal(signal.aborted, false, "the relay ended the body, not the test's deadline");
  } finally {
    await relay.close();
    up.close();
  }
});
