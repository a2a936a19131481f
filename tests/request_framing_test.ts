/**
 * The relay's own framing, both directions: the upstream writer frames what it sends whatever the
 * client's headers say, and what reaches the client is framed by the relay's server from what A
 * actually sent. Upstream bytes are captured by a raw TCP fake A. The full vector corpus, through
 * the real entry point, is in the framing corpus tests; these are the quick checks of each rule.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { encodeLatin1 } from "../lib/http/bytes.ts";
import {
  BodySource,
  exchange,
  type ExchangeRequest,
  Pool,
  requestHead,
  UpstreamError,
} from "../lib/upstream/http1.ts";
import { Watchdog, WriteSlabs } from "../lib/http/mod.ts";
import {
  concat,
  deadline,
  dec,
  delay,
  rawRequest,
  readRequestHead,
  startRawUpstream,
  startRelay,
  waitFor,
  writeAll,
} from "./helpers.ts";

function req(method: string, body: BodySource | null): ExchangeRequest {
  return { method, target: "/v1/x", headers: [["x-a", "1"]], body };
}

function bodyOf(length: number | null): BodySource {
  return new BodySource(new ReadableStream({ start: (c) => c.close() }), length, 0);
}

Deno.test("requestHead frames the body the writer sends, never a header the client sent", () => {
  const text = (r: ExchangeRequest) => dec.decode(requestHead(r, "a:1"));
  assert.equal(text(req("GET", null)), "GET /v1/x HTTP/1.1\r\nhost: a:1\r\nx-a: 1\r\n\r\n");
  assert.equal(
    text(req("POST", null)),
    "POST /v1/x HTTP/1.1\r\nhost: a:1\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n",
  );
  assert.match(text(req("POST", bodyOf(38))), /\r\ncontent-length: 38\r\n\r\n$/);
  assert.match(text(req("PATCH", bodyOf(null))), /\r\ntransfer-encoding: chunked\r\n\r\n$/);
  assert.match(text(req("DELETE", bodyOf(5))), /\r\ncontent-length: 5\r\n\r\n$/);
  assert.doesNotMatch(text(req("DELETE", null)), /content-length/);
});

Deno.test("requestHead refuses a header character above U+00FF instead of masking it", () => {
  const r = { ...req("POST", null), headers: [["x-key", "sk-\u0101"]] as [string, string][] };
  assert.throws(
    () => requestHead(r, "a"),
    (e: unknown) => e instanceof UpstreamError && e.kind === "request",
  );
  // Latin-1 is one byte per character, and the head ends with its blank line, not short of it.
  const latin = requestHead({ ...req("GET", null), headers: [["x-name", "caf\xe9"]] }, "a");
  assert.equal(
    new TextDecoder("latin1").decode(latin),
    "GET /v1/x HTTP/1.1\r\nhost: a\r\nx-name: caf\xe9\r\n\r\n",
  );
  assert.equal(latin.byteLength, 45);
  assert.throws(() => encodeLatin1("\u0141"), RangeError);
  assert.deepEqual([...encodeLatin1("\xe9")], [0xe9]);
});

Deno.test("requestHead writes the bytes of the head as one Latin-1 string would encode", () => {
  // The oracle: the head joined as text, then one byte per character.
  const latin1 = fc.string({ unit: fc.integer({ min: 0x20, max: 0xff }).map(String.fromCharCode) });
  const ref = (r: ExchangeRequest, host: string): number[] => {
    let t = `${r.method} ${r.target} HTTP/1.1\r\nhost: ${host}\r\n`;
    for (const [n, v] of r.headers) t += `${n}: ${v}\r\n`;
    if (r.body !== null) t += `content-length: ${r.body.length}\r\n`;
    else if (!["GET", "HEAD", "DELETE", "OPTIONS", "TRACE"].includes(r.method)) {
      t += "content-length: 0\r\n";
    }
    return [...t + "\r\n"].map((c) => c.charCodeAt(0));
  };
  fc.assert(
    fc.property(
      fc.constantFrom("GET", "POST", "DELETE", "PATCH"),
      latin1,
      fc.array(fc.tuple(fc.stringMatching(/^[a-z_-]{1,12}$/), latin1), { maxLength: 12 }),
      latin1,
      fc.option(fc.nat(1 << 30)),
      (method, target, headers, host, length) => {
        const r: ExchangeRequest = {
          method,
          target,
          headers,
          body: length === null ? null : bodyOf(length),
        };
        assert.deepEqual([...requestHead(r, host)], ref(r, host));
      },
    ),
    { numRuns: 300 },
  );
});

/**
 * A fake A that keeps each request's bytes as they arrived (head, then the body by content-length
 * or up to the last chunk), keyed by the request target, and answers each with "ok".
 */
