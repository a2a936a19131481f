import assert from "node:assert/strict";
import fc from "fast-check";
import { encodeLatin1 } from "../lib/http/bytes.ts";
import { ChunkedDecoder, FramingError } from "../lib/http/chunked.ts";
import { bodyFraming, BodySource, parseHead, UpstreamError } from "../lib/upstream/http1.ts";
import { concat, deadline } from "./helpers.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function head(text: string): ReturnType<typeof parseHead> {
  return parseHead(encodeLatin1(text));
}

function throwsFraming(fn: () => unknown, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof FramingError, String(err));
    if (message !== undefined) assert.match(err.message, message);
    return true;
  });
}

function throwsProtocol(fn: () => unknown, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof UpstreamError, String(err));
    assert.equal(err.kind, "protocol");
    if (message !== undefined) assert.match(err.message, message);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------
// parseHead

// [status line, status, statusText]
const STATUS_LINES: ReadonlyArray<readonly [string, number, string]> = [
  ["HTTP/1.1 200 OK", 200, "OK"],
  ["HTTP/1.1 404 Not Found", 404, "Not Found"],
  ["HTTP/1.1 200", 200, ""],
  ["HTTP/1.1 200 ", 200, ""],
  ["HTTP/1.1 599 Custom  Reason ", 599, "Custom  Reason "],
  ["HTTP/1.0 503 Service Unavailable", 503, "Service Unavailable"],
  ["HTTP/1.1 101 Switching Protocols", 101, "Switching Protocols"],
  ["HTTP/1.1 429 Too Many Requests", 429, "Too Many Requests"],
];

for (const [line, status, text] of STATUS_LINES) {
  Deno.test(`parseHead reads status ${status} and reason ${JSON.stringify(text)} when the line is ${JSON.stringify(line)}`, () => {
    const h = head(line);
    assert.equal(h.status, status);
    assert.equal(h.statusText, text);
    assert.deepEqual(h.headers, []);
  });
}

const BAD_STATUS_LINES: readonly string[] = [
  "",
  "HTTP/2 200 OK",
  "HTTP/2.0 200 OK",
  "HTTP/1.2 200 OK",
  "HTTP/1.1 20 OK",
  "HTTP/1.1 2000 OK",
  "HTTP/1.1 abc OK",
  "http/1.1 200 OK",
  "HTTP/1.1  200 OK",
  " HTTP/1.1 200 OK",
  "HTTP/1.1\t200 OK",
  "ICY 200 OK",
  "SSH-2.0-OpenSSH_9.6",
  "<html>",
];

for (const line of BAD_STATUS_LINES) {
  Deno.test(`parseHead throws a protocol error when the status line is ${JSON.stringify(line)}`, () => {
    throwsProtocol(() => head(`${line}\r\nContent-Length: 0`), /status line/);
  });
}

Deno.test("parseHead lower-cases names, trims values and keeps order and duplicates", () => {
  const h = head(
    "HTTP/1.1 200 OK\r\nContent-Type:  text/event-stream \r\nSet-Cookie: a=1\r\n" +
      "set-cookie:b=2\r\nX-Empty:\r\nX-Tab:\tv\t",
  );
  assert.deepEqual(h.headers, [
    ["content-type", "text/event-stream"],
    ["set-cookie", "a=1"],
    ["set-cookie", "b=2"],
    ["x-empty", ""],
    ["x-tab", "v"],
  ]);
  assert.equal(h.contentLength, null);
  assert.equal(h.chunked, false);
  assert.equal(h.hasTransferEncoding, false);
});

Deno.test("parseHead decodes header values as Latin-1 when they hold bytes above 0x7f", () => {
  const bytes = concat([
    enc.encode("HTTP/1.1 200 OK\r\nX-Name: caf"),
    new Uint8Array([0xe9, 0x20, 0xff]),
    enc.encode('\r\nContent-Disposition: attachment; filename="'),
    new Uint8Array([0xfc]),
    enc.encode('.txt"'),
  ]);
  const h = parseHead(bytes);
  assert.deepEqual(h.headers, [
    ["x-name", "café \u00ff"],
    ["content-disposition", 'attachment; filename="\u00fc.txt"'],
  ]);
  // Round trip: the same bytes go back on the wire.
  assert.deepEqual(
    encodeLatin1(h.headers[0]![1]),
    new Uint8Array([...enc.encode("caf"), 0xe9, 0x20, 0xff]),
  );
});

