/**
 * Integration: the relay between a real client and a fake Server A, all on 127.0.0.1.
 * Own endpoints, forwarding, byte transparency, header rules.
 */

import assert from "node:assert/strict";
import {
  closedPort,
  deadline,
  dec,
  delay,
  enc,
  rawRequest,
  readRequestHead,
  sha256,
  startRawUpstream,
  startRelay,
  startUpstream,
  writeAll,
} from "./helpers.ts";

deadline.test("GET / answers the original guide's health JSON", async () => {
  const relay = startRelay({ UPSTREAM_SERVER_A: `http://127.0.0.1:${closedPort()}` });
  try {
    const res = await fetch(`${relay.url}/`);
    const body = await res.json();
    assert.equal(res.status, 200);
    assert.equal(body.ok, true);
    assert.equal(body.proxy, "Server B → Server A");
  } finally {
    await relay.close();
  }
});

deadline.test("/debug/info reports diagnostics and never a key", async () => {
  const secretApi = "sk-upstream-SECRET-123456";
  const secretAccess = "access-SECRET-abcdef";
  const relay = startRelay({
    UPSTREAM_SERVER_A: `http://127.0.0.1:${closedPort()}`,
    ROUTES: JSON.stringify({ "1": { apiKey: secretApi, accessKey: secretAccess } }),
  });
  try {
    const res = await fetch(`${relay.url}/debug/info`);
    const text = await res.text();
    const info = JSON.parse(text);
    assert.equal(res.status, 200);
    for (
      const key of ["version", "deno", "uptimeSec", "upstreams", "timeouts", "inFlight", "counters"]
    ) {
      assert.ok(key in info, `missing ${key}`);
    }
    assert.equal(info.routes[0].keySwap, true);
    assert.ok(!text.includes("SECRET"), "a secret leaked into /debug/info");
  } finally {
    await relay.close();
  }
});

