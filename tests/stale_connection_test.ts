/**
 * Integration: pooled connections that Server A closes never surface as client errors.
 */

import assert from "node:assert/strict";
import {
  deadline,
  dec,
  delay,
  readRequest,
  readRequestHead,
  startRawUpstream,
  startRelay,
  waitFor,
  writeAll,
} from "./helpers.ts";

deadline.test("an idle connection A closes after 1 s is noticed, and the next request just works", async () => {
  let idleClosed = 0;
  const up = startRawUpstream(async (conn) => {
    while (true) {
      const req = await Promise.race([readRequest(conn), delay(1000).then(() => "idle" as const)]);
      if (req === "idle") idleClosed++;
      if (req === null || req === "idle") return; // A's keep-alive timeout: close
      await writeAll(conn, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "ok");
    await waitFor(() => idleClosed === 1, 5000, "A closing the idle connection");
    const res = await fetch(`${relay.url}/v1/chat/completions`, {
      method: "POST",
      body: '{"a":1}',
    });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok");
    assert.equal(up.connections, 2);
  } finally {
    await relay.close();
    up.close();
  }
});

function closesReusedConnections(answerFirst: number, onReuse: (conn: Deno.Conn) => Promise<void>) {
  const bodies: string[] = [];
  const up = startRawUpstream(async (conn, index) => {
    let served = 0;
    while (true) {
      if (index === 0 && served === answerFirst) {
        await onReuse(conn);
        return;
      }
      const req = await readRequest(conn);
      if (req === null) return;
      const body = dec.decode(req.body);
      bodies.push(body);
      served++;
      await writeAll(
        conn,
        `HTTP/1.1 200 OK\r\ncontent-length: ${req.body.byteLength + 3}\r\n\r\nok:${body}`,
      );
    }
  });
  return { up, bodies };
}

deadline.test("a request on a pooled connection A closes without answering is resent once, body intact", async () => {
  const { up, bodies } = closesReusedConnections(1, async (conn) => {
    await readRequestHead(conn); // takes the request, then drops the connection
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    assert.equal(
      await (await fetch(`${relay.url}/v1/x`, { method: "POST", body: "first" })).text(),
      "ok:first",
    );
    const res = await fetch(`${relay.url}/v1/x`, { method: "POST", body: "second-body" });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok:second-body");
    assert.deepEqual(bodies, ["first", "second-body"]);
    assert.equal(relay.app.counters.staleRetries, 1);
  } finally {
    await relay.close();
    up.close();
  }
});

for (
  const [size, how] of [[100_000, "lent from the server's body pool"], [
    1_500_000,
    "streamed",
  ]] as const
) {
  deadline.test(`a body of ${size} bytes (${how}) that A read whole before dropping the connection is resent intact`, async () => {
    // The upstream client keeps the body's bytes for a resend: up to 256 KiB the buffer the server
    // lent, over it the buffers it streamed the body into. A buffer reused too early would change
    // the kept bytes, and only the resend would show it.
    const { up, bodies } = closesReusedConnections(1, async (conn) => {
      await readRequest(conn); // takes the whole request, then drops the connection
    });
    const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
    try {
      assert.equal(
        await (await fetch(`${relay.url}/v1/x`, { method: "POST", body: "first" })).text(),
        "ok:first",
      );
      const letters = "abcdefghijklmnopqrstuvwxyz0123456789";
      const big = Array.from({ length: size }, (_, i) => letters[(i * 7 + (i >> 12)) % 36])
        .join("");
      const res = await fetch(`${relay.url}/v1/x`, { method: "POST", body: big });
      assert.equal(res.status, 200);
      // Compared as booleans: a failure printing two 1.5 MB strings would bury the report.
      assert.ok((await res.text()) === `ok:${big}`, "the answer does not echo the client's body");
      assert.equal(bodies.length, 2);
      assert.ok(bodies[1] === big, "the resent body differs from the client's");
      assert.equal(relay.app.counters.staleRetries, 1);
    } finally {
      await relay.close();
      up.close();
    }
  });
}

deadline.test("a body larger than RETRY_BODY_MAX_MB is not resent: the client gets a 502", async () => {
  const { up, bodies } = closesReusedConnections(1, async (conn) => {
    await readRequest(conn);
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, RETRY_BODY_MAX_MB: "0.001" });
  try {
    assert.equal(
      await (await fetch(`${relay.url}/v1/x`, { method: "POST", body: "a" })).text(),
      "ok:a",
    );
    const big = "x".repeat(4096);
    const res = await fetch(`${relay.url}/v1/x`, { method: "POST", body: big });
    assert.equal(res.status, 502);
    assert.equal((await res.json()).error.code, "upstream_protocol_error");
    assert.deepEqual(bodies, ["a"]);
  } finally {
    await relay.close();
    up.close();
  }
});

deadline.test("no resend once any response byte came back", async () => {
  const { up, bodies } = closesReusedConnections(1, async (conn) => {
    await readRequest(conn);
    await writeAll(conn, "HTTP/1.1 200 O");
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    await (await fetch(`${relay.url}/v1/x`, { method: "POST", body: "a" })).text();
    const res = await fetch(`${relay.url}/v1/x`, { method: "POST", body: "b" });
    assert.equal(res.status, 502);
    await res.body?.cancel();
    assert.deepEqual(bodies, ["a"]);
    assert.equal(up.connections, 1);
  } finally {
    await relay.close();
    up.close();
  }
});

deadline.test("the kept copy of a request body is dropped once A has answered, while the stream goes on", async () => {
  const { BodySource, exchange, Pool } = await import("../lib/upstream/http1.ts");
  const { Watchdog } = await import("../lib/http/watchdog.ts");
  const up = startRawUpstream(async (conn) => {
    const req = await readRequest(conn);
    if (req === null) return;
    await writeAll(
      conn,
      "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    await writeAll(conn, `6\r\ndata: \r\n`);
    await delay(300);
    await writeAll(conn, "0\r\n\r\n");
  });
  const pool = new Pool({
    protocol: "http:",
    hostname: "127.0.0.1",
    port: up.port,
    hostHeader: `127.0.0.1:${up.port}`,
  }, {
    connectTimeoutMs: 1000,
    idleTimeoutMs: 1000,
  });
  const watchdog = new Watchdog(5000);
  try {
    const big = new Uint8Array(512 * 1024).fill(120);
    let sent = false;
    const body = new BodySource(
      {
        read: () => Promise.resolve(sent ? null : (sent = true, big)),
        cancel() {},
      },
      big.byteLength,
      8 * 1024 * 1024,
    );
    const res = await exchange(pool, {
      method: "POST",
      target: "/v1/messages",
      headers: [["content-length", String(big.byteLength)]],
      body,
    }, { watchdog });
    await waitFor(() => body.keptBytes === 0, 1000, "kept body released");
    assert.equal(body.replayable, false);
    const text = await new Response(res.body).text();
    assert.equal(text, "data: ");
  } finally {
    pool.close();
    watchdog.close();
    up.close();
  }
});
