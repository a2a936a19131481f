/**
 * lib/server/server.ts: our HTTP/1.1 server on Deno.listen. Pure head parsing against tables, everything
 * else over real sockets on 127.0.0.1 with a raw client (so framing, timing and closes are seen
 * exactly as sent) or `fetch`.
 */

import assert from "node:assert/strict";
import {
  type Http1Handler,
  type Http1Server,
  type Http1ServerOptions,
  serveHttp1,
  type ServeInfo,
  upgradeResponse,
} from "../lib/server/server.ts";
import { parseRequestHead, requestUrl } from "../lib/server/request_head.ts";
import { directReadAvailable, internalsFound, readConn } from "../lib/http/deno_internals.ts";
import {
  sentUrl,
  streamOf,
  takeLentBody,
  withDirectBody,
  withFieldLines,
  withWholeBody,
} from "../lib/http/handoff.ts";
import { RelayError } from "../lib/errors.ts";
import { concat, deadline, dec, delay, enc, sha256, spawnCaptured, waitFor } from "./helpers.ts";

// ---- fixtures ----

function start(
  handler: Http1Handler,
  opts: Partial<Http1ServerOptions> = {},
): { server: Http1Server; port: number } {
  const server = serveHttp1({ hostname: "127.0.0.1", port: 0, ...opts }, handler);
  return { server, port: server.addr.port };
}

/** A parsed response as it arrived. */
interface Res {
  status: number;
  head: string;
  headers: Map<string, string>;
  /** De-chunked payload. */
  body: Uint8Array;
  /** The body bytes as framed on the wire. */
  wire: Uint8Array;
}

/** A raw HTTP/1.1 client on one socket, reading responses one at a time. */
class Raw {
  readonly conn: Deno.TcpConn;
  #buf: Uint8Array = new Uint8Array(0);
  #eof = false;