deadline.test("any method, path, query and end-to-end header reaches A unchanged", async () => {
  const up = startUpstream(async (req) => {
    const body = await req.text();
    return Response.json({ method: req.method, url: req.url, body });
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    for (const method of ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]) {
      const res = await fetch(`${relay.url}/v1/files/abc?x=1&y=%20z&key=k`, {
        method,
        headers: {
          session_id: "sess-1",
          "x-session-id": "s2",
          "anthropic-beta": "tools-2024",
          authorization: "Bearer sk-client",
          "user-agent": "claude-cli/1.0",
        },
        ...(method === "GET" || method === "OPTIONS" ? {} : { body: `payload-${method}` }),
      });
      const got = await res.json();
      assert.equal(res.status, 200);
      assert.equal(got.method, method);
      assert.equal(
        new URL(got.url).pathname + new URL(got.url).search,
        "/v1/files/abc?x=1&y=%20z&key=k",
      );
      if (method !== "GET" && method !== "OPTIONS") assert.equal(got.body, `payload-${method}`);
      const h = up.seen.at(-1)!.headers;
      assert.equal(h.get("session_id"), "sess-1");
      assert.equal(h.get("x-session-id"), "s2");
      assert.equal(h.get("anthropic-beta"), "tools-2024");
      assert.equal(h.get("authorization"), "Bearer sk-client");
      assert.equal(h.get("user-agent"), "claude-cli/1.0");
      assert.equal(h.get("host"), `127.0.0.1:${up.port}`);
    }
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("/v1beta paths are forwarded and a path prefix on UPSTREAM_SERVER_A is kept", async () => {
  const up = startUpstream((req) =>
    new Response(new URL(req.url).pathname + new URL(req.url).search)
  );
  const relay = startRelay({ UPSTREAM_SERVER_A: `${up.url}/api/` });
  try {
    const res = await fetch(`${relay.url}/v1beta/models/gemini-pro:streamGenerateContent?alt=sse`, {
      method: "POST",
      body: "{}",
    });
    assert.equal(await res.text(), "/api/v1beta/models/gemini-pro:streamGenerateContent?alt=sse");
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("paths outside /v1 and /v1beta get a JSON 404 and never reach A", async () => {
  const up = startUpstream(() => new Response("should not be reached"));
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    for (const path of ["/api/admin", "/login", "/v2/x", "/v1x/chat", "/favicon.ico", "/u/v1/x"]) {
      const res = await fetch(`${relay.url}${path}`);
      const body = await res.json();
      assert.equal(res.status, 404, path);
      assert.equal(body.error.type, "not_found_error");
      assert.equal(typeof body.error.message, "string");
      assert.equal(typeof body.error.code, "string");
    }
    assert.equal(up.seen.length, 0);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("status, headers and body bytes come back unchanged, including A's errors", async () => {
  const up = startUpstream((req) => {
    if (req.url.endsWith("/limited")) {
      return new Response(
        '{"error":{"message":"slow down","type":"rate_limit_error","code":"x"}}',
        {
          status: 429,
          headers: {
            "content-type": "application/json",
            "retry-after": "7",
            "x-ratelimit-remaining": "0",
          },
        },
      );
    }
    const h = new Headers({
      "content-type": "text/plain",
      "x-custom": "v",
      "cache-control": "no-store",
    });
    h.append("set-cookie", "a=1");
    h.append("set-cookie", "b=2");
    return new Response("hello", { status: 201, headers: h });
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const res = await fetch(`${relay.url}/v1/ok`);
    assert.equal(res.status, 201);
    assert.equal(res.headers.get("x-custom"), "v");
    assert.equal(res.headers.get("cache-control"), "no-store");
    assert.deepEqual(res.headers.getSetCookie(), ["a=1", "b=2"]);
    assert.equal(await res.text(), "hello");
    const limited = await fetch(`${relay.url}/v1/limited`);
    assert.equal(limited.status, 429);
    assert.equal(limited.headers.get("retry-after"), "7");
    assert.equal(limited.headers.get("x-ratelimit-remaining"), "0");
    assert.equal(
      await limited.text(),
      '{"error":{"message":"slow down","type":"rate_limit_error","code":"x"}}',
    );
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("redirects from A are passed to the client, never followed", async () => {
  const up = startUpstream((req) =>
    req.url.endsWith("/target")
      ? new Response("followed!")
      : new Response(null, { status: 302, headers: { location: "/v1/target" } })
  );
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const res = await fetch(`${relay.url}/v1/redirect`, { redirect: "manual" });
    assert.equal(res.status, 302);
    assert.equal(res.headers.get("location"), "/v1/target");
    await res.body?.cancel();
    assert.equal(up.seen.length, 1);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a 20 MB binary body passes byte-identical in both directions", async () => {
  const size = 20 * 1024 * 1024;
  const payload = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) {
    crypto.getRandomValues(payload.subarray(i, Math.min(i + 65536, size)));
  }
  const expected = await sha256(payload);
  let upstreamSaw = "";
  const up = startUpstream(async (req) => {
    const got = new Uint8Array(await req.arrayBuffer());
    upstreamSaw = await sha256(got);
    return new Response(got, { headers: { "content-type": "application/octet-stream" } });
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const res = await fetch(`${relay.url}/v1/files`, { method: "POST", body: payload });
    const back = new Uint8Array(await res.arrayBuffer());
    assert.equal(upstreamSaw, expected, "request body changed on the way to A");
    assert.equal(back.length, size);
    assert.equal(await sha256(back), expected, "response body changed on the way back");
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("bodies around the server's read-whole and join sizes reach A byte-identical, one after another", async () => {
  // 16 KiB: largest body written with the head; 64 KiB: the pooled first buffer; 256 KiB: the
  // largest body read whole before handling; over it, buffers of the body's own growing to 1 MiB
  // (1,200,000 and 3,000,000 bytes fill several). Each size once on either side of its edge, on
  // one kept-alive connection, so that a reused buffer's old bytes would show.
  const sizes = [
    1,
    16_384,
    16_385,
    65_536,
    65_537,
    200_000,
    262_144,
    262_145,
    1_200_000,
    3_000_000,
    70_000,
  ];
  const seen: string[] = [];
  const up = startUpstream(async (req) => {
    const got = await req.bytes();
    seen.push(`${got.byteLength}:${await sha256(got)}`);
    return new Response(String(got.byteLength));
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    for (const [i, size] of sizes.entries()) {
      const payload = new Uint8Array(size).map((_, j) => (j * 31 + i * 7) & 0xff);
      const res = await fetch(`${relay.url}/v1/files`, { method: "POST", body: payload });
      assert.equal(await res.text(), String(size));
      assert.equal(seen[i], `${size}:${await sha256(payload)}`, `body of ${size} bytes`);
    }
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("30 bodies of 5-250 KB at once each reach A intact: a reused body buffer is never in two requests", async () => {
  // The own server reads such bodies into pooled buffers and reuses one once the upstream client
  // has sent its bytes and A answered. Given back any earlier, a buffer would be read into by
  // another request while its bytes still wait to go to A.
  const bad: string[] = [];
  const up = startUpstream(async (req) => {
    await delay(Number(req.headers.get("x-wait")));
    const got = await req.bytes();
    const want = req.headers.get("x-sha")!;
    if ((await sha256(got)) !== want) bad.push(`${req.headers.get("x-i")}: ${got.byteLength} B`);
    return new Response(String(got.byteLength));
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const sizes = Array.from({ length: 30 }, (_, i) => 5_000 + ((i * 7_919) % 245_000));
    const answers = await Promise.all(sizes.map(async (size, i) => {
      const payload = new Uint8Array(size).map((_, j) => (j * 13 + i * 101) & 0xff);
      const res = await fetch(`${relay.url}/v1/files`, {
        method: "POST",
        body: payload,
        headers: { "x-sha": await sha256(payload), "x-i": String(i), "x-wait": String(i % 5) },
      });
      return Number(await res.text());
    }));
    assert.deepEqual(answers, sizes);
    assert.deepEqual(bad, []);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("a chunked request body (no content-length) reaches A intact", async () => {
  const up = startUpstream(async (req) => new Response(await req.text()));
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(enc.encode("part-1,"));
        c.enqueue(enc.encode("part-2,"));
        c.enqueue(enc.encode("part-3"));
        c.close();
      },
    });
    const res = await fetch(`${relay.url}/v1/echo`, { method: "POST", body });
    assert.equal(await res.text(), "part-1,part-2,part-3");
  } finally {
    await relay.close();
    await up.close();
  }
});

async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new CompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

deadline.test("gzip responses pass through compressed, byte for byte, with A's content-length", async () => {
  const json = enc.encode(JSON.stringify({ text: "x".repeat(5000), n: [1, 2, 3] }));
  const compressed = await gzip(json);
  const up = startUpstream((req) => {
    const wantsGzip = (req.headers.get("accept-encoding") ?? "").includes("gzip");
    return wantsGzip
      ? new Response(compressed as Uint8Array<ArrayBuffer>, {
        headers: {
          "content-type": "application/json",
          "content-encoding": "gzip",
          "content-length": String(compressed.length),
        },
      })
      : new Response(json, { headers: { "content-type": "application/json" } });
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const res = await rawRequest(
      relay.port,
      "GET /v1/models HTTP/1.1\r\nhost: b\r\naccept-encoding: gzip\r\nconnection: close\r\n\r\n",
    );
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-encoding"), "gzip");
    assert.equal(res.headers.get("content-length"), String(compressed.length));
    assert.equal(up.seen.at(-1)!.headers.get("accept-encoding"), "gzip");
    assert.deepEqual(res.body, compressed);
    // And a real client decodes it.
    const viaFetch = await fetch(`${relay.url}/v1/models`, {
      headers: { "accept-encoding": "gzip" },
    });
    assert.deepEqual(await viaFetch.json(), JSON.parse(dec.decode(json)));
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("plain responses stay plain when the client does not ask for compression", async () => {
  const up = startUpstream((req) => new Response(`ae=${req.headers.get("accept-encoding")}`));
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const res = await rawRequest(
      relay.port,
      "GET /v1/x HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
    );
    assert.equal(res.headers.get("content-encoding"), undefined);
    assert.equal(dec.decode(res.body), "ae=null");
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("gzip request bodies reach A as sent, with their content-encoding", async () => {
  const original = enc.encode('{"model":"m","messages":[]}');
  const compressed = await gzip(original);
  const up = startUpstream(async (req) => {
    const got = new Uint8Array(await req.arrayBuffer());
    return Response.json({
      ce: req.headers.get("content-encoding"),
      same: got.length === compressed.length && got.every((b, i) => b === compressed[i]),
    });
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const res = await fetch(`${relay.url}/v1/messages`, {
      method: "POST",
      body: compressed as Uint8Array<ArrayBuffer>,
      headers: { "content-encoding": "gzip", "content-type": "application/json" },
    });
    assert.deepEqual(await res.json(), { ce: "gzip", same: true });
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("hop-by-hop headers are dropped and the client's real IP replaces spoofed ones", async () => {
  let head = "";
  const up = startRawUpstream(async (conn) => {
    const got = await readRequestHead(conn);
    head = got?.head ?? "";
    await writeAll(conn, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const res = await rawRequest(
      relay.port,
      "GET /v1/x HTTP/1.1\r\nhost: b\r\nconnection: close, x-drop-me\r\nx-drop-me: 1\r\n" +
        "keep-alive: timeout=5\r\nte: trailers\r\nproxy-authorization: Basic abc\r\n" +
        "x-real-ip: 6.6.6.6\r\nx-forwarded-for: 6.6.6.6, 7.7.7.7\r\nforwarded: for=6.6.6.6\r\n" +
        "session_id: keep-me\r\n\r\n",
    );
    assert.equal(res.status, 200);
    const lines = head.toLowerCase().split("\r\n");
    for (const gone of ["x-drop-me", "keep-alive", "te", "proxy-authorization", "forwarded"]) {
      assert.ok(!lines.some((l) => l.startsWith(`${gone}:`)), `${gone} was forwarded`);
    }
    assert.ok(lines.includes("session_id: keep-me"));
    assert.ok(lines.includes("x-real-ip: 127.0.0.1"), head);
    assert.ok(lines.includes("x-forwarded-for: 127.0.0.1"), head);
    assert.ok(!head.includes("6.6.6.6") && !head.includes("7.7.7.7"));
  } finally {
    await relay.close();
    up.close();
  }
});

deadline.test("header values with Latin-1 bytes pass through unchanged", async () => {
  let head = "";
  const up = startRawUpstream(async (conn) => {
    head = (await readRequestHead(conn))?.head ?? "";
    await writeAll(
      conn,
      new Uint8Array([
        ...enc.encode("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-name: caf"),
        0xe9,
        ...enc.encode("\r\nconnection: close\r\n\r\n"),
      ]),
    );
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const req = new Uint8Array([
      ...enc.encode("GET /v1/x HTTP/1.1\r\nhost: b\r\nx-title: na"),
      0xef,
      ...enc.encode("ve\r\nconnection: close\r\n\r\n"),
    ]);
    const res = await rawRequest(relay.port, req);
    assert.equal(res.headers.get("x-name"), "caf\u00e9");
    assert.ok(head.includes("x-title: na\u00efve"), head);
  } finally {
    await relay.close();
    up.close();
  }
});
