/**
 * Spare connections to A (`UPSTREAM_SPARE_CONNECTIONS`): under load every pooled connection can be
 * busy with a long stream, and the one idle connection left is closed by the pool's idle timeout
 * or by A's ~5 s keep-alive. Without a spare the next request then pays a TCP and TLS handshake
 * to A on its own path. These tests count A's TLS handshakes and check which connection answered.
 */

import assert from "node:assert/strict";
import https from "node:https";
import * as http2 from "node:http2";
import type { TLSSocket } from "node:tls";
import {
  deadline,
  delay,
  readRequestHead,
  startRawUpstream,
  startRelay,
  waitFor,
  writeAll,
} from "./helpers.ts";
import { type TestCert, withCert } from "./tls_fixture.ts";
import { type Endpoint, Pool } from "../lib/upstream/http1.ts";
import { exchange2, H2Pool } from "../lib/upstream/http2.ts";
import { Watchdog } from "../lib/http/watchdog.ts";

/**
 * A fake HTTPS A on `node:https` (HTTP/1.1 only, like claude-code-hub) that closes connections idle
 * for `keepAliveMs`, numbers its TLS connections in handshake order, and answers:
 * `/v1/_ping` pong; `/v1/stream` an endless SSE stream (an event every 50 ms); anything else a
 * JSON body naming the connection that carried the request.
 */