function byteRecorder() {
  const got = new Map<string, string>();
  const latin1 = new TextDecoder("latin1");
  const up = startRawUpstream(async (conn) => {
    let text = "";
    const chunk = new Uint8Array(65536);
    while (true) {
      let end: number;
      let need = -1;
      while (true) {
        end = text.indexOf("\r\n\r\n");
        if (end >= 0) {
          const head = text.slice(0, end);
          const m = /\r\ncontent-length: (\d+)/.exec(head);
          if (m !== null) need = end + 4 + Number(m[1]);
          else if (/\r\ntransfer-encoding: chunked/.test(head)) {
            const last = text.indexOf("0\r\n\r\n", end + 4);
            // The bodies below hold no "0\r\n\r\n" of their own.
            if (last >= 0 && (last === end + 4 || text.slice(last - 2, last) === "\r\n")) {
              need = last + 5;
            }
          } else need = end + 4;
          if (need >= 0 && text.length >= need) break;
        }
        const n = await conn.read(chunk);
        if (n === null) return;
        text += latin1.decode(chunk.subarray(0, n));
      }
      const request = text.slice(0, need);
      text = text.slice(need);
      got.set(request.split(" ")[1]!, request);
      await writeAll(conn, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }
  });
  return { up, got };
}

/** A request body that hands out `chunks` one by one, with the length stated or chunked (null). */
function chunksOf(chunks: string[], length: number | null): BodySource {
  const bytes = chunks.map((c) => encodeLatin1(c));
  let i = 0;
  return new BodySource(
    { read: () => Promise.resolve(i < bytes.length ? bytes[i++]! : null), cancel() {} },
    length,
    1 << 20,
  );
}

deadline.test("the upstream client sends head and body bytes exactly as framed, in slab memory or not", async () => {
  const { up, got } = byteRecorder();
  const host = `127.0.0.1:${up.port}`;
  const slabs = new WriteSlabs();
  const pool = new Pool(
    { protocol: "http:", hostname: "127.0.0.1", port: up.port, hostHeader: host },
    { connectTimeoutMs: 2000, idleTimeoutMs: 5000, slabs },
  );
  const watchdog = new Watchdog(5000);
  const headers: [string, string][] = [["content-type", "application/json"], ["x-n", "caf\xe9"]];
  const headSize = (method: string, target: string, length: number | null) =>
    requestHead({ method, target, headers, body: chunksOf([], length) }, host).byteLength;
  // Head and first chunk exactly at the slab write limit (16 KiB), and one byte over it.
  const edge = 16 * 1024 - headSize("POST", "/v1/edge", 16000);
  const cases: Array<{ method: string; chunks: string[] | null; chunked?: boolean; hdr?: string }> =
    [
      { method: "GET", chunks: null },
      { method: "POST", chunks: null },
      { method: "POST", chunks: ['{"model":"m","messages":[]}'] },
      { method: "POST", chunks: ["a".repeat(300), "b".repeat(400), "c".repeat(300)] },
      { method: "PATCH", chunks: ["hello", "", "world!"], chunked: true },
      { method: "PATCH", chunks: [], chunked: true },
      { method: "PATCH", chunks: ["x".repeat(20000), "tail"], chunked: true },
      { method: "POST", chunks: ["y".repeat(20000)] },
      { method: "POST", chunks: ["z".repeat(5000)], hdr: "h".repeat(17000) },
      { method: "POST", chunks: ["e".repeat(edge)] },
      { method: "POST", chunks: ["f".repeat(edge + 1)] },
    ];
  const expected = (i: number): string => {
    const c = cases[i]!;
    const length = c.chunks === null || c.chunked ? null : c.chunks.join("").length;
    const h: [string, string][] = c.hdr === undefined ? headers : [...headers, ["x-big", c.hdr]];
    const head = requestHead({
      method: c.method,
      target: `/v1/case${i}`,
      headers: h,
      body: c.chunks === null ? null : chunksOf([], length),
    }, host);
    let body = "";
    if (c.chunked) {
      for (const p of c.chunks!) if (p.length > 0) body += `${p.length.toString(16)}\r\n${p}\r\n`;
      body += "0\r\n\r\n";
    } else if (c.chunks !== null) body = c.chunks.join("");
    return new TextDecoder("latin1").decode(head) + body;
  };
  const send = (i: number) => {
    const c = cases[i]!;
    return exchange(pool, {
      method: c.method,
      target: `/v1/case${i}`,
      headers: c.hdr === undefined ? headers : [...headers, ["x-big", c.hdr]],
      body: c.chunks === null
        ? null
        : chunksOf(c.chunks, c.chunked ? null : c.chunks.join("").length),
    }, { watchdog }).then(async (res) => {
      assert.equal(res.status, 200);
      if (res.body !== null) await res.body.cancel();
    });
  };
  try {
    // One at a time, then all at once on their own connections: no write's bytes are another's.
    for (let i = 0; i < cases.length; i++) await send(i);
    for (let i = 0; i < cases.length; i++) {
      assert.equal(got.get(`/v1/case${i}`), expected(i), `#${i}`);
    }
    got.clear();
    await Promise.all(cases.map((_, i) => send(i)));
    for (let i = 0; i < cases.length; i++) {
      assert.equal(got.get(`/v1/case${i}`), expected(i), `#${i}`);
    }
    assert.ok(slabs.made >= 1, "small heads go out from slab memory");
    // A region goes back once its write completed: 100 requests of ~1.2 KB fit one 64 KiB slab.
    const before = slabs.made;
    for (let i = 0; i < 100; i++) {
      await exchange(pool, {
        method: "POST",
        target: `/v1/seq${i}`,
        headers,
        body: chunksOf(["s".repeat(1000)], 1000),
      }, { watchdog });
    }
    assert.equal(slabs.made, before, "no new slab for sequential requests");
    assert.equal(got.size, cases.length + 100);
  } finally {
    pool.close();
    watchdog.close();
    up.close();
  }
});

deadline.test("a header that is not Latin-1 fails the exchange before a byte reaches A, and the connection stays usable", async () => {
  const { up, got } = byteRecorder();
  const host = `127.0.0.1:${up.port}`;
  const pool = new Pool(
    { protocol: "http:", hostname: "127.0.0.1", port: up.port, hostHeader: host },
    { connectTimeoutMs: 2000, idleTimeoutMs: 5000 },
  );
  const watchdog = new Watchdog(5000);
  const ok = () =>
    exchange(pool, { method: "POST", target: "/v1/ok", headers: [], body: chunksOf(["{}"], 2) }, {
      watchdog,
    });
  try {
    await ok(); // a warm connection for the bad request to take
    for (const headers of [[["x-key", "sk-\u0101"]], [["x-\u0100", "v"]]] as [string, string][][]) {
      await assert.rejects(
        exchange(pool, { method: "POST", target: "/v1/bad", headers, body: chunksOf(["{}"], 2) }, {
          watchdog,
        }),
        (e: unknown) => e instanceof UpstreamError && e.kind === "request",
      );
    }
    await assert.rejects(
      exchange(pool, { method: "GET", target: "/v1/\u0141", headers: [], body: null }, {
        watchdog,
      }),
      (e: unknown) => e instanceof UpstreamError && e.kind === "request",
    );
    const res = await ok();
    assert.equal(res.reused, true, "the connection was not spent on the refused requests");
    assert.deepEqual([...got.keys()], ["/v1/ok"]);
    assert.equal(up.connections, 1);
  } finally {
    pool.close();
    watchdog.close();
    up.close();
  }
});

/** A fake A that records each request (head, and body by content-length) and answers it. */
function recordingUpstream(answer: (head: string, index: number) => string | string[]) {
  const seen: Array<{ head: string; body: string; conn: number }> = [];
  const latin1 = new TextDecoder("latin1");
  const up = startRawUpstream(async (conn, connIndex) => {
    let buf: Uint8Array = new Uint8Array(0);
    const chunk = new Uint8Array(65536);
    const more = async () => {
      const n = await conn.read(chunk);
      if (n === null) return false;
      buf = concat([buf, chunk.subarray(0, n)]);
      return true;
    };
    while (true) {
      let end: number;
      while ((end = latin1.decode(buf).indexOf("\r\n\r\n")) < 0) if (!(await more())) return;
      const head = latin1.decode(buf.subarray(0, end));
      buf = buf.subarray(end + 4);
      const m = /\r\ncontent-length: (\d+)/i.exec(head);
      const length = m === null ? 0 : Number(m[1]);
      while (buf.byteLength < length) if (!(await more())) return;
      seen.push({ head, body: dec.decode(buf.subarray(0, length)), conn: connIndex });
      buf = buf.subarray(length);
      // Parts go out in separate writes, apart, so the relay reads them separately.
      const parts = [answer(head, seen.length - 1)].flat();
      for (let i = 0; i < parts.length; i++) {
        if (i > 0) await delay(30);
        await writeAll(conn, parts[i]!);
      }
    }
  });
  return { up, seen };
}

const OK = (text: string) => `HTTP/1.1 200 OK\r\ncontent-length: ${text.length}\r\n\r\n${text}`;

deadline.test("a POST whose Connection names content-length reaches A with its length and body only (desync 1)", async () => {
  const { up, seen } = recordingUpstream((_h, i) => OK(`a${i}`));
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, UPSTREAM_TIMEOUT_SEC: "5" });
  try {
    const smuggled = "GET /admin/slow HTTP/1.1\r\nHost: up\r\n\r\n";
    for (const connection of ["content-length", "close, Content-Length"]) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.port });
      await writeAll(
        conn,
        `POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nConnection: ${connection}\r\n` +
          `Content-Length: ${smuggled.length}\r\n\r\n${smuggled}`,
      );
      const got = await readRequestHead(conn); // a response head reads the same way
      conn.close();
      assert.match(got?.head ?? "", /^HTTP\/1\.1 200 /, connection);
    }
    // A victim on another socket gets its own answer.
    const victim = await fetch(`${relay.url}/v1/models`);
    assert.equal(await victim.text(), "a2");
    assert.equal(seen.length, 3);
    for (const s of seen.slice(0, 2)) {
      assert.match(s.head, /^POST \/v1\/chat\/completions /);
      assert.match(s.head, new RegExp(`\r\ncontent-length: ${smuggled.length}(\r\n|$)`));
      assert.equal(s.body, smuggled);
    }
    assert.ok(seen.every((s) => !s.head.startsWith("GET /admin")));
  } finally {
    await relay.close();
    up.close();
  }
});