// [version and Connection lines, keepAlive]
const KEEP_ALIVE: ReadonlyArray<readonly [string, boolean]> = [
  ["HTTP/1.1 200 OK", true],
  ["HTTP/1.1 200 OK\r\nConnection: keep-alive", true],
  ["HTTP/1.1 200 OK\r\nConnection: close", false],
  ["HTTP/1.1 200 OK\r\nConnection: Close", false],
  ["HTTP/1.1 200 OK\r\nConnection: upgrade, close", false],
  ["HTTP/1.1 200 OK\r\nConnection: x-foo\r\nConnection: close", false],
  ["HTTP/1.0 200 OK", false],
  ["HTTP/1.0 200 OK\r\nConnection: close", false],
  // An HTTP/1.0 answer's connection is never reused, even when it says keep-alive.
  ["HTTP/1.0 200 OK\r\nConnection: keep-alive", false],
  ["HTTP/1.0 200 OK\r\nConnection: Keep-Alive", false],
  ["HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5", false],
];

for (const [text, expected] of KEEP_ALIVE) {
  Deno.test(`parseHead sets keepAlive ${expected} when the head is ${JSON.stringify(text)}`, () => {
    assert.equal(head(text).keepAlive, expected);
  });
}

Deno.test("parseHead accepts repeated equal content-length headers", () => {
  const h = head("HTTP/1.1 200 OK\r\nContent-Length: 42\r\ncontent-length: 42");
  assert.equal(h.contentLength, 42);
  assert.equal(head("HTTP/1.1 200 OK\r\nContent-Length: 007").contentLength, 7);
  assert.equal(head("HTTP/1.1 200 OK\r\nContent-Length: 0").contentLength, 0);
});

Deno.test("parseHead throws when content-length values conflict or are malformed", () => {
  throwsProtocol(
    () => head("HTTP/1.1 200 OK\r\nContent-Length: 42\r\nContent-Length: 43"),
    /conflicting content-length/,
  );
  for (const v of ["-1", "abc", "1.5", "42, 42", "42 43", "", "+5", "0x10", "1234567890123456"]) {
    throwsProtocol(() => head(`HTTP/1.1 200 OK\r\nContent-Length: ${v}`), /content-length/);
  }
});

