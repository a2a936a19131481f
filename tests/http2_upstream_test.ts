/**
 * Integration: HTTPS upstreams that offer HTTP/2 by ALPN are spoken to over HTTP/2:
 * many requests share one TLS connection, bytes pass through exactly (gzip included), SSE events
 * are not held back, aborts reach A, and HTTP/1.1-only upstreams or UPSTREAM_HTTP2=off keep the
 * HTTP/1.1 pool. Connections are counted by a TCP hop between the relay and A.
 */

import assert from "node:assert/strict";
import { dec, enc, rawRequest, startRelay, waitFor } from "./helpers.ts";
import { type TestCert, withCert } from "./tls_fixture.ts";
import { exchange2, H2Pool, type H2PoolOptions } from "../lib/upstream/http2.ts";
import { Watchdog } from "../lib/http/watchdog.ts";
import { BodySource } from "../lib/upstream/http1.ts";

/**
 * A TCP forwarder in front of `port` that counts the connections it accepts. With `dropOnNextData`
 * set, the next bytes the relay sends are not forwarded: both sockets close instead, as when A
 * drops a connection just as a request goes out.
 */
function countingHop(port: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  let accepted = 0;
  /** Connections whose bytes vanish both ways, sockets left open: a route that went silent. */
  const silent = new Set<Deno.Conn>();
  const hop = {
    port: (listener.addr as Deno.NetAddr).port,
    dropOnNextData: false,
    dropped: 0,
    /** TLS records the relay has sent so far: one per write to the TLS connection. */
    records: 0,
    /** From now on, nothing passes on the connections open now; new ones work. */
    silenceAll() {
      for (const c of open) silent.add(c);
    },
    get accepted() {
      return accepted;
    },
    /** Drops every connection in flight, as a network path change would. */
    dropAll() {
      for (const c of [...open]) {
        open.delete(c);
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
    close() {
      listener.close();
      this.dropAll();
    },
  };
  const pump = async (from: Deno.Conn, to: Deno.Conn, close: () => void, outbound: boolean) => {
    const buf = new Uint8Array(64 * 1024);
    // Record framing: a 5-byte header whose last two bytes are the length of the body after it.
    const head: number[] = [];
    let left = 0;
    const countRecords = (bytes: Uint8Array) => {
      for (let i = 0; i < bytes.length;) {
        if (left > 0) {
          const k = Math.min(left, bytes.length - i);
          left -= k;
          i += k;
          if (left === 0) hop.records++;
          continue;
        }
        head.push(bytes[i++]!);
        if (head.length === 5) {
          left = (head[3]! << 8) | head[4]!;
          head.length = 0;
          if (left === 0) hop.records++;
        }
      }
    };
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null) break;
        if (outbound) countRecords(buf.subarray(0, n));
        if (outbound && hop.dropOnNextData) {
          hop.dropOnNextData = false;
          hop.dropped++;
          break;
        }
        if (silent.has(from)) continue;
        let off = 0;
        while (off < n) off += await to.write(buf.subarray(off, n));
      }
    } catch { /* closed */ }
    close();
  };
  (async () => {
    for await (const client of listener) {
      accepted++;
      open.add(client);
      const upstream = await Deno.connect({ hostname: "127.0.0.1", port });
      open.add(upstream);
      const close = () => {
        for (const c of [client, upstream]) {
          open.delete(c);
          try {
            c.close();
          } catch { /* closed */ }
        }
      };
      void pump(client, upstream, close, true);
      void pump(upstream, client, close, false);
    }
  })().catch(() => {});
  return hop;
}

type Handler = (req: Request) => Response | Promise<Response>;

function h2Upstream(tls: TestCert, handler: Handler) {
  return Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: tls.cert, key: tls.key, onListen() {} },
    handler,
  );
}

/** An HTTP/2 pool to 127.0.0.1:`port` that trusts the test certificate. */
function testPool(tls: TestCert, port: number, opts: Partial<H2PoolOptions> = {}): H2Pool {
  return new H2Pool(
    { protocol: "https:", hostname: "127.0.0.1", port, hostHeader: "a" },
    { connectTimeoutMs: 2000, idleTimeoutMs: 4000, caCerts: [tls.cert], ...opts },
  );
}