  private constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  static async open(port: number): Promise<Raw> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    return new Raw(conn);
  }

  async send(data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === "string" ? enc.encode(data) : data;
    let off = 0;
    while (off < bytes.length) off += await this.conn.write(bytes.subarray(off));
  }

  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    const chunk = new Uint8Array(65536);
    const n = await this.conn.read(chunk).catch(() => null);
    if (n === null) {
      this.#eof = true;
      return false;
    }
    this.#buf = concat([this.#buf, chunk.subarray(0, n)]);
    return true;
  }

  /** Waits until `n` bytes are buffered (or EOF); returns and consumes them. */
  async take(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n && (await this.#fill()));
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.subarray(out.length);
    return out;
  }

  async #line(): Promise<string> {
    while (true) {
      const i = this.#buf.indexOf(10);
      if (i >= 0) {
        const line = dec.decode(this.#buf.subarray(0, i)).replace(/\r$/, "");
        this.#buf = this.#buf.subarray(i + 1);
        return line;
      }
      if (!(await this.#fill())) throw new Error("connection closed mid-line");
    }
  }

  /** Reads one response (`head: true` for a response to HEAD: no body whatever the headers say). */
  async response(opts: { head?: boolean } = {}): Promise<Res> {
    const lines: string[] = [];
    while (true) {
      const line = await this.#line();
      if (line === "") break;
      lines.push(line);
    }
    const headers = new Map<string, string>();
    for (const l of lines.slice(1)) {
      const i = l.indexOf(":");
      headers.set(l.slice(0, i).toLowerCase(), l.slice(i + 1).trim());
    }
    const status = Number(lines[0]!.split(" ")[1]);
    let body: Uint8Array = new Uint8Array(0);
    let wire: Uint8Array = new Uint8Array(0);
    const noBody = opts.head || status === 204 || status === 304 || status < 200;
    if (noBody) {
      // nothing
    } else if (headers.get("transfer-encoding") === "chunked") {
      const pieces: Uint8Array[] = [];
      const wires: Uint8Array[] = [];
      while (true) {
        const sizeLine = await this.#line();
        wires.push(enc.encode(sizeLine + "\r\n"));
        const size = parseInt(sizeLine, 16);
        if (size === 0) {
          assert.equal(await this.#line(), "");
          wires.push(enc.encode("\r\n"));
          break;
        }
        const data = await this.take(size);
        pieces.push(data);
        wires.push(data, await this.take(2));
      }
      body = concat(pieces);
      wire = concat(wires);
    } else if (headers.has("content-length")) {
      body = wire = await this.take(Number(headers.get("content-length")));
    } else {
      body = wire = await this.rest();
    }
    return { status, head: lines.join("\r\n"), headers, body, wire };
  }

  /** Everything until the server closes. */
  async rest(): Promise<Uint8Array> {
    while (await this.#fill());
    const out = this.#buf;
    this.#buf = new Uint8Array(0);
    return out;
  }

  /** Resolves true when the server closes the connection within `ms`. */
  async closedWithin(ms: number): Promise<boolean> {
    const timer = setTimeout(() => this.close(), ms);
    try {
      while (await this.#fill());
      return true;
    } finally {
      clearTimeout(timer);
    }
  }

  get ended(): boolean {
    return this.#eof;
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }
}

const get = (path = "/", extra = "") => `GET ${path} HTTP/1.1\r\nhost: t\r\n${extra}\r\n`;

function json(res: Res): { error: { message: string; type: string; code: string } } {
  return JSON.parse(dec.decode(res.body));
}

function randomBytes(n: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(n);
  for (let off = 0; off < n; off += 65536) {
    crypto.getRandomValues(out.subarray(off, Math.min(n, off + 65536)));
  }
  return out;
}

// ---- pure ----

Deno.test("parseRequestHead accepts the request forms clients send", () => {
  const h = parseRequestHead(
    "POST /v1/x?y=1 HTTP/1.1\r\nHost: a:1\r\nsession_id:  abc \t\r\nContent-Length: 5\r\n",
  );
  assert.equal(h.method, "POST");
  assert.equal(h.target, "/v1/x?y=1");
  assert.equal(h.http10, false);
  assert.equal(h.host, "a:1");
  assert.equal(h.contentLength, 5);
  assert.deepEqual(h.headers[1], ["session_id", "abc"]);
  assert.equal(h.keepAlive, true);
  // Bare LF line ends (hyper accepts them), HTTP/1.0 keep-alive, chunked, expect, upgrade.
  const g = parseRequestHead("GET / HTTP/1.0\nConnection: Keep-Alive\n");
  assert.equal(g.http10, true);
  assert.equal(g.keepAlive, true);
  assert.equal(parseRequestHead("GET / HTTP/1.0\r\n").keepAlive, false);
  assert.equal(
    parseRequestHead("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n").keepAlive,
    false,
  );
  const c = parseRequestHead(
    "PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip,\tchunked \r\nExpect: 100-Continue\r\nUpgrade: x\r\n",
  );
  assert.equal(c.chunked, true);
  assert.equal(c.expectContinue, true);
  assert.equal(c.upgrade, true);
  assert.equal(
    parseRequestHead("POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 3\r\ncontent-length: 3\r\n")
      .contentLength,
    3,
  );
  assert.deepEqual(parseRequestHead("GET / HTTP/1.1\r\nx-latin: \xe9\r\nHost: a\r\n").headers[0], [
    "x-latin",
    "\xe9",
  ]);
});

Deno.test("parseRequestHead refuses malformed and ambiguous heads with 400 bad_request", () => {
  const bad = [
    "GARBAGE",
    "GET / HTTP/2.0",
    "GET  / HTTP/1.1",
    "GET / HTTP/1.1 x",
    "G(T / HTTP/1.1",
    "GET / HTTP/1.1\r\n folded: x",
    "GET / HTTP/1.1\r\nx-a : 1",
    "GET / HTTP/1.1\r\nno colon",
    "GET / HTTP/1.1\r\n: empty name",
    "GET / HTTP/1.1\r\nx-a: a\x00b",
    "GET / HTTP/1.1\r\nx-a: a\rb",
    "GET / HTTP/1.1\r\nx-a: a\x7fb",
    "GET / HTTP/1.1\r\nhost: a\r\nhost: b",
    "POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked",
    "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4",
    "POST / HTTP/1.1\r\ncontent-length: 3, 3",
    "POST / HTTP/1.1\r\ncontent-length: -1",
    "POST / HTTP/1.1\r\ntransfer-encoding: gzip",
    "POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip",
    "POST / HTTP/1.0\r\ntransfer-encoding: chunked",
    // RFC 9112 §3.2: HTTP/1.1 without Host.
    "GET / HTTP/1.1\r\nx-a: 1",
    // Only space and tab are whitespace around a coding, not NBSP or other Unicode spaces.
    "POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\xa0",
    "POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: \xa0chunked",
  ];
  for (const text of bad) {
    assert.throws(
      () => parseRequestHead(text),
      (e: unknown) =>
        e instanceof RelayError && e.status === 400 && String(e.code) === "bad_request",
      JSON.stringify(text),
    );
  }
});

Deno.test("requestUrl builds http://host+target and refuses hosts that would change the URL", () => {
  const head = (target: string, host: string | null) => ({
    ...parseRequestHead(`GET ${target} HTTP/1.1\r\nHost: h\r\n`),
    host,
  });
  assert.equal(requestUrl(head("/a?b", "x:1"), "fb:9"), "http://x:1/a?b");
  assert.equal(requestUrl(head("/a", null), "127.0.0.1:9"), "http://127.0.0.1:9/a");
  assert.equal(requestUrl(head("/a", ""), "[::1]:9"), "http://[::1]:9/a");
  assert.equal(requestUrl(head("http://evil/p?q", "x"), "fb"), "http://x/p?q");
  assert.equal(requestUrl(head("HTTPS://evil", "x"), "fb"), "http://x/");
  assert.equal(requestUrl(head("http://evil?q", "x"), "fb"), "http://x/?q");
  assert.equal(requestUrl(head("*", "x"), "fb"), "http://x/*");
  assert.equal(requestUrl(head("/v1/../x", "[::1]:80"), "fb"), "http://[::1]:80/v1/../x");
  for (const host of ["a/b", "u@x", "a?b", "a#b", "a\\b", "a b", "\xe9"]) {
    assert.throws(() => requestUrl(head("/", host), "fb"), RelayError, host);
  }
  assert.throws(() => requestUrl(head("example.com:443", "x"), "fb"), RelayError);
});

// ---- bodies ----

deadline.test("a 5 MB binary body round-trips byte for byte, with content-length and chunked", async () => {
  const seen: Array<string | null> = [];
  const { server, port } = start((req) => {
    seen.push(req.headers.get("transfer-encoding") ?? req.headers.get("content-length"));
    return new Response(req.body);
  });
  try {
    const data = randomBytes(5 * 1024 * 1024);
    const want = await sha256(data);
    const a = await fetch(`http://127.0.0.1:${port}/echo`, { method: "POST", body: data });
    assert.equal(a.headers.get("transfer-encoding"), "chunked");
    assert.equal(await sha256(await a.bytes()), want);
    // Chunked upload, in uneven pieces.
    let off = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        if (off >= data.length) return c.close();
        const n = Math.min(data.length - off, 1 + Math.floor(Math.random() * 200_000));
        c.enqueue(data.slice(off, off + n));
        off += n;
      },
    });
    const b = await fetch(`http://127.0.0.1:${port}/echo`, {
      method: "POST",
      body: stream,
      duplex: "half",
    } as RequestInit);
    assert.equal(await sha256(await b.bytes()), want);
    assert.deepEqual(seen, [String(data.length), "chunked"]);
  } finally {
    await server.shutdown();
  }
});

deadline.test("GET without a body gets req.body null; POST with a small body reads it whole", async () => {
  const { server, port } = start(async (req) => {
    if (req.method === "GET") return Response.json({ bodyNull: req.body === null });
    return new Response(`got ${await req.text()}`);
  });
  const c = await Raw.open(port);
  try {
    await c.send(get());
    assert.deepEqual(JSON.parse(dec.decode((await c.response()).body)), { bodyNull: true });
    await c.send("POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello");
    const r = await c.response();
    assert.equal(dec.decode(r.body), "got hello");
    assert.equal(r.headers.get("content-length"), "9");
    await c.send(
      "POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n" +
        "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\ntrailer: x\r\n\r\n",
    );
    assert.equal(dec.decode((await c.response()).body), "got abcde");
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("the session_id header (underscore) reaches the handler", async () => {
  const { server, port } = start((req) => new Response(req.headers.get("session_id") ?? "none"));
  const c = await Raw.open(port);
  try {
    await c.send(get("/", "session_id: s-123\r\n"));
    assert.equal(dec.decode((await c.response()).body), "s-123");
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("sentUrl(req) keeps the target as sent (no dot-segment or escape normalisation)", async () => {
  const { server, port } = start((req) => new Response(sentUrl(req)));
  const c = await Raw.open(port);
  try {
    await c.send(get("/v1/../x/%2e%2e/a?b=<q>", "").replace("host: t", "host: Example.COM:80"));
    assert.equal(
      dec.decode((await c.response()).body),
      "http://Example.COM:80/v1/../x/%2e%2e/a?b=<q>",
    );
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("a request body the handler leaves unread is drained and the connection kept", async () => {
  const { server, port } = start(() => new Response("early"));
  const c = await Raw.open(port);
  try {
    // Over 256 KiB, so streamed to the handler (a smaller one is read before the handler runs).
    await c.send("POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 300000\r\n\r\n");
    const r = await c.response();
    assert.equal(dec.decode(r.body), "early");
    assert.equal(r.headers.get("connection"), undefined);
    await c.send("x".repeat(300000));
    await c.send(get());
    assert.equal((await c.response()).status, 200);
    // Over the 1 MiB drain limit: answered with connection: close, then closed.
    await c.send("POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5000000\r\n\r\n");
    const big = await c.response();
    assert.equal(big.headers.get("connection"), "close");
    assert.ok(await c.closedWithin(2000));
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("a small body in several writes reaches the handler whole, as bytes, before it runs", async () => {
  const seen: { len: number; sha: string }[] = [];
  let calls = 0;
  const { server, port } = start(async (req) => {
    calls++;
    const bytes = await req.bytes();
    seen.push({ len: bytes.byteLength, sha: await sha256(bytes) });
    return new Response(String(bytes.byteLength));
  });
  const c = await Raw.open(port);
  try {
    // Over 64 KiB: read into a 64 KiB buffer first, then into one of the body's size.
    const body = new Uint8Array(200_000).map((_, i) => (i * 7) & 0xff);
    await c.send("POST /a HTTP/1.1\r\nhost: t\r\ncontent-length: 200000\r\n\r\n");
    await c.send(body.subarray(0, 10));
    await delay(30);
    await c.send(body.subarray(10, 30_000));
    await delay(30);
    assert.equal(calls, 0, "the handler ran before its body was in");
    // The body's end and the next request in one write: each gets its own bytes.
    await c.send(concat([body.subarray(30_000), enc.encode(get("/next"))]));
    assert.equal(dec.decode((await c.response()).body), "200000");
    assert.equal((await c.response()).status, 200);
    assert.deepEqual(seen[0], { len: 200_000, sha: await sha256(body) });
    assert.equal(seen[1]!.len, 0);
    assert.equal(server.connections, 1);
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("a body over 32 KiB read whole reaches the handler by the handoff, its stream holding the same bytes", async () => {
  const got: { taken: number | null; again: Uint8Array | null }[] = [];
  const { server, port } = start((req) => {
    const taken = takeLentBody(req)?.bytes ?? null;
    got.push({ taken: taken?.byteLength ?? null, again: takeLentBody(req)?.bytes ?? null });
    return new Response(taken === null ? req.body : taken.slice());
  });
  try {
    for (const size of [100, 40_000]) {
      const body = new Uint8Array(size).map((_, i) => i & 0xff);
      const res = await fetch(`http://127.0.0.1:${port}/`, { method: "POST", body });
      assert.equal(await sha256(new Uint8Array(await res.arrayBuffer())), await sha256(body));
    }
    // 100 bytes: given to the Request itself; 40,000: by the handoff, once.
    assert.deepEqual(got, [{ taken: null, again: null }, { taken: 40_000, again: null }]);
    // Once the stream is read, the handoff gives nothing: one of the two, never both.
    const req = new Request("http://x/", {
      method: "POST",
      body: streamOf(enc.encode("abc")),
      // @ts-ignore: Deno's Request takes duplex for streamed bodies
      duplex: "half",
    });
    withWholeBody(req, enc.encode("abc"));
    assert.equal(await req.text(), "abc");
    assert.equal(takeLentBody(req), null);
  } finally {
    await server.shutdown();
  }
});

deadline.test("a small body that stops arriving gets 408 body_timeout after bodyTimeoutMs; the handler never runs", async () => {
  let handled = 0;
  const drops: string[] = [];
  const { server, port } = start(() => {
    handled++;
    return new Response("ok");
  }, { bodyTimeoutMs: 600, onDrop: (r) => drops.push(r) });
  const c = await Raw.open(port);
  const quitter = await Raw.open(port);
  try {
    const t0 = performance.now();
    await c.send("POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5000\r\n\r\n" + "x".repeat(100));
    // Bytes that keep coming reset the deadline: 4 x 100 ms, then 600 ms of silence. Without the
    // reset it would expire about 600 ms after the start; a slow machine only makes it later.
    for (let i = 0; i < 4; i++) {
      await delay(100);
      await c.send("y");
    }
    const r = await c.response();
    const ms = performance.now() - t0;
    assert.equal(r.status, 408);
    assert.equal(json(r).error.code, "body_timeout");
    assert.equal(r.headers.get("connection"), "close");
    assert.ok(ms >= 900 && ms < 4000, `answered after ${ms.toFixed(0)} ms`);
    assert.ok(await c.closedWithin(1000));
    // A client that leaves mid-body: closed without an answer, nothing handled.
    await quitter.send("PUT / HTTP/1.1\r\nhost: t\r\ncontent-length: 50\r\n\r\nabc");
    await delay(50);
    await quitter.conn.closeWrite();
    assert.ok(await quitter.closedWithin(1000));
    assert.equal((await quitter.rest()).length, 0);
    await waitFor(() => server.connections === 0, 1000, "connections closed");
    assert.equal(handled, 0);
    assert.deepEqual(drops, ["body_timeout"]);
  } finally {
    c.close();
    quitter.close();
    await server.shutdown();
  }
});

deadline.test("a streamed body of announced length reaches a handler that keeps every chunk, intact, and the next request its own bytes", async () => {
  // Over 256 KiB, so streamed: read into buffers of the body's own that grow to 1 MiB. A handler
  // that keeps the chunks unread (as the upstream client does, for a resend) must find them
  // unchanged at the end: a buffer reused for a later read would overwrite them.
  const size = 2_500_000;
  const body = new Uint8Array(size).map((_, i) => (i * 13 + (i >> 16)) & 0xff);
  const kept: Uint8Array[] = [];
  const paths: string[] = [];
  const { server, port } = start(async (req) => {
    paths.push(new URL(req.url).pathname);
    if (req.body === null) return new Response("none");
    const reader = req.body.getReader();
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      kept.push(value);
    }
    return new Response("kept");
  });
  const c = await Raw.open(port);
  try {
    await c.send(`POST /big HTTP/1.1\r\nhost: t\r\ncontent-length: ${size}\r\n\r\n`);
    // Pieces of uneven sizes, with pauses, so that reads end inside each buffer.
    let off = 0;
    for (const piece of [1, 70_000, 5, 300_000, 999_999]) {
      await c.send(body.subarray(off, off + piece));
      off += piece;
      await delay(5);
    }
    // The body's end and the next request in one write.
    await c.send(concat([body.subarray(off), enc.encode(get("/next"))]));
    assert.equal(dec.decode((await c.response()).body), "kept");
    assert.equal(dec.decode((await c.response()).body), "none");
    assert.deepEqual(paths, ["/big", "/next"]);
    assert.equal(await sha256(concat(kept)), await sha256(body));
    assert.equal(server.connections, 1);
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("a response sent while the handler waits on its streamed body drains the body, then serves the next request", async () => {
  // The handler's read is in flight (no body byte sent yet) when its answer goes out: the drain
  // takes over from that read and the next request on the socket still parses.
  const { server, port } = start((req) => {
    if (req.method === "POST") {
      req.body!.getReader().read().catch(() => {});
      return new Response("early");
    }
    return new Response("next");
  });
  const c = await Raw.open(port);
  try {
    await c.send("POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 400000\r\n\r\n");
    assert.equal(dec.decode((await c.response()).body), "early");
    await c.send(concat([new Uint8Array(400_000).fill(120), enc.encode(get("/n"))]));
    assert.equal(dec.decode((await c.response()).body), "next");
    assert.equal(server.connections, 1);
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("a GET announcing a body it has not sent is handled at once (not waited for)", async () => {
  const { server, port } = start(() => new Response("refused early"));
  const c = await Raw.open(port);
  try {
    await c.send("GET / HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n");
    assert.equal(dec.decode((await c.response()).body), "refused early");
  } finally {
    c.close();
    await server.shutdown();
  }
});

// ---- connections ----

deadline.test("keep-alive: three requests on one socket, pipelined requests answered in order", async () => {
  const ports = new Set<number>();
  const { server, port } = start(async (req, info) => {
    ports.add(info.remoteAddr.port);
    const n = new URL(req.url).pathname.slice(1);
    if (n === "slow") await delay(50);
    return new Response(`r${n}`);
  });
  const c = await Raw.open(port);
  try {
    for (const n of [1, 2, 3]) {
      await c.send(get(`/${n}`));
      assert.equal(dec.decode((await c.response()).body), `r${n}`);
    }
    assert.equal(ports.size, 1);
    assert.equal(server.connections, 1);
    // Pipelined, the first one slow: answers still come in request order.
    await c.send(
      get("/slow") + get("/4") + "POST /5 HTTP/1.1\r\nHost: x\r\ncontent-length: 2\r\n\r\nhi" +
        get("/6"),
    );
    for (const want of ["rslow", "r4", "r5", "r6"]) {
      assert.equal(dec.decode((await c.response()).body), want);
    }
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("keep-alive: heads and bodies past the connection's small read buffer, whole, split, pipelined and during a stream", async () => {
  // The connection reads into a 1 KiB buffer of its own and moves longer heads to a pooled one;
  // each size and arrival pattern here crosses that boundary.
  const { server, port } = start(async (req) => {
    const url = new URL(req.url);
    const body = new Uint8Array(await req.arrayBuffer());
    const info = `${url.pathname} pad=${req.headers.get("x-pad")?.length ?? 0} body=${
      body.length > 0 ? await sha256(body) : "-"
    }`;
    if (url.pathname === "/stream") {
      let n = 0;
      return new Response(
        new ReadableStream<Uint8Array>({
          async pull(ctrl) {
            if (n++ < 4) {
              await delay(30);
              ctrl.enqueue(enc.encode(`e${n};`));
            } else ctrl.close();
          },
        }, { highWaterMark: 0 }),
      );
    }
    return new Response(info);
  });
  const request = (path: string, pad: number, body = new Uint8Array(0)): Uint8Array =>
    concat([
      enc.encode(
        `${body.length > 0 ? "POST" : "GET"} ${path} HTTP/1.1\r\nhost: t\r\nx-pad: ${
          "p".repeat(pad)
        }\r\ncontent-length: ${body.length}\r\n\r\n`,
      ),
      body,
    ]);
  const expect = async (path: string, pad: number, body = new Uint8Array(0)) =>
    `${path} pad=${pad} body=${body.length > 0 ? await sha256(body) : "-"}`;
  const c = await Raw.open(port);
  try {
    for (const [pad, size] of [[900, 0], [1000, 100], [3000, 0], [100, 3000], [5000, 20000]]) {
      const body = randomBytes(size!);
      // Whole, then split inside the head.
      await c.send(request("/a", pad!, body));
      assert.equal(dec.decode((await c.response()).body), await expect("/a", pad!, body));
      const bytes = request("/b", pad!, body);
      await c.send(bytes.subarray(0, 700));
      await delay(10);
      await c.send(bytes.subarray(700));
      assert.equal(dec.decode((await c.response()).body), await expect("/b", pad!, body));
    }
    // Pipelined: three long heads in one write.
    const body = randomBytes(1500);
    await c.send(concat([request("/c", 1200), request("/d", 2500, body), request("/e", 10)]));
    for (const [p, pad, b] of [["/c", 1200], ["/d", 2500, body], ["/e", 10]] as const) {
      assert.equal(dec.decode((await c.response()).body), await expect(p, pad, b));
    }
    // A long head and a short one in one write: the short one moves to the small buffer.
    await c.send(concat([request("/g", 1500), request("/h", 10)]));
    assert.equal(dec.decode((await c.response()).body), await expect("/g", 1500));
    assert.equal(dec.decode((await c.response()).body), await expect("/h", 10));
    // A long head arriving while a response streams waits for it, then is read in full.
    await c.send(request("/stream", 10));
    await delay(40);
    await c.send(request("/f", 4000, body));
    assert.equal(dec.decode((await c.response()).body), "e1;e2;e3;e4;");
    assert.equal(dec.decode((await c.response()).body), await expect("/f", 4000, body));
    assert.equal(server.connections, 1);
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("HEAD gets headers without a body; 204 gets neither body nor content-length", async () => {
  const { server, port } = start((req) => {
    if (new URL(req.url).pathname === "/204") return new Response(null, { status: 204 });
    return new Response("hello", { headers: { "x-a": "1" } });
  });
  const c = await Raw.open(port);
  try {
    await c.send(`HEAD / HTTP/1.1\r\nhost: t\r\n\r\n`);
    const h = await c.response({ head: true });
    assert.equal(h.status, 200);
    assert.equal(h.headers.get("content-length"), "5");
    assert.equal(h.headers.get("x-a"), "1");
    await c.send(get("/204"));
    const n = await c.response();
    assert.equal(n.status, 204);
    assert.match(n.head, /^HTTP\/1\.1 204 No Content\r\n/);
    assert.equal(n.headers.get("content-length"), undefined);
    assert.ok(n.headers.get("date"));
    // Had the HEAD response carried a body, this would parse it as a status line.
    await c.send(get("/"));
    assert.equal(dec.decode((await c.response()).body), "hello");
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("fetch as a client works, and reuses one kept-alive connection", async () => {
  const ports = new Set<number>();
  const { server, port } = start(async (req, info) => {
    ports.add(info.remoteAddr.port);
    return Response.json({ method: req.method, body: req.body ? await req.text() : null });
  });
  try {
    for (let i = 0; i < 5; i++) {
      const r = await fetch(`http://127.0.0.1:${port}/x`, { method: "POST", body: `b${i}` });
      assert.deepEqual(await r.json(), { method: "POST", body: `b${i}` });
    }
    const g = await fetch(`http://127.0.0.1:${port}/x`);
    assert.deepEqual(await g.json(), { method: "GET", body: null });
    assert.equal(ports.size, 1, "fetch opened more than one connection");
  } finally {
    await server.shutdown();
  }
});

deadline.test("HTTP/1.0: a streamed body is close-delimited; keep-alive only when asked", async () => {
  const { server, port } = start(() =>
    new Response(
      new ReadableStream({
        async pull(c) {
          await delay(5);
          c.enqueue(enc.encode("ab"));
          c.close();
        },
      }),
    )
  );
  try {
    const a = await Raw.open(port);
    await a.send("GET / HTTP/1.0\r\n\r\n");
    const r = await a.response();
    assert.match(r.head, /^HTTP\/1\.0 200 OK/);
    assert.equal(r.headers.get("transfer-encoding"), undefined);
    assert.equal(dec.decode(r.body), "ab");
    a.close();
    const s = start(() => new Response("static"));
    const b = await Raw.open(s.port);
    try {
      await b.send("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
      const k = await b.response();
      assert.equal(k.headers.get("connection"), "keep-alive");
      assert.equal(k.headers.get("content-length"), "6");
      await b.send("GET / HTTP/1.0\r\n\r\n");
      assert.equal(dec.decode((await b.response()).body), "static");
      assert.ok(await b.closedWithin(1000), "HTTP/1.0 without keep-alive stayed open");
    } finally {
      b.close();
      await s.server.shutdown();
    }
  } finally {
    await server.shutdown();
  }
});

deadline.test("header bytes above 0x7f arrive as Latin-1 chars; a response's field lines go out as handed over", async () => {
  const { server, port } = start((req) => {
    const url = new URL(req.url);
    const v = req.headers.get("x-a") ?? "";
    const lines: [string, string][] = [
      ["x-codes", [...v].map((c) => c.charCodeAt(0)).join(",")],
      ["www-authenticate", 'Bearer realm="r"'],
      ["set-cookie", "a=1"],
      ["www-authenticate", 'Basic realm="r"'],
      ["set-cookie", "b=2"],
    ];
    const res = new Response("ok", { headers: lines });
    // Handed over (as the pipeline does for A's answers): the lines as listed, repeated fields
    // apart, in their order. Otherwise Headers iteration: sorted, repeated fields joined (but
    // set-cookie, which iteration keeps apart).
    return url.pathname === "/lines" ? withFieldLines(res, lines) : res;
  });
  const c = await Raw.open(port);
  try {
    for (const path of ["/lines", "/plain"]) {
      await c.send(
        concat([
          enc.encode(`GET ${path} HTTP/1.1\r\nhost: t\r\nx-a: `),
          new Uint8Array([0xe9, 0x80]),
          enc.encode("\r\n\r\n"),
        ]),
      );
      const r = await c.response();
      assert.equal(r.headers.get("x-codes"), "233,128");
      assert.equal(r.head.match(/^set-cookie: /gm)?.length, 2);
      const fields = r.head.match(/^(x-codes|www-authenticate|set-cookie): .*$/gm);
      if (path === "/lines") {
        assert.deepEqual(fields, [
          "x-codes: 233,128",
          'www-authenticate: Bearer realm="r"',
          "set-cookie: a=1",
          'www-authenticate: Basic realm="r"',
          "set-cookie: b=2",
        ]);
      } else {
        assert.deepEqual(fields, [
          "set-cookie: a=1",
          "set-cookie: b=2",
          'www-authenticate: Bearer realm="r", Basic realm="r"',
          "x-codes: 233,128",
        ]);
      }
    }
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("a handler that throws gets the JSON 500, a RelayError its own status, onError its answer", async () => {
  const handler: Http1Handler = (req) => {
    const p = new URL(req.url).pathname;
    if (p === "/relay") throw new RelayError(429, "rate_limited", "slow down");
    if (p === "/async") return Promise.reject(new Error("secret internal detail"));
    throw new Error("secret internal detail");
  };
  const a = start(handler);
  const b = start(handler, { onError: () => new Response("custom", { status: 502 }) });
  const c = await Raw.open(a.port);
  const d = await Raw.open(b.port);
  try {
    for (const path of ["/sync", "/async"]) {
      await c.send(get(path));
      const r = await c.response();
      assert.equal(r.status, 500);
      assert.equal(json(r).error.code, "internal_error");
      assert.ok(!dec.decode(r.body).includes("secret"));
    }
    await c.send(get("/relay"));
    const limited = await c.response();
    assert.equal(limited.status, 429);
    assert.equal(json(limited).error.code, "rate_limited");
    await d.send(get("/sync"));
    const custom = await d.response();
    assert.equal(custom.status, 502);
    assert.equal(dec.decode(custom.body), "custom");
  } finally {
    c.close();
    d.close();
    await a.server.shutdown();
    await b.server.shutdown();
  }
});

// ---- streaming and aborts ----

deadline.test("SSE: each chunk reaches the client within 50 ms of being enqueued", async () => {
  let ctrl!: ReadableStreamDefaultController<Uint8Array>;
  const { server, port } = start(() =>
    new Response(new ReadableStream<Uint8Array>({ start: (c) => void (ctrl = c) }), {
      headers: { "content-type": "text/event-stream" },
    })
  );
  try {
    const res = await fetch(`http://127.0.0.1:${port}/sse`);
    assert.equal(res.headers.get("transfer-encoding"), "chunked");
    const reader = res.body!.getReader();
    for (let i = 0; i < 5; i++) {
      await delay(60);
      const t0 = performance.now();
      ctrl.enqueue(enc.encode(`data: ${i}\n\n`));
      const { value } = await reader.read();
      const ms = performance.now() - t0;
      assert.equal(dec.decode(value), `data: ${i}\n\n`);
      // Normal is under 1 ms; a buffering server would not deliver at all (the next chunk is
      // only enqueued after this read).
      assert.ok(ms < 500, `chunk ${i} took ${ms.toFixed(1)} ms`);
    }
    ctrl.close();
    assert.ok((await reader.read()).done);
  } finally {
    await server.shutdown();
  }
});

deadline.test("a body stream that errors mid-way ends the response without the last chunk", async () => {
  const { server, port } = start(() =>
    new Response(
      new ReadableStream({
        async start(c) {
          c.enqueue(enc.encode("partial"));
          await delay(20);
          c.error(new Error("upstream broke"));
        },
      }),
    )
  );
  const c = await Raw.open(port);
  try {
    await c.send(get());
    const all = dec.decode(await c.rest());
    assert.match(all, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(all, /transfer-encoding: chunked\r\n/);
    assert.ok(all.endsWith("7\r\npartial\r\n"), JSON.stringify(all));
    assert.ok(!all.includes("0\r\n\r\n"));
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("a client that disconnects while the handler waits aborts req.signal within 1 s", async () => {
  let aborted = 0;
  let started = 0;
  let cancelled = false;
  const completed: string[] = [];
  const { server, port } = start((req, info) => {
    started = performance.now();
    info.completed.then(() => completed.push("done"));
    return new Promise((resolve) => {
      req.signal.addEventListener("abort", () => {
        aborted = performance.now();
        resolve(new Response("too late"));
      });
    });
  });
  const s = start(() =>
    new Response(
      new ReadableStream({
        start: (c) => c.enqueue(enc.encode("data: 1\n\n")),
        cancel: () => void (cancelled = true),
      }),
    )
  );
  try {
    const c = await Raw.open(port);
    await c.send(get());
    await waitFor(() => started > 0, 2000, "handler start");
    const closedAt = performance.now();
    c.close();
    await waitFor(() => aborted > 0, 1000, "req.signal abort");
    assert.ok(aborted - closedAt < 1000);
    await waitFor(() => completed.length === 1, 1000, "info.completed");
    await waitFor(() => server.connections === 0, 1000, "connection gone");
    // While streaming: the response body is cancelled (the relay then stops reading upstream).
    const d = await Raw.open(s.port);
    await d.send(get());
    await d.take(20);
    d.close();
    await waitFor(() => cancelled, 1000, "body cancel");
  } finally {
    await server.shutdown();
    await s.server.shutdown();
  }
});

deadline.test("a client that leaves mid-upload fails the body read and aborts req.signal", async () => {
  let readError = "";
  let aborted = false;
  let entered = false;
  const { server, port } = start(async (req) => {
    entered = true;
    req.signal.addEventListener("abort", () => (aborted = true));
    try {
      await req.arrayBuffer();
    } catch (err) {
      readError = String(err);
    }
    return new Response("unreachable");
  });
  const c = await Raw.open(port);
  try {
    // Over 256 KiB: streamed, so the handler runs before the body is in.
    await c.send(
      "POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 1000000\r\n\r\n" + "x".repeat(1000),
    );
    await waitFor(() => entered, 3000, "the handler");
    c.close();
    await waitFor(() => readError !== "" && aborted, 1000, "body error and abort");
    assert.match(readError, /closed the connection/);
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("req.signal does not abort after a complete response, even when the client then leaves", async () => {
  const signals: AbortSignal[] = [];
  const { server, port } = start(async (req) => {
    signals.push(req.signal);
    return new Response(req.method === "POST" ? await req.text() : "ok");
  });
  try {
    const c = await Raw.open(port);
    await c.send(get());
    await c.response();
    await c.send("POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nhi");
    await c.response();
    c.close();
    const f = await fetch(`http://127.0.0.1:${port}/`);
    await f.text();
    await waitFor(() => server.connections <= 1, 1000, "close seen");
    await delay(100);
    assert.equal(signals.length, 3);
    assert.deepEqual(signals.map((s) => s.aborted), [false, false, false]);
  } finally {
    await server.shutdown();
  }
});

// ---- abusive clients ----

deadline.test("slowloris (a header byte every 200 ms) is cut off after headerTimeoutMs with 408", async () => {
  const { server, port } = start(() => new Response("never"), { headerTimeoutMs: 500 });
  const c = await Raw.open(port);
  const silent = await Raw.open(port);
  try {
    const t0 = performance.now();
    const text = get("/", "x-a: " + "b".repeat(50) + "\r\n");
    const dripping = (async () => {
      for (const ch of text) {
        if (c.ended) return;
        await c.send(ch).catch(() => {});
        await delay(200);
      }
    })();
    const r = await c.response();
    const ms = performance.now() - t0;
    assert.equal(r.status, 408);
    assert.equal(json(r).error.code, "request_header_timeout");
    assert.equal(r.headers.get("connection"), "close");
    assert.ok(ms >= 450 && ms < 1500, `closed after ${ms.toFixed(0)} ms`);
    assert.ok(await c.closedWithin(1000));
    // A socket that never sends a byte is closed without an answer.
    assert.ok(await silent.closedWithin(1500));
    assert.equal((await silent.rest()).length, 0);
    await dripping;
  } finally {
    c.close();
    silent.close();
    await server.shutdown();
  }
});

deadline.test("an idle kept-alive connection is closed after idleTimeoutMs", async () => {
  const { server, port } = start(() => new Response("ok"), { idleTimeoutMs: 300 });
  const c = await Raw.open(port);
  try {
    await c.send(get());
    await c.response();
    const t0 = performance.now();
    assert.ok(await c.closedWithin(2000));
    const ms = performance.now() - t0;
    assert.ok(ms >= 250 && ms < 1500, `closed after ${ms.toFixed(0)} ms`);
    await waitFor(() => server.connections === 0, 1000, "count");
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("maxConnections=2: a third socket gets 503 and is closed while the first two work", async () => {
  const { server, port } = start(() => new Response("ok"), { maxConnections: 2 });
  const a = await Raw.open(port);
  const b = await Raw.open(port);
  try {
    await a.send(get());
    await b.send(get());
    assert.equal((await a.response()).status, 200);
    assert.equal((await b.response()).status, 200);
    const c = await Raw.open(port);
    await c.send(get());
    const r = await c.response();
    assert.equal(r.status, 503);
    assert.equal(r.headers.get("connection"), "close");
    assert.equal(r.headers.get("retry-after"), "1");
    assert.equal(json(r).error.code, "overloaded");
    assert.ok(await c.closedWithin(2000));
    c.close();
    await a.send(get());
    await b.send(get());
    assert.equal((await a.response()).status, 200);
    assert.equal((await b.response()).status, 200);
    assert.equal(server.connections, 2);
    // A slot freed is a slot for the next client.
    a.close();
    await waitFor(() => server.connections === 1, 1000, "slot freed");
    const d = await Raw.open(port);
    await d.send(get());
    assert.equal((await d.response()).status, 200);
    d.close();
  } finally {
    a.close();
    b.close();
    await server.shutdown();
  }
});

deadline.test("a request head over 64 KiB gets 431", async () => {
  const { server, port } = start(() => new Response("ok"));
  const c = await Raw.open(port);
  try {
    const big = Array.from({ length: 70 }, (_, i) => `x-h${i}: ${"v".repeat(1000)}\r\n`).join("");
    await c.send(get("/", big)).catch(() => {});
    const r = await c.response();
    assert.equal(r.status, 431);
    assert.equal(json(r).error.code, "headers_too_large");
    assert.ok(await c.closedWithin(2000));
  } finally {
    c.close();
    await server.shutdown();
  }
  // A complete head over the limit that arrives in one packet is refused too.
  const s = start(() => new Response("ok"), { maxHeadBytes: 1000 });
  const d = await Raw.open(s.port);
  try {
    await d.send(get("/", `x-a: ${"v".repeat(980)}\r\n`));
    assert.equal((await d.response()).status, 431);
  } finally {
    d.close();
    await s.server.shutdown();
  }
});

deadline.test("an invalid request gets 400 JSON and closes, and the server keeps serving others", async () => {
  const { server, port } = start(() => new Response("ok"));
  try {
    for (
      const bad of [
        "GARBAGE\r\n\r\n",
        "POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: a/b\r\n\r\n",
        "TRACE / HTTP/1.1\r\nhost: t\r\n\r\n",
      ]
    ) {
      const c = await Raw.open(port);
      await c.send(bad);
      const r = await c.response();
      assert.equal(r.status, 400, bad);
      assert.deepEqual(Object.keys(json(r).error).sort(), ["code", "message", "type"]);
      assert.equal(json(r).error.type, "invalid_request_error");
      assert.ok(await c.closedWithin(2000));
      c.close();
    }
    // Bad chunked framing: the handler's read fails, the connection is not reused.
    const c = await Raw.open(port);
    await c.send("POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n");
    assert.ok(await c.closedWithin(2000));
    c.close();
    const ok = await Raw.open(port);
    await ok.send(get());
    assert.equal((await ok.response()).status, 200);
    ok.close();
  } finally {
    await server.shutdown();
  }
});

// ---- protocol features ----

deadline.test("Expect: 100-continue gets 100 when the body is first read, and no 100 when never read", async () => {
  const { server, port } = start(async (req) => {
    if (new URL(req.url).pathname === "/ignore") return new Response("no thanks");
    return new Response(`echo ${await req.text()}`);
  });
  const c = await Raw.open(port);
  const d = await Raw.open(port);
  try {
    await c.send(
      "POST / HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
    );
    assert.equal(dec.decode(await c.take(25)), "HTTP/1.1 100 Continue\r\n\r\n");
    await c.send("hello");
    const r = await c.response();
    assert.equal(dec.decode(r.body), "echo hello");
    // Not read: no 100, and the connection closes (the body may never come).
    await d.send(
      "POST /ignore HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
    );
    const n = await d.response();
    assert.equal(n.status, 200);
    assert.equal(n.headers.get("connection"), "close");
    assert.ok(await d.closedWithin(2000));
  } finally {
    c.close();
    d.close();
    await server.shutdown();
  }
});

deadline.test("shutdown closes idle connections at once and lets a request in flight finish", async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let entered = false;
  const { server, port } = start(async () => {
    entered = true;
    await gate;
    return new Response("finished");
  });
  const idle = await Raw.open(port);
  const busy = await Raw.open(port);
  try {
    await busy.send(get());
    await waitFor(() => entered, 2000, "handler");
    let done = false;
    const finished = server.shutdown().then(() => (done = true));
    assert.ok(await idle.closedWithin(1000), "idle connection not closed");
    await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port }));
    await delay(50);
    assert.equal(done, false);
    release();
    const r = await busy.response();
    assert.equal(dec.decode(r.body), "finished");
    assert.equal(r.headers.get("connection"), "close");
    assert.ok(await busy.closedWithin(1000));
    await finished;
    assert.equal(server.connections, 0);
  } finally {
    release();
    idle.close();
    busy.close();
    await server.shutdown();
  }
});

deadline.test("upgradeResponse switches the socket to a raw tunnel (echo), bytes already sent included", async () => {
  let info: ServeInfo | null = null;
  const { server, port } = start((req, i) => {
    info = i;
    assert.equal(req.headers.get("upgrade"), "echo");
    return upgradeResponse((conn, buffered) => {
      (async () => {
        try {
          if (buffered.length > 0) await conn.write(buffered);
          const buf = new Uint8Array(1024);
          while (true) {
            const n = await conn.read(buf);
            if (n === null) break;
            await conn.write(buf.subarray(0, n));
          }
        } catch { /* closed */ }
        conn.close();
      })();
    }, { upgrade: "echo", connection: "Upgrade" });
  }, { idleTimeoutMs: 200, headerTimeoutMs: 200 });
  const c = await Raw.open(port);
  try {
    // The first tunnel bytes travel in the same packet as the request head.
    await c.send(get("/tunnel", "upgrade: echo\r\nconnection: upgrade\r\n") + "early;");
    const head = await c.response({ head: true });
    assert.equal(head.status, 101);
    assert.match(head.head, /^HTTP\/1\.1 101 Switching Protocols/);
    assert.equal(head.headers.get("upgrade"), "echo");
    assert.equal(dec.decode(await c.take(6)), "early;");
    // No HTTP timeouts apply any more.
    await delay(500);
    await c.send("ping");
    assert.equal(dec.decode(await c.take(4)), "ping");
    assert.equal(server.connections, 1);
    await info!.completed;
    c.close();
    await waitFor(() => server.connections === 0, 1000, "tunnel closed");
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("accept failures (EMFILE) are reported and the server keeps accepting", async () => {
  const code = `
    import { serveHttp1 } from ${
    JSON.stringify(new URL("../lib/server/server.ts", import.meta.url).href)
  };
    let errors = 0;
    const s = serveHttp1({
      hostname: "127.0.0.1", port: 0,
      onAcceptError: (e) => { if (errors++ === 0) console.log("accept error: " + e.message); },
    }, () => new Response("alive"));
    console.log("port " + s.addr.port);
  `;
  const { child, output, outDone, errText } = spawnCaptured("bash", {
    args: ["-c", `ulimit -n 64 && exec "$0" eval "$1"`, Deno.execPath(), code],
  });
  const flood: Deno.Conn[] = [];
  try {
    await waitFor(() => /port \d+/.test(output()), 10_000, "child start");
    const port = Number(/port (\d+)/.exec(output())![1]);
    for (let i = 0; i < 120 && !/accept error/.test(output()); i++) {
      try {
        flood.push(await Deno.connect({ hostname: "127.0.0.1", port }));
      } catch {
        break;
      }
      if (i > 50) await delay(5);
    }
    await waitFor(() => /accept error/.test(output()), 5000, "an accept error");
    assert.match(output(), /Too many open files/);
    for (const c of flood.splice(0)) c.close();
    const end = Date.now() + 8000;
    let body = "";
    while (Date.now() < end && body !== "alive") {
      await delay(100);
      body = await fetch(`http://127.0.0.1:${port}/`).then((r) => r.text(), () => "");
    }
    assert.equal(body, "alive", "the server did not accept again");
  } finally {
    for (const c of flood) c.close();
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    await outDone;
    const stderr = await errText;
    assert.ok(!/Uncaught/.test(stderr), stderr);
  }
});

deadline.test("bodies given as bytes or text, and small request bodies that came with the head, pass exactly", async () => {
  const got: { text: string; stream: string }[] = [];
  const { server, port } = start(async (req) => {
    const path = new URL(req.url).pathname;
    if (req.method === "POST") {
      // Read through the stream API on purpose: the fast path must still be a normal body.
      const stream = await new Response(req.body).text();
      got.push({ text: stream, stream });
      return new Response(new TextEncoder().encode(`got ${stream.length}`));
    }
    if (path === "/text") return new Response("hé✓", { headers: { "content-type": "text/plain" } });
    return new Response(new Uint8Array([0, 1, 2, 255]));
  });
  const c = await Raw.open(port);
  try {
    const body = "é".repeat(1000);
    const bytes = enc.encode(body);
    await c.send(
      concat([
        enc.encode(`POST /p HTTP/1.1\r\nhost: t\r\ncontent-length: ${bytes.byteLength}\r\n\r\n`),
        bytes,
      ]),
    );
    const r1 = await c.response();
    assert.equal(new TextDecoder().decode(r1.body), "got 1000");
    assert.equal(got[0]!.text, body);
    await c.send("GET /text HTTP/1.1\r\nhost: t\r\n\r\n");
    const r2 = await c.response();
    assert.equal(r2.headers.get("content-length"), "6");
    assert.equal(new TextDecoder().decode(r2.body), "hé✓");
    await c.send("GET /bytes HTTP/1.1\r\nhost: t\r\n\r\n");
    const r3 = await c.response();
    assert.deepEqual([...r3.body], [0, 1, 2, 255]);
    await c.send("HEAD /text HTTP/1.1\r\nhost: t\r\n\r\n");
    const r4 = await c.response({ head: true });
    assert.equal(r4.headers.get("content-length"), "6");
    assert.equal(r4.body.byteLength, 0);
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("the Deno internals the server relies on are found on this Deno version", async () => {
  // Each has a fallback, but a silent fallback would cost speed or exactness unnoticed: a Deno
  // upgrade that changes one must fail here and be looked at.
  assert.deepEqual(internalsFound, { staticBody: true, cancelHook: true, readOp: true });
  // The read op, on a real socket pair: bytes as sent, then the end of the stream.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const a = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const b = await listener.accept();
  try {
    assert.ok(directReadAvailable(b));
    const buf = new Uint8Array(16);
    const read = readConn(b, buf);
    await a.write(enc.encode("hello"));
    assert.equal(await read, 5);
    assert.equal(dec.decode(buf.subarray(0, 5)), "hello");
    a.close();
    assert.ok(!(await readConn(b, buf)), "0 or null at the end of the stream");
  } finally {
    b.close();
    listener.close();
  }
});

deadline.test("a first read on a connection that is not Deno's (node:tls) leaves the read op on for Deno's", async () => {
  // In a fresh process: which connection is read first decides nothing for the ones after.
  const mod = new URL("../lib/http/deno_internals.ts", import.meta.url).href;
  const code = `
    import { directReadAvailable, readConn } from "${mod}";
    const other = { read: (b) => { b[0] = 7; return Promise.resolve(1); } };
    if (await readConn(other, new Uint8Array(4)) !== 1) throw new Error("fallback read");
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const a = await Deno.connect({ hostname: "127.0.0.1", port: l.addr.port });
    const b = await l.accept();
    console.log(directReadAvailable(b) && !directReadAvailable(other));
    a.close(); b.close(); l.close();
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-config", code],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(dec.decode(out.stdout).trim(), "true", dec.decode(out.stderr));
});

deadline.test("a request body with broken chunked framing ends the connection, and the response says so", async () => {
  const { server, port } = start(async (req) => {
    try {
      await req.text();
      return new Response("read");
    } catch {
      return new Response("bad body", { status: 400 });
    }
  });
  const c = await Raw.open(port);
  try {
    await c.send(
      "POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff1\r\nx\r\n",
    );
    const r = await c.response();
    assert.equal(r.status, 400);
    assert.equal(r.headers.get("connection"), "close");
  } finally {
    c.close();
    await server.shutdown();
  }
});

deadline.test("a response with a direct body reader is written from the reader; its stream is never read", async () => {
  let pulled = false;
  const { server, port } = start(() => {
    const res = new Response(
      new ReadableStream({
        pull() {
          pulled = true;
        },
      }, { highWaterMark: 0 }),
    );
    const parts = [enc.encode("data: a\n\n"), enc.encode("data: b\n\n")];
    return withDirectBody(res, {
      read: () =>
        Promise.resolve(
          parts.length > 0
            ? { done: false as const, value: parts.shift()! }
            : { done: true as const },
        ),
      cancel: () => Promise.resolve(),
    });
  });
  const c = await Raw.open(port);
  try {
    await c.send(get());
    const r = await c.response();
    assert.equal(dec.decode(r.body), "data: a\n\ndata: b\n\n");
    assert.equal(pulled, false);
  } finally {
    c.close();
    await server.shutdown();
  }
});