Deno.test("parseHead ignores content-length and reads the codings when transfer-encoding is present", () => {
  const h = head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked");
  assert.equal(h.contentLength, null);
  assert.equal(h.chunked, true);
  assert.equal(h.hasTransferEncoding, true);

  const split = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked");
  assert.equal(split.chunked, true);

  const notLast = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip");
  assert.equal(notLast.chunked, false);
  assert.equal(notLast.hasTransferEncoding, true);

  assert.equal(head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked").chunked, true);
});

const BAD_HEADER_LINES: readonly string[] = [
  " folded continuation", // obs-fold
  "\tfolded: with colon", // obs-fold that looks like a header
  "Bad Name: x",
  "Bad\tName: x",
  "Bad(Name): x",
  "Bad/Name: x",
  ": no name",
  "no colon at all",
  "X-Ok : space before colon",
  "Caf\u00e9: x",
  "X-Nul: a\u0000b",
  "X-Cr: a\rb",
];

for (const line of BAD_HEADER_LINES) {
  Deno.test(`parseHead throws a protocol error when a header line is ${JSON.stringify(line)}`, () => {
    throwsProtocol(() => head(`HTTP/1.1 200 OK\r\nX-First: 1\r\n${line}\r\nX-Last: 2`));
  });
}

// ---------------------------------------------------------------------------------------------
// bodyFraming

const noBodyInfo = { contentLength: null, chunked: false, hasTransferEncoding: false };

Deno.test("bodyFraming says none for HEAD, 204 and 304 whatever the head claims", () => {
  const claims = [
    { contentLength: 100, chunked: false, hasTransferEncoding: false },
    { contentLength: null, chunked: true, hasTransferEncoding: true },
    noBodyInfo,
  ];
  for (const c of claims) {
    assert.deepEqual(bodyFraming("HEAD", { status: 200, ...c }), { kind: "none" });
    assert.deepEqual(bodyFraming("GET", { status: 204, ...c }), { kind: "none" });
    assert.deepEqual(bodyFraming("POST", { status: 304, ...c }), { kind: "none" });
  }
});

Deno.test("bodyFraming says chunked when the last transfer coding is chunked", () => {
  assert.deepEqual(
    bodyFraming("POST", {
      status: 200,
      contentLength: null,
      chunked: true,
      hasTransferEncoding: true,
    }),
    { kind: "chunked" },
  );
});

Deno.test("bodyFraming reads to close when transfer-encoding is not chunked", () => {
  assert.deepEqual(
    bodyFraming("GET", {
      status: 200,
      contentLength: null,
      chunked: false,
      hasTransferEncoding: true,
    }),
    { kind: "close" },
  );
});

Deno.test("bodyFraming uses content-length, with none for 0", () => {
  assert.deepEqual(
    bodyFraming("GET", {
      status: 200,
      contentLength: 0,
      chunked: false,
      hasTransferEncoding: false,
    }),
    { kind: "none" },
  );
  assert.deepEqual(
    bodyFraming("GET", {
      status: 500,
      contentLength: 17,
      chunked: false,
      hasTransferEncoding: false,
    }),
    { kind: "length", length: 17 },
  );
});

Deno.test("bodyFraming reads to close when neither length nor transfer-encoding is given", () => {
  assert.deepEqual(bodyFraming("GET", { status: 200, ...noBodyInfo }), { kind: "close" });
});

Deno.test("bodyFraming agrees with parseHead for a head with both TE and content-length", () => {
  const h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked");
  assert.deepEqual(bodyFraming("GET", h), { kind: "chunked" });
  const g = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip");
  assert.deepEqual(bodyFraming("GET", g), { kind: "close" });
});

// ---------------------------------------------------------------------------------------------
// ChunkedDecoder

/** Feeds `parts` in order; returns the payload and the decoder. */
function decode(parts: Uint8Array[]): { payload: string; decoder: ChunkedDecoder } {
  const d = new ChunkedDecoder();
  const out: Uint8Array[] = [];
  for (const p of parts) {
    for (const piece of d.push(p)) {
      assert.ok(piece.byteLength > 0, "no empty payload slices");
      out.push(piece);
    }
  }
  return { payload: dec.decode(concat(out)), decoder: d };
}

const MULTI = '5\r\nhello\r\n1;name=value;x="q"\r\n \r\n' +
  'A\r\n0123456789\r\n10\r\n{"delta":"\u00e9!!"}\r\n0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n';
// The last chunk is 0x10 = 16 bytes: "é" is two bytes in UTF-8.
const MULTI_PAYLOAD = 'hello 0123456789{"delta":"\u00e9!!"}';

Deno.test("ChunkedDecoder decodes chunks with extensions and trailers in one push", () => {
  const { payload, decoder } = decode([enc.encode(MULTI)]);
  assert.equal(payload, MULTI_PAYLOAD);
  assert.equal(decoder.done, true);
  assert.equal(decoder.rest, null);
});

Deno.test("ChunkedDecoder gives the same payload when split at every byte boundary", () => {
  const bytes = enc.encode(MULTI);
  for (let i = 0; i <= bytes.byteLength; i++) {
    const { payload, decoder } = decode([bytes.subarray(0, i), bytes.subarray(i)]);
    assert.equal(payload, MULTI_PAYLOAD, `split at ${i}`);
    assert.equal(decoder.done, true);
    assert.equal(decoder.rest, null);
  }
  for (let i = 0; i <= bytes.byteLength; i++) {
    for (let j = i; j <= bytes.byteLength; j += 7) {
      const parts = [bytes.subarray(0, i), bytes.subarray(i, j), bytes.subarray(j)];
      assert.equal(decode(parts).payload, MULTI_PAYLOAD, `split at ${i}, ${j}`);
    }
  }
  const oneByOne = [...bytes].map((b) => new Uint8Array([b]));
  assert.equal(decode(oneByOne).payload, MULTI_PAYLOAD);
});

Deno.test("ChunkedDecoder gives the same payload for any chunking and any split", () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ minLength: 1, maxLength: 40 }), { maxLength: 8 }),
      fc.array(fc.nat(), { maxLength: 6 }),
      fc.boolean(),
      (chunks, cuts, bareLf) => {
        const nl = bareLf ? "\n" : "\r\n";
        const wire = concat([
          ...chunks.flatMap((
            c,
          ) => [enc.encode(`${c.byteLength.toString(16)}${nl}`), c, enc.encode(nl)]),
          enc.encode(`0${nl}${nl}`),
        ]);
        const points = [...new Set(cuts.map((c) => c % (wire.byteLength + 1)))].sort((a, b) =>
          a - b
        );
        const parts: Uint8Array[] = [];
        let prev = 0;
        for (const p of [...points, wire.byteLength]) {
          parts.push(wire.subarray(prev, p));
          prev = p;
        }
        const d = new ChunkedDecoder();
        const got = concat(parts.flatMap((p) => d.push(p)));
        assert.deepEqual(got, concat(chunks));
        assert.equal(d.done, true);
        assert.equal(d.rest, null);
      },
    ),
  );
});