/** GETs `target` through `pool`: the body as text, whether it came whole or as a stream. */
async function getText(pool: H2Pool, target: string, watchdog: Watchdog): Promise<string> {
  const res = await exchange2(pool, { method: "GET", target, headers: [], body: null }, {
    watchdog,
  });
  return new TextDecoder().decode(res.complete ?? await new Response(res.body).arrayBuffer());
}

async function poolStats(relay: ReturnType<typeof startRelay>) {
  const info = await (await fetch(`${relay.url}/debug/info`)).json();
  return Object.values(info.pools as Record<string, Record<string, unknown>>)[0]!;
}

withCert.test("an HTTP/2 upstream carries concurrent requests on one connection, bytes exact", async ({ tls }) => {
  const gz = new Uint8Array(
    await new Response(
      new Blob(["compressed payload ".repeat(200)]).stream().pipeThrough(
        new CompressionStream("gzip"),
      ),
    ).arrayBuffer(),
  );
  const seen: { sessionId: string | null; bodyLen: number; digest: string }[] = [];
  const server = h2Upstream(tls, async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/v1/gz") {
      return new Response(gz, {
        headers: { "content-encoding": "gzip", "content-length": String(gz.length) },
      });
    }
    const body = new Uint8Array(await req.arrayBuffer());
    const digest = [...new Uint8Array(await crypto.subtle.digest("SHA-256", body))]
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    seen.push({ sessionId: req.headers.get("session_id"), bodyLen: body.length, digest });
    const headers = new Headers({ "content-type": "application/json", "x-digest": digest });
    headers.append("set-cookie", "a=1");
    headers.append("set-cookie", "b=2");
    return new Response(JSON.stringify({ ok: true, n: body.length }), { status: 201, headers });
  });
  const hop = countingHop(server.addr.port);
  const relay = startRelay({ UPSTREAM_SERVER_A: `https://127.0.0.1:${hop.port}` }, {
    caCerts: [tls.cert],
  });
  try {
    const payload = crypto.getRandomValues(new Uint8Array(60_000));
    const big = new Uint8Array(1_500_000);
    for (let i = 0; i < big.length; i += 65_536) {
      big.set(crypto.getRandomValues(new Uint8Array(Math.min(65_536, big.length - i))), i);
    }
    const expect = async (bytes: Uint8Array<ArrayBuffer>) =>
      [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))]
        .map((b) => b.toString(16).padStart(2, "0")).join("");
    const results = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const body = i === 0 ? big : payload;
        const res = await fetch(`${relay.url}/v1/messages?i=${i}`, {
          method: "POST",
          headers: { "content-type": "application/json", "session_id": `s${i}` },
          body,
        });
        assert.equal(res.status, 201);
        assert.equal(res.headers.get("x-digest"), await expect(body));
        assert.deepEqual(res.headers.getSetCookie(), ["a=1", "b=2"]);
        return (await res.json()).n as number;
      }),
    );
    assert.equal(results[0], big.length);
    assert.equal(results[1], payload.length);
    assert.equal(seen.length, 20);
    assert.deepEqual(
      seen.map((s) => s.sessionId).sort(),
      Array.from({ length: 20 }, (_, i) => `s${i}`).sort(),
    );
    // One connection: it learned the protocol by ALPN and became the session for all twenty.
    assert.equal(hop.accepted, 1, `connections to A: ${hop.accepted}`);
    const stats = await poolStats(relay);
    assert.equal(stats.protocol, "h2");

    const raw = await rawRequest(
      relay.port,
      "GET /v1/gz HTTP/1.1\r\nhost: b\r\naccept-encoding: gzip\r\nconnection: close\r\n\r\n",
    );
    assert.deepEqual(raw.body, gz);
    assert.equal(raw.headers.get("content-encoding"), "gzip");
    assert.equal(raw.headers.get("content-length"), String(gz.length));
    assert.equal(hop.accepted, 1, "later requests reuse the session");
  } finally {
    await relay.close();
    hop.close();
    await server.shutdown();
  }
});

