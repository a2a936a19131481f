/**
 * lib/server/server.ts: the lingering close after a connection's last response. Raw sockets on
 * 127.0.0.1, because what is tested is what the kernel does with bytes a client sends after the
 * server is done: dropped while the server lingers, answered with a reset once it has closed.
 */

import assert from "node:assert/strict";
import { type Http1ServerOptions, serveHttp1 } from "../lib/server/server.ts";
import { closeQuietly } from "../lib/server/connection.ts";
import { deadline, dec, delay, enc } from "./helpers.ts";

function start(handler: () => Response, opts: Partial<Http1ServerOptions> = {}) {
  const server = serveHttp1({ hostname: "127.0.0.1", port: 0, ...opts }, handler);
  return { server, port: server.addr.port };
}

async function connect(port: number): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  return conn;
}

/** Writes all of `bytes`; the error a failed write threw, or null. */
async function send(conn: Deno.Conn, bytes: Uint8Array): Promise<Error | null> {
  try {
    for (let off = 0; off < bytes.byteLength;) off += await conn.write(bytes.subarray(off));
    return null;
  } catch (err) {
    return err as Error;
  }
}

/** Reads until the end of the stream: the text, and the error that ended it (null at a clean end). */
async function readToEnd(conn: Deno.Conn): Promise<{ text: string; error: Error | null }> {
  const buf = new Uint8Array(64 * 1024);
  let text = "";
  try {
    while (true) {
      const n = await conn.read(buf);
      if (n === null) return { text, error: null };
      text += dec.decode(buf.subarray(0, n));
    }
  } catch (err) {
    return { text, error: err as Error };
  }
}

/** A socket the server has closed answers a write with a reset, which the next read reports. */
async function resetOnWrite(conn: Deno.Conn): Promise<boolean> {
  if (await send(conn, enc.encode("x")) !== null) return true;
  await delay(50);
  if (await send(conn, enc.encode("x")) !== null) return true;
  const { error } = await readToEnd(conn);
  return error !== null;
}

deadline.test("a client that sends its whole body before reading gets the early answer, not a reset", async () => {
  // As Python's http.client does: the whole body goes out before the response is read. The
  // handler answers at once without reading the body, over the 1 MiB the server would drain
  // to keep the connection, so the answer says connection: close and the server ends it.
  const { server, port } = start(() => new Response("early", { status: 413 }));
  const conn = await connect(port);
  try {
    const size = 8 * 1024 * 1024;
    await send(conn, enc.encode(`POST / HTTP/1.1\r\nhost: t\r\ncontent-length: ${size}\r\n\r\n`));
    const failed = await send(conn, new Uint8Array(size));
    assert.equal(failed, null, `the body's write failed: ${failed}`);
    const { text, error } = await readToEnd(conn);
    assert.equal(error, null, `the read failed: ${error}`);
    assert.match(text, /^HTTP\/1\.1 413 /);
    assert.match(text, /\r\nconnection: close\r\n/i);
    assert.ok(text.endsWith("\r\n\r\nearly"), text);
  } finally {
    closeQuietly(conn);
    await server.shutdown();
  }
});

deadline.test("after a connection: close answer, a request pipelined behind it and bytes sent later are dropped, not reset", async () => {
  const { server, port } = start(() => new Response("ok"), { lingerTimeoutMs: 2000 });
  const conn = await connect(port);
  try {
    // A second request pipelined after the one that asks to close: never answered.
    const get = "GET / HTTP/1.1\r\nhost: t\r\n";
    await send(conn, enc.encode(`${get}connection: close\r\n\r\n${get}\r\n`));
    const first = await readToEnd(conn);
    assert.equal(first.error, null);
    assert.match(first.text, /^HTTP\/1\.1 200 OK\r\n/);
    assert.equal(first.text.match(/HTTP\/1\.1/g)?.length, 1, first.text);
    assert.equal(server.connections, 0, "a lingering socket is not an open connection");
    // Lingering: what the client still sends is read and dropped, never answered with a reset.
    assert.equal(await send(conn, enc.encode(`${get}\r\n`)), null);
    await delay(100);
    assert.equal(await send(conn, enc.encode(`${get}\r\n`)), null);
    const second = await readToEnd(conn);
    assert.deepEqual(second, { text: "", error: null });
  } finally {
    closeQuietly(conn);
    await server.shutdown();
  }
});

deadline.test("a lingering socket is closed after lingerTimeoutMs of silence, and after six times that in all", async () => {
  const ms = 200;
  const { server, port } = start(() => new Response("ok"), { lingerTimeoutMs: ms });
  // The bytes after the blank line start another request: the client may still be sending.
  const close = "GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\nGET";
  const silent = await connect(port);
  const busy = await connect(port);
  try {
    await send(silent, enc.encode(close));
    await send(busy, enc.encode(close));
    assert.match((await readToEnd(silent)).text, /^HTTP\/1\.1 200 /);
    assert.match((await readToEnd(busy)).text, /^HTTP\/1\.1 200 /);
    const t0 = performance.now();
    // The busy client keeps sending, a byte every 50 ms: it is never silent for `ms`.
    let busyClosedAt = -1;
    const trickle = (async () => {
      while (performance.now() - t0 < 5000) {
        if (await send(busy, enc.encode("x")) !== null) break;
        await delay(50);
      }
      busyClosedAt = performance.now() - t0;
    })();
    // Silent past the bound (the watchdog looks every ms / 10): closed, so a write gets a reset.
    await delay(ms * 3);
    assert.ok(await resetOnWrite(silent), "the silent client's socket was still open");
    await trickle;
    // Well past the silence bound (cut at ~ms without the reads counting), and not tied to the
    // exact moment the linger began, which a loaded machine shifts: t0 comes after both reads.
    assert.ok(busyClosedAt >= ms * 4, `the busy client was cut after ${busyClosedAt} ms`);
    assert.ok(busyClosedAt < ms * 6 + 2000, `the busy client was cut after ${busyClosedAt} ms`);
  } finally {
    closeQuietly(silent);
    closeQuietly(busy);
    await server.shutdown();
  }
});

deadline.test("a connection: close request with nothing after it is closed at once, as nginx does", async () => {
  // Nothing suggests the client is still sending, so no lingering close (which costs CPU).
  const { server, port } = start(() => new Response("ok"), { lingerTimeoutMs: 60_000 });
  const conn = await connect(port);
  try {
    await send(conn, enc.encode("GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"));
    assert.match((await readToEnd(conn)).text, /^HTTP\/1\.1 200 /);
    assert.ok(await resetOnWrite(conn), "the socket lingered");
  } finally {
    closeQuietly(conn);
    await server.shutdown();
  }
});

deadline.test("shutdown closes lingering sockets and finishes without waiting for their clients", async () => {
  const { server, port } = start(() => new Response("ok"), { lingerTimeoutMs: 60_000 });
  const conn = await connect(port);
  try {
    await send(conn, enc.encode("GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\nGET"));
    assert.match((await readToEnd(conn)).text, /^HTTP\/1\.1 200 /);
    // Still lingering: a write is dropped, not reset.
    assert.equal(await send(conn, enc.encode("x")), null);
    const t0 = performance.now();
    await server.shutdown();
    assert.ok(performance.now() - t0 < 1000, "shutdown waited for the lingering socket");
    assert.ok(await resetOnWrite(conn), "the lingering socket was left open");
  } finally {
    closeQuietly(conn);
  }
});