Deno.test("ChunkedDecoder keeps the bytes after the last chunk in rest", () => {
  const d = new ChunkedDecoder();
  const out = d.push(enc.encode("3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"));
  assert.equal(dec.decode(concat(out)), "abc");
  assert.equal(d.done, true);
  assert.equal(dec.decode(d.rest!), "HTTP/1.1 200 OK\r\n");
});

Deno.test("ChunkedDecoder puts bytes pushed after the end into rest", () => {
  const d = new ChunkedDecoder();
  d.push(enc.encode("0\r\n\r\n"));
  assert.equal(d.done, true);
  assert.equal(d.rest, null);
  assert.deepEqual(d.push(enc.encode("junk")), []);
  assert.equal(dec.decode(d.rest!), "junk");
});

Deno.test("ChunkedDecoder is not done before the blank line that ends the trailers", () => {
  const d = new ChunkedDecoder();
  d.push(enc.encode("2\r\nhi\r\n0\r\nX-T: 1\r\n"));
  assert.equal(d.done, false);
  d.push(enc.encode("\r"));
  assert.equal(d.done, false);
  d.push(enc.encode("\n"));
  assert.equal(d.done, true);
});

const BAD_CHUNKS: readonly string[] = [
  "zz\r\n",
  "-1\r\n",
  "\r\n",
  " 5\r\nhello\r\n",
  "0x5\r\nhello\r\n",
  "1234567890abc\r\n", // 13 hex digits
  "5\r\nhelloX\r\n0\r\n\r\n", // data longer than announced
  "5 x\r\nhello\r\n",
  "5\r\nhello\r\n\r\n", // empty size line
];

for (const wire of BAD_CHUNKS) {
  Deno.test(`ChunkedDecoder throws a framing error when the body is ${JSON.stringify(wire)}`, () => {
    throwsFraming(() => new ChunkedDecoder().push(enc.encode(wire)));
  });
}

Deno.test("ChunkedDecoder throws when a size line never ends", () => {
  throwsFraming(() => new ChunkedDecoder().push(enc.encode("1".repeat(5000))), /too long/);
  throwsFraming(
    () => new ChunkedDecoder().push(enc.encode(`5;${"x".repeat(5000)}`)),
    /too long/,
  );
});

// ---------------------------------------------------------------------------------------------
// encodeLatin1