withCert.test("HTTP/2 upstream: SSE events pass one by one, and a client abort cancels A's stream", async ({ tls }) => {
  const gapMs = 150;
  let aborted: number | null = null;
  let abortedWaiting: number | null = null;
  let slowSeen = false;
  const server = h2Upstream(tls, async (req) => {
    if (new URL(req.url).searchParams.has("slow")) {
      slowSeen = true;
      // Headers are held back: the relay is still waiting for them when the client leaves.
      req.signal.addEventListener("abort", () => (abortedWaiting = performance.now()));
      await new Promise((r) => setTimeout(r, 1200));
      return new Response("late");
    }
    const forever = new URL(req.url).searchParams.has("forever");
    // Deno.serve over HTTP/2 shows A's side of an RST_STREAM as a cancel of the response body.
    let i = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    return new Response(
      new ReadableStream<Uint8Array>({
        pull: (ctrl) =>
          new Promise<void>((resolve) => {
            timer = setTimeout(() => {
              ctrl.enqueue(enc.encode(`data: {"n":${i},"t":${performance.now()}}\n\n`));
              if (++i === 4 && !forever) ctrl.close();
              resolve();
            }, gapMs);
          }),
        cancel: () => {
          clearTimeout(timer);
          if (forever) aborted = performance.now();
        },
      }),
      { headers: { "content-type": "text/event-stream" } },
    );
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: `https://127.0.0.1:${server.addr.port}` }, {
    caCerts: [tls.cert],
  });
  try {
    const res = await fetch(`${relay.url}/v1/chat/completions`, { method: "POST", body: "{}" });
    const reader = res.body!.getReader();
    let buffered = "";
    const lags: number[] = [];
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += dec.decode(value, { stream: true });
      let at: number;
      while ((at = buffered.indexOf("\n\n")) >= 0) {
        const event = buffered.slice(0, at);
        buffered = buffered.slice(at + 2);
        lags.push(performance.now() - JSON.parse(event.slice(6)).t);
      }
    }
    assert.equal(lags.length, 4);
    // Same process, same clock: each event reaches the client before A sends the next one.
    for (const lag of lags) assert.ok(lag < gapMs, `event held back ${lag.toFixed(1)} ms`);

    const ac = new AbortController();
    const res2 = await fetch(`${relay.url}/v1/chat/completions?forever`, {
      method: "POST",
      body: "{}",
      signal: ac.signal,
    });
    const r2 = res2.body!.getReader();
    await r2.read();
    const t0 = performance.now();
    ac.abort();
    await r2.cancel().catch(() => {});
    await waitFor(() => aborted !== null, 2000);
    assert.ok(aborted! - t0 < 1000, `A saw the abort after ${(aborted! - t0).toFixed(0)} ms`);

    const ac2 = new AbortController();
    const pending = fetch(`${relay.url}/v1/chat/completions?slow`, {
      method: "POST",
      body: "{}",
      signal: ac2.signal,
    }).catch(() => null);
    await waitFor(() => slowSeen, 3000, "the held request to reach A");
    const t1 = performance.now();
    ac2.abort();
    await pending;
    await waitFor(() => abortedWaiting !== null, 2000, "A to see the abort before its headers");
    assert.ok(abortedWaiting! - t1 < 1000);

    const deadline = Date.now() + 2000;
    while ((await poolStats(relay)).active !== 0) {
      assert.ok(Date.now() < deadline, "the cancelled stream is still counted as active");
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    await relay.close();
    await server.shutdown();
  }
});