deadline.test("a GET with a body is refused with 400 body_not_allowed and A sees nothing of it (desync 2)", async () => {
  const { up, seen } = recordingUpstream((_h, i) => OK(`a${i}`));
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, UPSTREAM_TIMEOUT_SEC: "5" });
  try {
    for (
      const framing of [
        "Content-Length: 5\r\n\r\nhello",
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      ]
    ) {
      const res = await rawRequest(
        relay.port,
        `GET /v1/models HTTP/1.1\r\nHost: r\r\nConnection: close\r\n${framing}`,
      );
      assert.equal(res.status, 400, framing);
      assert.equal(JSON.parse(dec.decode(res.body)).error.code, "body_not_allowed");
    }
    const res = await rawRequest(
      relay.port,
      "HEAD /v1/models HTTP/1.1\r\nHost: r\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert.equal(res.status, 400);
    // Content-Length: 0 is no body.
    const ok = await rawRequest(
      relay.port,
      "GET /v1/models HTTP/1.1\r\nHost: r\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    assert.equal(ok.status, 200);
    assert.equal(seen.length, 1);
    assert.doesNotMatch(seen[0]!.head, /content-length/i);
  } finally {
    await relay.close();
    up.close();
  }
});

// Deno.serve (hyper) closes such a connection without an answer: only the own server can say why.
deadline.test("malformed chunk framing from a client gets a JSON 400 from the own server, not a silent close", async () => {
  const { up } = recordingUpstream((_h, i) => OK(`a${i}`));
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    UPSTREAM_TIMEOUT_SEC: "5",
    HTTP_SERVER: "relay",
  });
  try {
    const res = await rawRequest(
      relay.port,
      "POST /v1/x HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    );
    assert.equal(res.status, 400);
    assert.equal(JSON.parse(dec.decode(res.body)).error.type, "invalid_request_error");
  } finally {
    await relay.close();
    up.close();
  }
});