Deno.test("encodeLatin1 writes one byte per character for ASCII and Latin-1", () => {
  assert.deepEqual(encodeLatin1(""), new Uint8Array());
  assert.deepEqual(encodeLatin1("GET / HTTP/1.1\r\n"), enc.encode("GET / HTTP/1.1\r\n"));
  assert.deepEqual(encodeLatin1("café"), new Uint8Array([0x63, 0x61, 0x66, 0xe9]));
  assert.deepEqual(encodeLatin1("\u0080\u00ff"), new Uint8Array([0x80, 0xff]));
  assert.deepEqual(encodeLatin1("\u0000\u007f"), new Uint8Array([0x00, 0x7f]));
});

Deno.test("encodeLatin1 and parseHead round-trip every Latin-1 header value", () => {
  const valueChar = fc.integer({ min: 0x20, max: 0xff }).filter((c) => c !== 0x7f)
    .map((c) => String.fromCharCode(c));
  fc.assert(
    fc.property(fc.string({ unit: valueChar, maxLength: 30 }), (raw) => {
      const value = raw.replace(/^[ \t]+|[ \t]+$/g, "");
      const bytes = encodeLatin1(`HTTP/1.1 200 OK\r\nx-v: ${value}`);
      assert.equal(bytes.byteLength, 22 + value.length);
      assert.deepEqual(parseHead(bytes).headers, [["x-v", value]]);
    }),
  );
});

// ---------------------------------------------------------------------------------------------
// BodySource

/** A stream that hands out `chunks` one pull at a time, counting pulls. */
function source(chunks: Uint8Array[]): { stream: ReadableStream<Uint8Array>; pulls: () => number } {
  let i = 0;
  let pulls = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(ctrl) {
      pulls++;
      const c = chunks[i++];
      if (c === undefined) ctrl.close();
      else ctrl.enqueue(c);
    },
  }, { highWaterMark: 0 });
  return { stream, pulls: () => pulls };
}

async function drain(next: () => Promise<Uint8Array | null>): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  let c: Uint8Array | null;
  while ((c = await next()) !== null) out.push(c);
  return out;
}

const CHUNKS = [enc.encode("abc"), enc.encode("defg"), enc.encode("h"), enc.encode("ijklmn")];

deadline.test("BodySource cursor reads every chunk in order then null", async () => {
  const { stream } = source(CHUNKS);
  const body = new BodySource(stream, 14, 1024);
  assert.equal(body.length, 14);
  const next = body.cursor();
  assert.deepEqual(await drain(next), CHUNKS);
  assert.equal(await next(), null);
  assert.equal(await next(), null);
  assert.equal(body.replayable, true);
});

deadline.test("BodySource replays from the start with a second cursor while under keepMax", async () => {
  const { stream, pulls } = source(CHUNKS);
  const body = new BodySource(stream, null, 14);
  assert.equal(body.length, null);
  const first = body.cursor();
  assert.deepEqual(await first(), CHUNKS[0]);
  assert.deepEqual(await first(), CHUNKS[1]);
  assert.equal(body.replayable, true);
  // The first attempt failed half-way: a new one starts over and then reads on.
  const second = body.cursor();
  assert.deepEqual(await drain(second), CHUNKS);
  assert.equal(body.replayable, true, "exactly keepMax bytes are still kept");
  const third = body.cursor();
  assert.deepEqual(await drain(third), CHUNKS);
  // The source was read once: 4 chunks plus the end.
  assert.equal(pulls(), 5);
});

deadline.test("BodySource shares one read between concurrent cursors", async () => {
  const { stream, pulls } = source(CHUNKS);
  const body = new BodySource(stream, null, 1024);
  const a = body.cursor();
  const b = body.cursor();
  const [ra, rb] = await Promise.all([drain(a), drain(b)]);
  assert.deepEqual(ra, CHUNKS);
  assert.deepEqual(rb, CHUNKS);
  assert.equal(pulls(), 5);
});

deadline.test("BodySource stops being replayable past keepMax while the live cursor gets every byte", async () => {
  const { stream } = source(CHUNKS);
  const body = new BodySource(stream, 14, 5);
  const live = body.cursor();
  assert.deepEqual(await live(), CHUNKS[0]); // 3 bytes kept
  assert.equal(body.replayable, true);
  assert.deepEqual(await live(), CHUNKS[1]); // 7 > 5
  assert.equal(body.replayable, false);
  const rest = await drain(live);
  assert.deepEqual(rest, CHUNKS.slice(2));
  assert.equal(body.replayable, false);
  // A new attempt cannot start over any more.
  await assert.rejects(() => body.cursor()(), (err: unknown) => {
    assert.ok(err instanceof UpstreamError);
    assert.equal(err.kind, "body");
    return true;
  });
});