withCert.test("HTTP/2 upstream: silence after the head ends the stream with an error, a dropped session is replaced", async ({ tls }) => {
  const server = h2Upstream(tls, (req) => {
    if (new URL(req.url).pathname === "/v1/silent") {
      return new Response(
        new ReadableStream<Uint8Array>({
          start: (ctrl) => ctrl.enqueue(enc.encode("data: first\n\n")),
          pull: () => new Promise(() => {}),
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    }
    return new Response("fine");
  });
  const hop = countingHop(server.addr.port);
  const relay = startRelay({
    UPSTREAM_SERVER_A: `https://127.0.0.1:${hop.port}`,
    UPSTREAM_TIMEOUT_SEC: "1",
  }, { caCerts: [tls.cert] });
  try {
    const res = await fetch(`${relay.url}/v1/silent`);
    assert.equal(res.status, 200);
    const t0 = performance.now();
    await assert.rejects(res.text(), "a silent stream must end as an error, not a clean end");
    const took = performance.now() - t0;
    assert.ok(took > 500 && took < 5000, `cut after ${took.toFixed(0)} ms`);

    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "fine");
    const before = hop.accepted;
    hop.dropAll();
    await waitFor(
      async () => (await poolStats(relay)).sessions === 0,
      5000,
      "the relay noticing the dropped session",
    );
    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "fine");
    assert.equal(hop.accepted, before + 1, "a new session replaces the dropped one");

    // A drops the warm session as the next request goes out: no response byte came back, so the
    // request is sent once more on a new session and the client never sees the failure.
    hop.dropOnNextData = true;
    const res2 = await fetch(`${relay.url}/v1/models`, { method: "POST", body: "{}" });
    assert.equal(res2.status, 200);
    assert.equal(await res2.text(), "fine");
    assert.equal(hop.dropped, 1);
    assert.equal(hop.accepted, before + 2);
  } finally {
    await relay.close();
    hop.close();
    await server.shutdown();
  }
});

withCert.test("HTTP/1.1-only HTTPS upstreams and UPSTREAM_HTTP2=off use the HTTP/1.1 pool", async ({ tls }) => {
  // A TLS server that offers only http/1.1 and answers one fixed response per request.
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: tls.cert,
    key: tls.key,
    alpnProtocols: ["http/1.1"],
  });
  let accepted = 0;
  (async () => {
    for await (const conn of listener) {
      accepted++;
      (async () => {
        const buf = new Uint8Array(65536);
        let pending = "";
        while (true) {
          const n = await conn.read(buf).catch(() => null);
          if (n === null) break;
          pending += dec.decode(buf.subarray(0, n));
          while (pending.includes("\r\n\r\n")) {
            pending = pending.slice(pending.indexOf("\r\n\r\n") + 4);
            await conn.write(
              enc.encode("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nh1 ok"),
            ).catch(() => {});
          }
        }
        conn.close();
      })().catch(() => {});
    }
  })().catch(() => {});
  const server = h2Upstream(tls, () => new Response("h2 capable"));
  const h1only = startRelay({
    UPSTREAM_SERVER_A: `https://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
  }, { caCerts: [tls.cert] });
  const off = startRelay({
    UPSTREAM_SERVER_A: `https://127.0.0.1:${server.addr.port}`,
    UPSTREAM_HTTP2: "off",
  }, { caCerts: [tls.cert] });
  try {
    for (let i = 0; i < 3; i++) {
      assert.equal(await (await fetch(`${h1only.url}/v1/models`)).text(), "h1 ok");
    }
    assert.equal(accepted, 1, "the connection that learned the protocol is reused");
    assert.equal((await poolStats(h1only)).protocol, "http/1.1");
    assert.equal(await (await fetch(`${off.url}/v1/models`)).text(), "h2 capable");
    assert.equal((await poolStats(off)).protocol, "http/1.1");
  } finally {
    await h1only.close();
    await off.close();
    listener.close();
    await server.shutdown();
  }
});