/** A fake A answering every request with `raw`, counting connections. */
async function throughRelay(
  raw: string | string[],
  request = "GET /v1/models HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n",
) {
  const { up, seen } = recordingUpstream(() => raw);
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, UPSTREAM_TIMEOUT_SEC: "5" });
  try {
    const first = await rawRequest(relay.port, request);
    // A second request shows whether the first connection to A was kept.
    await rawRequest(relay.port, request).catch(() => null);
    await waitFor(() => seen.length >= 2, 3000, "second request at A");
    return { first, connections: up.connections };
  } finally {
    await relay.close();
    up.close();
  }
}

deadline.test("a 100 or 103 in the same read as the final answer is skipped, not waited on", async () => {
  const started = Date.now();
  const { first } = await throughRelay(
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK("done"),
  );
  assert.equal(first.status, 200);
  assert.equal(dec.decode(first.body), "done");
  assert.ok(Date.now() - started < 4000, "answered before the upstream timeout");
});

deadline.test("transfer-encoding wins over content-length from A, and the length is not passed on", async () => {
  const { first } = await throughRelay([
    "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
    "5\r\nhello\r\n0\r\n\r\n",
  ]);
  assert.equal(dec.decode(first.body), "hello");
  // The relay's server may frame a body it has whole by its real length, never by A's 3.
  assert.ok([undefined, "5"].includes(first.headers.get("content-length")));
});