deadline.test("BodySource delivers any body in order to the live cursor whatever keepMax is", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.uint8Array({ minLength: 1, maxLength: 20 }), { maxLength: 10 }),
      fc.nat({ max: 120 }),
      async (chunks, keepMax) => {
        const body = new BodySource(source(chunks).stream, null, keepMax);
        const got = await drain(body.cursor());
        assert.deepEqual(concat(got), concat(chunks));
        const total = chunks.reduce((n, c) => n + c.byteLength, 0);
        assert.equal(body.replayable, total <= keepMax);
        if (body.replayable) assert.deepEqual(concat(await drain(body.cursor())), concat(chunks));
      },
    ),
  );
});

deadline.test("BodySource rejects with a body error that hides the cause's text when the client stream fails", async () => {
  let pulls = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(ctrl) {
      if (pulls++ === 0) ctrl.enqueue(enc.encode("x"));
      else ctrl.error(new TypeError("socket 10.1.2.3:443 reset"));
    },
  }, { highWaterMark: 0 });
  const body = new BodySource(stream, null, 1024);
  const next = body.cursor();
  assert.deepEqual(await next(), enc.encode("x"));
  await assert.rejects(next, (err: unknown) => {
    assert.ok(err instanceof UpstreamError);
    assert.equal(err.kind, "body");
    assert.ok(!err.message.includes("10.1.2.3"), err.message);
    return true;
  });
});

deadline.test("BodySource cancel cancels the client's stream", async () => {
  let cancelled: unknown = "not called";
  const stream = new ReadableStream<Uint8Array>({
    pull() {},
    cancel(reason) {
      cancelled = reason;
    },
  });
  const body = new BodySource(stream, null, 1024);
  body.cancel("client gone");
  await Promise.resolve();
  assert.equal(cancelled, "client gone");
});

Deno.test({
  name:
    "BodySource lets a retry cursor finish when a failed attempt's pending read crosses keepMax",
  // Regression (found in review, fixed): lib/upstream/http1.ts BodySource#pull assumes the cursor waiting on a read that crosses keepMax is
  // the live attempt ("it has read everything before this chunk"). exchange() retries while
  // `replayable` is true, but the failed attempt's writer can still be parked in `next()`: when the
  // client's next chunk then crosses keepMax, the kept chunks are dropped although the new attempt
  // has not re-sent them yet, so it fails with UpstreamError("body", "request body is no longer
  // kept"), which Exchange then classifies as "aborted" (client went away) instead of relaying.
  // Failing input: keepMax 5, chunks [1 byte, 1 byte, 10 bytes]; attempt A reads two chunks and
  // waits; attempt B (created while replayable) reads one chunk; the 10-byte chunk arrives.

  async fn() {
    const chunks = [enc.encode("a"), enc.encode("b"), enc.encode("0123456789")];
    let ctrl!: ReadableStreamDefaultController<Uint8Array>;
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        ctrl = c;
      },
    }, { highWaterMark: 0 });
    const body = new BodySource(stream, null, 5);
    ctrl.enqueue(chunks[0]!);
    ctrl.enqueue(chunks[1]!);
    const a = body.cursor();
    assert.deepEqual(await a(), chunks[0]);
    assert.deepEqual(await a(), chunks[1]);
    const aWaiting = a(); // the failed attempt's writer, still parked on the client body
    assert.equal(body.replayable, true);
    const b = body.cursor(); // exchange() retries because the body is replayable
    assert.deepEqual(await b(), chunks[0]);
    ctrl.enqueue(chunks[2]!); // the client sends more while B is still re-sending
    ctrl.close();
    assert.deepEqual(await aWaiting, chunks[2]);
    assert.deepEqual(concat(await drain(b)), concat(chunks.slice(1)));
  },
});