withCert.test("HTTP/2 upstream: after a stream timed out, a PING tells a slow A (session kept) from a silent path (session dropped, the next request opens a new one)", async ({ tls }) => {
  const server = h2Upstream(tls, async (req) => {
    if (new URL(req.url).pathname === "/v1/slow") await new Promise((r) => setTimeout(r, 1500));
    return new Response("fine");
  });
  const hop = countingHop(server.addr.port);
  const relay = startRelay({
    UPSTREAM_SERVER_A: `https://127.0.0.1:${hop.port}`,
    UPSTREAM_TIMEOUT_SEC: "1",
    CONNECT_TIMEOUT_SEC: "1",
    // Long enough that the idle sweep cannot be what drops the session here.
    UPSTREAM_POOL_IDLE_SEC: "60",
    UPSTREAM_KEEPWARM_SEC: "0",
    UPSTREAM_SPARE_CONNECTIONS: "0",
  }, { caCerts: [tls.cert] });
  try {
    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "fine");
    assert.equal(hop.accepted, 1);
    // A slow A answers the PING: its session stays.
    const slow = await fetch(`${relay.url}/v1/slow`);
    assert.ok(slow.status >= 500, `a timeout: ${slow.status}`);
    await slow.body?.cancel();
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await poolStats(relay)).sessions, 1, "a slow A keeps its session");
    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "fine");
    assert.equal(hop.accepted, 1);
    hop.silenceAll();
    const res = await fetch(`${relay.url}/v1/models`);
    assert.ok(res.status >= 500, `a timeout, not an answer: ${res.status}`);
    await res.body?.cancel();
    // Without the PING check the session would stay, and every request on it would time out.
    await waitFor(
      async () => (await poolStats(relay)).sessions === 0,
      3000,
      "the silent session dropped",
    );
    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "fine");
    assert.equal(hop.accepted, 2, "a new session, on a new connection");
  } finally {
    await relay.close();
    hop.close();
    await server.shutdown();
  }
});

withCert.test("HTTP/2 pool: while a stream waits, silence from A is checked by PING: a slow A's stream is left to finish, one on a path gone silent is resent on a new session", async ({ tls }) => {
  const server = h2Upstream(tls, async () => {
    await new Promise((r) => setTimeout(r, 1500));
    return new Response("late");
  });
  const hop = countingHop(server.addr.port);
  // A PING unanswered for 1 s ends a session: a margin a busy machine's loopback keeps.
  const pool = testPool(tls, hop.port, {
    connectTimeoutMs: 1000,
    idleTimeoutMs: 1200,
    silencePingMs: 300,
  });
  // Far longer than the test: without the PING check a stream on the silent path waits this long.
  const watchdog = new Watchdog(60_000);
  const get = () => getText(pool, "/v1/slow", watchdog);
  try {
    // 1.5 s of silence on the stream, PINGs answered all along: nothing is cut.
    assert.equal(await get(), "late");
    assert.equal(hop.accepted, 1);
    // The path goes silent with a stream waiting: the unanswered PING ends the session, and the
    // request, which had no answer yet on a reused session, is sent again on a new one.
    const t0 = performance.now();
    const pending = get();
    await new Promise((r) => setTimeout(r, 100));
    hop.silenceAll();
    assert.equal(await pending, "late");
    const took = performance.now() - t0;
    assert.equal(hop.accepted, 2, "a new session, on a new connection");
    assert.ok(took < 10_000, `answered after ${took.toFixed(0)} ms`);
  } finally {
    pool.close();
    watchdog.close();
    hop.close();
    await server.shutdown();
  }
});

withCert.test("HTTP/2 pool: a spare session whose path went silent is dropped by its unanswered PING and replaced before a request needs it", async ({ tls }) => {
  const server = h2Upstream(tls, () => new Response("ok"));
  const hop = countingHop(server.addr.port);
  // A PING unanswered for 1 s ends a session: a margin a busy machine's loopback keeps.
  const pool = testPool(tls, hop.port, {
    connectTimeoutMs: 1000,
    idleTimeoutMs: 800,
    spares: { count: 1 },
  });
  const watchdog = new Watchdog(5000);
  try {
    assert.equal(await getText(pool, "/v1/models", watchdog), "ok");
    // Kept as the spare past the idle timeout (its PINGs answered).
    await new Promise((r) => setTimeout(r, 1200));
    assert.equal(pool.stats().sessions, 1);
    assert.equal(hop.accepted, 1);
    hop.silenceAll();
    await waitFor(() => hop.accepted === 2, 5000, "a new spare session");
    await waitFor(() => pool.stats().sessions === 1, 5000, "the silent session dropped");
    assert.equal(await getText(pool, "/v1/models", watchdog), "ok");
    assert.equal(hop.accepted, 2, "the request went to the new session");
  } finally {
    pool.close();
    watchdog.close();
    hop.close();
    await server.shutdown();
  }
});