deadline.test("a 204 from A with a length and stray bytes reaches the client bare, and its connection is dropped", async () => {
  const { first, connections } = await throughRelay(
    "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello",
  );
  assert.equal(first.status, 204);
  assert.equal(first.headers.has("content-length"), false);
  assert.equal(first.body.byteLength, 0);
  assert.equal(connections, 2);
});

deadline.test("an HTTP/1.0 answer's connection to A is never reused, even when it says keep-alive", async () => {
  const { first, connections } = await throughRelay(
    "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
  );
  assert.equal(dec.decode(first.body), "ok");
  await delay(0);
  assert.equal(connections, 2);
});

// Deno.serve (hyper) accepts it; the relay's target checks do not depend on Host either way.
deadline.test("an HTTP/1.1 request without Host gets a 400 from the own server", async () => {
  const { up, seen } = recordingUpstream((_h, i) => OK(`a${i}`));
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    UPSTREAM_TIMEOUT_SEC: "5",
    HTTP_SERVER: "relay",
  });
  try {
    const res = await rawRequest(
      relay.port,
      "GET /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert.equal(res.status, 400);
    assert.equal(seen.length, 0);
  } finally {
    await relay.close();
    up.close();
  }
});

deadline.test("a client's repeated header lines reach A apart and in order through the own server (joined by Deno.serve)", async () => {
  const { up, seen } = recordingUpstream(() => OK("ok"));
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, UPSTREAM_TIMEOUT_SEC: "5" });
  try {
    const got = await rawRequest(
      relay.port,
      "GET /v1/models HTTP/1.1\r\nHost: r\r\nAnthropic-Beta: a\r\nsession_id: s1\r\n" +
        "anthropic-beta: b\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\n",
    );
    assert.match(got.head, /^HTTP\/1\.1 200 /);
    const lines = seen[0]!.head.split("\r\n").slice(1)
      .filter((l) => /^(anthropic-beta|session_id|x-hop|connection):/i.test(l));
    // Deno.serve hands the relay `Headers`, which join a repeated field into one line.
    const own = Deno.env.get("PF_TEST_HTTP_SERVER") !== "deno";
    assert.deepEqual(
      lines,
      own
        ? ["anthropic-beta: a", "session_id: s1", "anthropic-beta: b"]
        : ["anthropic-beta: a, b", "session_id: s1"],
    );
  } finally {
    await relay.close();
    up.close();
  }
});

deadline.test("A's repeated header lines reach the client apart and in A's order, x-request-id added last", async () => {
  const { first } = await throughRelay(
    'HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm="a"\r\nlink: </x>\r\n' +
      'www-authenticate: Basic realm="a"\r\nlink: </y>\r\ncontent-length: 2\r\n\r\nno',
  );
  assert.equal(first.status, 401);
  const lines = first.head.match(/^(www-authenticate|link|x-request-id): .*$/gmi)!;
  assert.deepEqual(lines.slice(0, 4), [
    'www-authenticate: Bearer realm="a"',
    "link: </x>",
    'www-authenticate: Basic realm="a"',
    "link: </y>",
  ]);
  assert.match(lines[4] ?? "", /^x-request-id: \S+$/);
  assert.equal(lines.length, 5);
});