async function fakeA(tls: TestCert, keepAliveMs: number) {
  const ids = new WeakMap<object, number>();
  const sockets = new Set<TLSSocket>();
  const timers = new Set<ReturnType<typeof setInterval>>();
  let handshakes = 0;
  const server = https.createServer({
    cert: tls.cert,
    key: tls.key,
    ALPNProtocols: ["http/1.1"],
    keepAliveTimeout: keepAliveMs,
  }, (req, res) => {
    req.resume();
    const path = req.url ?? "";
    if (path.startsWith("/v1/_ping")) {
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"status":"pong"}');
      return;
    }
    if (path.startsWith("/v1/stream")) {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write("data: 0\n\n");
      const t = setInterval(() => res.write("data: tick\n\n"), 50);
      timers.add(t);
      res.on("close", () => {
        clearInterval(t);
        timers.delete(t);
      });
      return;
    }
    const body = JSON.stringify({ connection: ids.get(req.socket) ?? -1 });
    res.writeHead(200, { "content-type": "application/json", "content-length": body.length });
    res.end(body);
  });
  server.on("secureConnection", (socket: TLSSocket) => {
    ids.set(socket, ++handshakes);
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  return {
    url: `https://127.0.0.1:${(server.address() as { port: number }).port}`,
    get handshakes() {
      return handshakes;
    },
    close() {
      for (const t of timers) clearInterval(t);
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}

interface PoolInfo {
  active: number;
  coldStarts: number;
  spares: { ready: number; opened: number };
}

function poolInfo(relay: ReturnType<typeof startRelay>): PoolInfo {
  const pools = relay.app.debugInfo().pools as Record<string, PoolInfo>;
  return Object.values(pools)[0]!;
}

/**
 * Opens `n` endless streams through the relay, lets A's keep-alive and the pool's idle timeout
 * pass, then sends one request. Returns whether that request was carried by a connection that
 * already existed when it was sent, and what the pool and `/metrics` counted.
 */
async function requestAfterIdle(tls: TestCert, env: Record<string, string>) {
  const a = await fakeA(tls, 1200);
  const relay = startRelay({
    UPSTREAM_SERVER_A: a.url,
    UPSTREAM_POOL_IDLE_SEC: "0.8",
    HEALTH_CHECK_SEC: "60",
    ...env,
  }, { caCerts: [tls.cert], background: true });
  const readers: ReadableStreamDefaultReader<Uint8Array>[] = [];
  try {
    await waitFor(() => a.handshakes >= 1, 5000, "the start-up probe's connection");
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${relay.url}/v1/stream`);
      const reader = res.body!.getReader();
      readers.push(reader);
      await reader.read();
    }
    await waitFor(() => poolInfo(relay).active === 3, 5000, "three streams holding connections");
    // Longer than A's keep-alive and the pool's idle timeout: no connection idle at the start of
    // this period is still open at its end.
    await delay(2500);
    const known = a.handshakes;
    const coldBefore = poolInfo(relay).coldStarts;
    const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    const { connection } = await res.json() as { connection: number };
    const metrics = await (await fetch(`${relay.url}/metrics`)).text();
    return {
      warm: connection <= known,
      connection,
      known,
      coldStarts: poolInfo(relay).coldStarts - coldBefore,
      info: poolInfo(relay),
      metrics,
    };
  } finally {
    for (const r of readers) await r.cancel().catch(() => {});
    await relay.close();
    a.close();
  }
}

for (const keepWarm of ["0.2", "0"]) {
  const how = keepWarm === "0" ? "replaced by new connections" : "kept warm by pings";
  withCert.test(`a request after idle finds a ready TLS connection when long streams hold every other one (spare ${how})`, async ({ tls }) => {
    const r = await requestAfterIdle(tls, { UPSTREAM_KEEPWARM_SEC: keepWarm });
    assert.ok(
      r.warm,
      `request went over connection #${r.connection}, opened after it was sent (${r.known} before)`,
    );
    assert.equal(r.coldStarts, 0);
    assert.ok(r.info.spares.opened >= 1, JSON.stringify(r.info));
    assert.match(
      r.metrics,
      /^relay_upstream_cold_starts_total\{upstream="https:\/\/127\.0\.0\.1:\d+"\} \d+$/m,
    );
    assert.match(r.metrics, /^relay_upstream_spare_connections\{upstream="[^"]+"\} \d+$/m);
    assert.match(r.metrics, /^relay_upstream_spare_opens_total\{upstream="[^"]+"\} [1-9]\d*$/m);
  });
}

withCert.test("UPSTREAM_SPARE_CONNECTIONS=0 leaves the request after idle to open its own TLS connection", async ({ tls }) => {
  const r = await requestAfterIdle(tls, {
    UPSTREAM_KEEPWARM_SEC: "0.2",
    UPSTREAM_SPARE_CONNECTIONS: "0",
  });
  assert.ok(!r.warm, `connection #${r.connection} of ${r.known} was still open`);
  assert.equal(r.coldStarts, 1);
  assert.equal(r.info.spares.opened, 0);
  assert.match(r.metrics, /^relay_upstream_cold_starts_total\{upstream="[^"]+"\} [1-9]\d*$/m);
});

/** A plain-HTTP A that counts connections; `/v1/_ping` answers `pingStatus`. */
function countingA(pingStatus: number) {
  return startRawUpstream(async (conn) => {
    while (true) {
      const req = await readRequestHead(conn);
      if (req === null) return;
      const status = req.head.includes("/v1/_ping") ? pingStatus : 200;
      await writeAll(conn, `HTTP/1.1 ${status} X\r\ncontent-length: 2\r\n\r\nok`);
    }
  });
}

deadline.test("no spare connection is opened for an upstream marked down, and one is when it is up", async () => {
  for (const pingStatus of [500, 200]) {
    const a = countingA(pingStatus);
    // Without keep-warm a spare near the idle timeout is replaced: an up upstream gets new
    // connections every ~0.3 s, a down one must get none.
    const relay = startRelay({
      UPSTREAM_SERVER_A: a.url,
      UPSTREAM_POOL_IDLE_SEC: "0.4",
      UPSTREAM_KEEPWARM_SEC: "0",
      HEALTH_CHECK_SEC: "60",
    }, { background: true });
    try {
      const state = () => (relay.app.debugInfo().upstreamHealth as Array<{ state: string }>)[0]!;
      await waitFor(() => state().state !== "unknown", 5000, "the start-up probe");
      if (pingStatus === 500) {
        assert.equal(state().state, "down");
        // Several idle timeouts and sweeper ticks.
        await delay(1500);
        assert.equal(a.connections, 1, "only the probe's connection");
        assert.equal(poolInfo(relay).spares.opened, 0);
      } else {
        assert.equal(state().state, "up");
        await waitFor(() => a.connections >= 3, 5000, "spares replaced while the upstream is up");
      }
    } finally {
      await relay.close();
      a.close();
    }
  }
});

const EP: Endpoint = { protocol: "http:", hostname: "127.0.0.1", port: 0, hostHeader: "a" };

deadline.test("a pool stops opening spares after the failure limit and starts again once an exchange works", async () => {
  const a = countingA(200);
  let refuse = true;
  let calls = 0;
  const pool = new Pool({ ...EP, port: a.port }, {
    connectTimeoutMs: 1000,
    idleTimeoutMs: 200,
    spares: { count: 1, failureLimit: 3 },
    connector: (ep) => {
      calls++;
      if (refuse) return Promise.reject(new Error("refused"));
      return Deno.connect({ hostname: ep.hostname, port: ep.port });
    },
  });
  try {
    // The request's own connect and its spare's both fail; the spare is retried on sweeper ticks.
    await assert.rejects(pool.acquire());
    await waitFor(() => pool.stats().spares.failuresInARow === 3, 3000, "three spare failures");
    const after = calls;
    await delay(500); // ten sweeper ticks
    assert.equal(calls, after, "no more tries after the limit");
    assert.equal(after, 4, "one request connect and three spare connects");

    refuse = false;
    const c = await pool.acquire();
    assert.equal(pool.stats().spares.opened, 0, "a connect alone proves little");
    pool.release(c, true);
    assert.equal(pool.stats().spares.failuresInARow, 0, "an exchange that ended cleanly resets it");
    const c2 = await pool.acquire(); // takes the last idle connection: a spare follows
    await waitFor(() => pool.stats().spares.opened === 1, 3000, "a spare after recovery");
    pool.release(c2, true);
  } finally {
    pool.close();
    a.close();
  }
});

deadline.test("a pool stops reopening spares that A closes before any use", async () => {
  let closeAtOnce = false;
  const a = startRawUpstream(async (conn) => {
    if (closeAtOnce) return;
    await readRequestHead(conn);
  });
  const pool = new Pool({ ...EP, port: a.port }, {
    connectTimeoutMs: 1000,
    idleTimeoutMs: 5000,
    spares: { count: 1, failureLimit: 3 },
  });
  try {
    const c = await pool.acquire(); // cold: a spare opens beside it
    await waitFor(() => pool.stats().idle === 1, 3000, "the first spare");
    closeAtOnce = true;
    const c2 = await pool.acquire(); // takes the spare: the next ones are closed by A at once
    await waitFor(() => pool.stats().spares.failuresInARow === 3, 3000, "three spares lost");
    const connections = a.connections;
    await delay(300);
    assert.equal(a.connections, connections, "no reconnect loop");
    assert.equal(connections, 5, "the request's, the first spare and three lost ones");
    pool.release(c, false);
    pool.release(c2, false);
  } finally {
    pool.close();
    a.close();
  }
});

deadline.test("a pool opens spares only while live() says so, and never beyond its idle cap", async () => {
  const a = countingA(200);
  let live = false;
  const pool = new Pool({ ...EP, port: a.port }, {
    connectTimeoutMs: 1000,
    idleTimeoutMs: 5000,
    maxIdle: 1,
    spares: { count: 4, live: () => live },
  });
  try {
    const c = await pool.acquire();
    await delay(200);
    assert.equal(a.connections, 1, "no spare while the upstream is marked down");
    pool.release(c, true);
    live = true;
    const c2 = await pool.acquire(); // the last idle one: spares follow, capped at maxIdle 1
    await waitFor(() => pool.stats().idle === 1, 3000, "a spare");
    await delay(200);
    assert.equal(a.connections, 2);
    assert.equal(pool.stats().spares.opened, 1);
    pool.release(c2, true);
  } finally {
    pool.close();
    a.close();
  }
});

withCert.test("an HTTP/2 pool opens a new session before a request takes the last free stream slot", async ({ tls }) => {
  const server = http2.createSecureServer({ key: tls.key, cert: tls.cert });
  const open = new Set<http2.ServerHttp2Stream>();
  let sessions = 0;
  server.on("session", () => sessions++);
  server.on("stream", (stream) => {
    stream.on("error", () => {});
    open.add(stream);
    stream.on("close", () => open.delete(stream));
    stream.respond({ ":status": 200, "content-type": "text/event-stream" });
    stream.write("data: 0\n\n");
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const port = (server.address() as { port: number }).port;
  const pool = new H2Pool(
    { protocol: "https:", hostname: "127.0.0.1", port, hostHeader: "a" },
    {
      connectTimeoutMs: 2000,
      idleTimeoutMs: 4000,
      caCerts: [tls.cert],
      maxStreamsPerSession: 2,
      spares: { count: 1 },
    },
  );
  const watchdog = new Watchdog(5000);
  const bodies: ReadableStream<Uint8Array>[] = [];
  const stream = async () => {
    const res = await exchange2(pool, { method: "GET", target: "/v1/s", headers: [], body: null }, {
      watchdog,
    });
    bodies.push(res.body!);
  };
  try {
    await stream(); // cold: the first session
    assert.equal(pool.stats().coldStarts, 1);
    await stream(); // takes the last free slot: a second session opens beside it
    await waitFor(() => pool.stats().sessions === 2, 3000, "a spare session");
    assert.equal(pool.stats().spares.ready, 2);
    await stream();
    await stream();
    assert.equal(pool.stats().coldStarts, 1, "the third and fourth streams found a ready session");
    await waitFor(() => sessions === 3, 3000, "the next spare session");
  } finally {
    for (const b of bodies) await b.cancel().catch(() => {});
    pool.close();
    watchdog.close();
    for (const s of open) s.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});