withCert.test("HTTP/2 pool: a burst is spread over sessions by the per-session stream cap", async ({ tls }) => {
  const server = h2Upstream(tls, async () => {
    await new Promise((r) => setTimeout(r, 100));
    return new Response("ok");
  });
  const pool = testPool(tls, server.addr.port, { maxStreamsPerSession: 5 });
  const watchdog = new Watchdog(5000);
  try {
    const bodies = await Promise.all(
      Array.from({ length: 20 }, () => getText(pool, "/v1/models", watchdog)),
    );
    assert.deepEqual(bodies, Array(20).fill("ok"));
    const stats = pool.stats();
    assert.equal(stats.created, 4, `sessions opened for 20 streams at 5 each: ${stats.created}`);
    assert.equal(stats.active, 0);
  } finally {
    pool.close();
    watchdog.close();
    await server.shutdown();
  }
});

withCert.test("HTTP/2 pool: a streamed body is read through the direct reader, byte-exact, with the tap told each chunk and the end; a body A breaks off rejects the read", async ({ tls }) => {
  const events = Array.from({ length: 6 }, (_, i) => `data: {"n":${i}}\n\n`);
  const server = h2Upstream(tls, (req) => {
    const broken = new URL(req.url).pathname === "/v1/broken";
    let i = 0;
    return new Response(
      new ReadableStream<Uint8Array>({
        pull: async (ctrl) => {
          await new Promise((r) => setTimeout(r, 5));
          if (broken && i === 2) return ctrl.error(new Error("A gives up"));
          ctrl.enqueue(enc.encode(events[i]!));
          if (++i === events.length) ctrl.close();
        },
      }),
      { headers: { "content-type": "text/event-stream" } },
    );
  });
  const pool = testPool(tls, server.addr.port);
  const watchdog = new Watchdog(5000);
  const read = async (target: string) => {
    const tapped: string[] = [];
    let ended: unknown = "not ended";
    const res = await exchange2(pool, { method: "GET", target, headers: [], body: null }, {
      watchdog,
      tap: { chunk: (b) => tapped.push(dec.decode(b)), end: (e) => (ended = e) },
    });
    assert.equal(res.complete, null, "an event stream is never handed over whole");
    assert.ok(res.reader, "a streamed h2 body has a direct reader");
    let text = "";
    let error: unknown = null;
    try {
      while (true) {
        const r = await res.reader.read();
        if (r.done) break;
        text += dec.decode(r.value);
      }
    } catch (err) {
      error = err;
    }
    return { text, tapped: tapped.join(""), ended, error };
  };
  try {
    const ok = await read("/v1/stream");
    assert.equal(ok.text, events.join(""));
    assert.equal(ok.tapped, ok.text);
    assert.equal(ok.ended, null);
    assert.equal(ok.error, null);

    const broken = await read("/v1/broken");
    assert.equal(broken.text, events.slice(0, 2).join(""));
    assert.ok(broken.error instanceof Error, "the read after A's reset rejects");
    assert.ok(broken.ended instanceof Error, "the tap is told the body broke");
    assert.equal(pool.stats().active, 0, "both streams gave their slot back");
  } finally {
    pool.close();
    watchdog.close();
    await server.shutdown();
  }
});

withCert.test("HTTP/2 upstream: keep-warm pings go over the session and keep it for the next request", async ({ tls }) => {
  const paths: string[] = [];
  const pingedAt: number[] = [];
  const server = h2Upstream(tls, (req) => {
    const path = new URL(req.url).pathname;
    paths.push(path);
    if (path === "/v1/_ping") pingedAt.push(performance.now());
    return new Response("ok");
  });
  const hop = countingHop(server.addr.port);
  const relay = startRelay({
    UPSTREAM_SERVER_A: `https://127.0.0.1:${hop.port}`,
    UPSTREAM_KEEPWARM_SEC: "0.2",
    // Idle sessions would be closed after 1.2 s: only the pings keep this one.
    UPSTREAM_POOL_IDLE_SEC: "1.2",
    HEALTH_CHECK_SEC: "60",
  }, { caCerts: [tls.cert], background: true });
  try {
    await waitFor(() => paths.includes("/v1/_ping"), 3000, "the start-up probe");
    // Pings for twice as long as an idle session would live.
    const since = performance.now();
    await waitFor(
      () => pingedAt.some((t) => t - since > 2400),
      10_000,
      "a keep-warm ping 2.4 s later",
    );
    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "ok");
    const pings = paths.filter((p) => p === "/v1/_ping").length;
    assert.ok(pings >= 4, `pings: ${pings}`);
    // The ALPN connection is the one session for every ping and the request.
    assert.equal(hop.accepted, 1, `connections to A: ${hop.accepted}`);
    const stats = await poolStats(relay);
    assert.equal(stats.protocol, "h2");
    assert.equal(stats.created, 1);
  } finally {
    await relay.close();
    hop.close();
    await server.shutdown();
  }
});

