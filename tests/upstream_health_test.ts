/**
 * Integration: several upstreams, passive and active health, keep-warm.
 */

import assert from "node:assert/strict";
import {
  closedPort,
  deadline,
  delay,
  readRequestHead,
  startRawUpstream,
  startRelay,
  startUpstream,
  waitFor,
  writeAll,
} from "./helpers.ts";

deadline.test("a dead first upstream is skipped after one failure: later requests go straight to the live one", async () => {
  const live = startUpstream(() => new Response("live"));
  const deadPort = closedPort();
  const attempts: string[] = [];
  const relay = startRelay(
    { UPSTREAM_SERVER_A: `http://127.0.0.1:${deadPort},${live.url}`, UPSTREAM_DOWN_SEC: "60" },
    {
      connector: (ep) => {
        attempts.push(String(ep.port));
        return Deno.connect({ hostname: ep.hostname, port: ep.port }).then((c) => {
          c.setNoDelay(true);
          return c;
        });
      },
    },
  );
  try {
    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "live");
    assert.deepEqual(attempts, [String(deadPort), String(live.port)]);
    for (let i = 0; i < 3; i++) {
      assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "live");
    }
    assert.equal(
      attempts.filter((p) => p === String(deadPort)).length,
      1,
      "the dead upstream was tried again",
    );
    const info = relay.app.debugInfo() as {
      upstreamHealth: Array<{ state: string; totalFailures: number }>;
    };
    assert.equal(info.upstreamHealth[0]!.state, "down");
    assert.equal(info.upstreamHealth[0]!.totalFailures, 1);
    assert.equal(info.upstreamHealth[1]!.state, "up");
  } finally {
    await relay.close();
    await live.close();
  }
});

deadline.test("a request never waits on a known-dead upstream's connect timeout when a live one exists", async () => {
  const live = startUpstream(() => new Response("live"));
  let blackholeTries = 0;
  const relay = startRelay(
    { UPSTREAM_SERVER_A: `http://blackhole.invalid:81,${live.url}`, CONNECT_TIMEOUT_SEC: "0.5" },
    {
      connector: (ep) => {
        if (ep.hostname !== "blackhole.invalid") {
          return Deno.connect({ hostname: ep.hostname, port: ep.port });
        }
        blackholeTries++;
        return new Promise<Deno.Conn>(() => {});
      },
    },
  );
  try {
    let t0 = performance.now();
    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "live");
    assert.ok(
      performance.now() - t0 >= 450,
      "the first request should pay the connect timeout once",
    );
    t0 = performance.now();
    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "live");
    const second = performance.now() - t0;
    // The dead upstream was not tried again (it went last), so no second connect timeout.
    assert.equal(blackholeTries, 1);
    assert.ok(second < 1000, `second request took ${second.toFixed(0)} ms`);
  } finally {
    await relay.close();
    await live.close();
  }
});

deadline.test("an active probe brings a recovered upstream back to first place", async () => {
  // The primary keeps its port the whole time: while "down" it drops every connection unanswered
  // (as A does while it restarts behind a proxy). A port released and bound again later could be
  // taken meanwhile by one of the test's own outgoing connections.
  let primaryUp = false;
  const primary = startRawUpstream(async (conn) => {
    while (primaryUp) {
      const req = await readRequestHead(conn);
      if (req === null) return;
      const body = req.head.split(" ")[1] === "/v1/_ping" ? '{"status":"pong"}' : "primary";
      await writeAll(conn, `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
    }
  });
  const backup = startUpstream(() => new Response("backup"));
  const relay = startRelay(
    {
      UPSTREAM_SERVER_A: `${primary.url},${backup.url}`,
      HEALTH_CHECK_SEC: "0.2",
      UPSTREAM_KEEPWARM_SEC: "0",
    },
    { background: true },
  );
  const health = () =>
    relay.app.debugInfo().upstreamHealth as Array<
      { state: string; lastProbeMs?: number; lastError?: string }
    >;
  try {
    await waitFor(
      () => health()[0]!.state === "down",
      3000,
      "primary marked down by the start-up probe",
    );
    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "backup");
    primaryUp = true;
    await waitFor(
      () => health()[0]!.state === "up" && typeof health()[0]!.lastProbeMs === "number",
      3000,
      () => `primary back up (its health now: ${JSON.stringify(health()[0])})`,
    );
    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "primary");
  } finally {
    await relay.close();
    primary.close();
    await backup.close();
  }
});

/** A fake A that, like claude-code-hub, drops connections idle for `idleMs`. */
function shortKeepAlive(idleMs: number) {
  /** Per connection, in the order A accepted them. */
  const conns: Array<{
    requests: Array<{ path: string; at: number }>;
    /** A closed it for being idle `idleMs`. */
    idleClosed: boolean;
    closed: boolean;
  }> = [];
  const up = startRawUpstream(async (conn, i) => {
    const record = {
      requests: [] as Array<{ path: string; at: number }>,
      idleClosed: false,
      closed: false,
    };
    conns[i] = record;
    try {
      while (true) {
        const req = await Promise.race([
          readRequestHead(conn),
          delay(idleMs).then(() => "idle" as const),
        ]);
        if (req === "idle") record.idleClosed = true;
        if (req === null || req === "idle") return;
        const path = req.head.split(" ")[1]!;
        record.requests.push({ path, at: performance.now() });
        const body = path === "/v1/_ping" ? '{"status":"pong"}' : "ok";
        await writeAll(conn, `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
      }
    } finally {
      record.closed = true;
    }
  });
  return { up, conns };
}

deadline.test("keep-warm keeps a connection to A open across idle periods longer than A's keep-alive", async () => {
  const idleMs = 1500;
  for (const keepWarm of ["0.25", "0"]) {
    const a = shortKeepAlive(idleMs);
    const relay = startRelay(
      {
        UPSTREAM_SERVER_A: a.up.url,
        UPSTREAM_KEEPWARM_SEC: keepWarm,
        HEALTH_CHECK_SEC: "60",
        // Keep-warm alone: a spare would add connections this test counts (see spare_test.ts).
        UPSTREAM_SPARE_CONNECTIONS: "0",
      },
      { background: true },
    );
    try {
      await waitFor(() => a.up.connections >= 1, 5000, "start-up warm-up connection");
      assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "ok");
      const before = a.up.connections;
      const pausedAt = performance.now();
      const old = () => a.conns.slice(0, before);
      const seen = () =>
        JSON.stringify(a.conns.map((c) => ({
          ...c,
          requests: c.requests.map((r) => `${r.path} +${Math.round(r.at - pausedAt)} ms`),
        })));
      if (keepWarm === "0") {
        await waitFor(
          () => old().every((c) => c.idleClosed),
          idleMs + 10_000,
          () => `A closing the relay's idle connections (A's view: ${seen()})`,
        );
        assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "ok");
        assert.ok(
          a.up.connections > before,
          "without keep-warm the idle connection dies and a new one is needed",
        );
      } else {
        // A ping on a connection from before the pause, later than A's idle limit: kept alive.
        await waitFor(
          () =>
            old().some((c) =>
              !c.closed &&
              c.requests.some((r) => r.path === "/v1/_ping" && r.at - pausedAt > 1.5 * idleMs)
            ),
          idleMs + 10_000,
          () =>
            "a keep-warm ping after A's idle limit on a connection opened before the pause " +
            `(A's view: ${seen()})`,
        );
        assert.ok(
          old().some((c) => !c.idleClosed),
          "keep-warm should have kept a connection alive",
        );
        assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "ok");
      }
    } finally {
      await relay.close();
      a.up.close();
    }
  }
});