withCert.test("HTTP/2 pool: a stream A resets is not sent again, and a burst keeps to A's stream limit", async ({ tls }) => {
  const { createSecureServer, constants } = await import("node:http2");
  const hits: string[] = [];
  const server = createSecureServer({
    key: tls.key,
    cert: tls.cert,
    settings: { maxConcurrentStreams: 2 },
  });
  server.on("stream", (stream, headers) => {
    const path = String(headers[":path"]);
    hits.push(`${headers[":method"]} ${path}`);
    stream.on("error", () => {});
    stream.on("data", () => {});
    if (path === "/v1/reset") {
      // A read the request, then reset the stream: it saw it, so it must not get it twice.
      stream.on("end", () => stream.close(constants.NGHTTP2_INTERNAL_ERROR));
      return;
    }
    setTimeout(() => {
      try {
        stream.respond({ ":status": 200 });
        stream.end("ok");
      } catch { /* client gone */ }
    }, path === "/v1/slow" ? 100 : 0);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const port = (server.address() as { port: number }).port;
  const pool = testPool(tls, port);
  const watchdog = new Watchdog(5000);
  const send = async (method: string, target: string) => {
    const body = method === "POST"
      ? new BodySource(
        new ReadableStream({
          start: (c) => {
            c.enqueue(enc.encode("{}"));
            c.close();
          },
        }),
        2,
        65536,
      )
      : null;
    const res = await exchange2(pool, { method, target, headers: [], body }, { watchdog });
    await res.body?.cancel();
    return res;
  };
  try {
    await send("GET", "/v1/models"); // the session is now a reused one
    await assert.rejects(send("POST", "/v1/reset"));
    assert.deepEqual(hits.filter((h) => h === "POST /v1/reset"), ["POST /v1/reset"]);

    const results = await Promise.all(Array.from({ length: 12 }, () => send("GET", "/v1/slow")));
    assert.ok(results.every((r) => r.status === 200 && r.attempts === 1), "no stream was refused");
    assert.ok(
      pool.stats().created >= 6,
      `sessions for 12 streams at 2 each: ${pool.stats().created}`,
    );
  } finally {
    pool.close();
    watchdog.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

withCert.test("a JSON request over HTTP/2 leaves in one write: HEADERS, DATA and END_STREAM in one TLS record", async ({ tls }) => {
  const server = h2Upstream(tls, async (req) => new Response(await req.text()));
  const hop = countingHop(server.addr.port);
  const pool = testPool(tls, hop.port);
  const watchdog = new Watchdog(5000);
  const json = '{"model":"m","messages":[{"role":"user","content":"hi"}]}';
  const post = async (): Promise<string> => {
    const bytes = enc.encode(json);
    const source = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(bytes);
        c.close();
      },
    });
    const body = new BodySource(source, bytes.length, 65536);
    const res = await exchange2(pool, {
      method: "POST",
      target: "/v1/echo",
      headers: [["content-type", "application/json"]],
      body,
    }, { watchdog });
    return dec.decode(res.complete ?? new Uint8Array(await new Response(res.body).arrayBuffer()));
  };
  try {
    // The session's SETTINGS and their acknowledgements are behind us after the first ones.
    assert.equal(await post(), json);
    assert.equal(await post(), json);
    await new Promise((r) => setTimeout(r, 50));
    const before = hop.records;
    assert.equal(await post(), json);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(hop.records - before, 1, "TLS records the request took");
  } finally {
    watchdog.close();
    pool.close();
    hop.close();
    await server.shutdown();
  }
});
