/**
 * lib/server/tls_listener.ts: the own HTTP/1.1 server serving TLS through `node:tls`. Real TLS
 * sockets on 127.0.0.1 (the certificate from tls_fixture.ts), a raw HTTP/1.1 client with Nagle
 * off, as Node's and curl's are. What is checked is what the plain server's tests check, where
 * the socket underneath could change it: bodies both ways, past the read pause, streaming, a client
 * that leaves, the lingering close, timeouts, the socket cap and an upgrade.
 */

import assert from "node:assert/strict";
import {
  type Http1Handler,
  type Http1Server,
  type Http1ServerOptions,
  serveHttp1,
  upgradeResponse,
} from "../lib/server/server.ts";
import { closeQuietly } from "../lib/server/connection.ts";
import { concat, dec, delay, enc, sha256, waitFor } from "./helpers.ts";
import { type TestCert, withCert } from "./tls_fixture.ts";

async function start(
  tls: TestCert,
  handler: Http1Handler,
  opts: Partial<Http1ServerOptions> = {},
): Promise<{ server: Http1Server; port: number }> {
  let listening!: () => void;
  const ready = new Promise<void>((r) => (listening = r));
  const server = serveHttp1({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: tls.cert, key: tls.key },
    onListen: () => listening(),
    ...opts,
  }, handler);
  await ready;
  return { server, port: server.addr.port };
}

async function open(tls: TestCert, port: number): Promise<Deno.TlsConn> {
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port });
  tcp.setNoDelay(true);
  return await Deno.startTls(tcp, { hostname: "127.0.0.1", caCerts: [tls.cert] });
}

async function writeAll(conn: Deno.Conn, data: string | Uint8Array): Promise<void> {
  const bytes = typeof data === "string" ? enc.encode(data) : data;
  for (let off = 0; off < bytes.byteLength;) off += await conn.write(bytes.subarray(off));
}

/** Reads until `done(bytes so far)` or the end of the stream. */
async function readUntil(conn: Deno.Conn, done: (b: Uint8Array) => boolean): Promise<Uint8Array> {
  let got: Uint8Array = new Uint8Array(0);
  const buf = new Uint8Array(256 * 1024);
  while (!done(got)) {
    const n = await conn.read(buf);
    if (n === null) break;
    got = concat([got, buf.subarray(0, n)]);
  }
  return got;
}

/** One whole response with content-length: its head and body. */
async function response(conn: Deno.Conn): Promise<{ head: string; body: Uint8Array }> {
  const bytes = await readUntil(conn, (b) => {
    const text = dec.decode(b.subarray(0, Math.min(b.byteLength, 4096)));
    const h = text.indexOf("\r\n\r\n");
    const m = h < 0 ? null : /content-length: (\d+)/i.exec(text.slice(0, h));
    return m !== null && b.byteLength - h - 4 >= Number(m[1]);
  });
  const text = dec.decode(bytes.subarray(0, Math.min(bytes.byteLength, 4096)));
  const h = text.indexOf("\r\n\r\n");
  return { head: text.slice(0, h), body: bytes.subarray(h + 4) };
}

withCert.test("TLS: bodies of 8 MB both ways pass intact, and requests keep the connection", async ({ tls }) => {
  const big = new Uint8Array(8 * 1024 * 1024).map((_, i) => (i * 31) & 0xff);
  const { server, port } = await start(tls, async (req) => {
    if (req.method === "GET") return new Response(big);
    return new Response(await sha256(new Uint8Array(await req.arrayBuffer())));
  });
  const conn = await open(tls, port);
  try {
    await writeAll(
      conn,
      `POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: ${big.byteLength}\r\n\r\n`,
    );
    await writeAll(conn, big);
    assert.equal(dec.decode((await response(conn)).body), await sha256(big));
    await writeAll(conn, "GET /down HTTP/1.1\r\nhost: t\r\n\r\n");
    // Not read for a while: the server's writes wait for the client, then go on.
    await delay(100);
    const down = await response(conn);
    assert.match(down.head, /^HTTP\/1\.1 200 OK/);
    assert.equal(await sha256(down.body), await sha256(big));
    assert.equal(server.connections, 1);
  } finally {
    conn.close();
    await server.shutdown();
  }
});

withCert.test("TLS: each SSE event goes out as it comes; a client that leaves aborts req.signal", async ({ tls }) => {
  let ctrl!: ReadableStreamDefaultController<Uint8Array>;
  let aborted = false;
  const { server, port } = await start(tls, (req) => {
    req.signal.addEventListener("abort", () => (aborted = true));
    return new Response(new ReadableStream({ start: (c) => void (ctrl = c) }), {
      headers: { "content-type": "text/event-stream" },
    });
  });
  const conn = await open(tls, port);
  try {
    await writeAll(conn, "GET /sse HTTP/1.1\r\nhost: t\r\n\r\n");
    await readUntil(conn, (b) => dec.decode(b).includes("\r\n\r\n"));
    for (const event of ["data: 1\n\n", "data: 2\n\n"]) {
      ctrl.enqueue(enc.encode(event));
      const got = dec.decode(await readUntil(conn, (b) => dec.decode(b).includes(event)));
      assert.match(got, new RegExp(event));
    }
    conn.close();
    await waitFor(() => aborted, 2000, "req.signal aborted");
  } finally {
    closeQuietly(conn);
    await server.shutdown();
  }
});

withCert.test("TLS: an answer sent before the body was read reaches a client that sends its whole body first", async ({ tls }) => {
  const { server, port } = await start(tls, () => new Response("early", { status: 413 }));
  const conn = await open(tls, port);
  try {
    const size = 8 * 1024 * 1024;
    await writeAll(conn, `POST / HTTP/1.1\r\nhost: t\r\ncontent-length: ${size}\r\n\r\n`);
    await writeAll(conn, new Uint8Array(size));
    const text = dec.decode(await readUntil(conn, () => false));
    assert.match(text, /^HTTP\/1\.1 413 /);
    assert.ok(text.endsWith("\r\n\r\nearly"), text.slice(-100));
  } finally {
    conn.close();
    await server.shutdown();
  }
});

withCert.test("TLS: a socket that never completes its handshake is closed after headerTimeoutMs", async ({ tls }) => {
  const { server, port } = await start(tls, () => new Response("ok"), { headerTimeoutMs: 300 });
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const t0 = performance.now();
    const n = await tcp.read(new Uint8Array(16)).catch(() => null);
    assert.equal(n, null);
    const ms = performance.now() - t0;
    assert.ok(ms >= 250 && ms < 3000, `closed after ${ms} ms`);
  } finally {
    tcp.close();
    await server.shutdown();
  }
});

withCert.test("TLS: an upgrade tunnels bytes; sockets over maxConnections, handshakes included, are closed before their handshake", async ({ tls }) => {
  // Deno's node:tls server stops accepting for good after one accept fails for lack of
  // descriptors, so every socket counts from accept: one over the cap is closed at once (no 503,
  // which would need the handshake first).
  const { server, port } = await start(tls, (req) => {
    if (req.headers.get("upgrade") !== "echo") return new Response("ok");
    return upgradeResponse((conn, buffered) => {
      (async () => {
        try {
          if (buffered.length > 0) await conn.write(buffered);
          const buf = new Uint8Array(1024);
          for (let n; (n = await conn.read(buf)) !== null;) await conn.write(buf.subarray(0, n));
        } catch { /* closed */ }
        conn.close();
      })();
    }, { upgrade: "echo", connection: "Upgrade" });
  }, { maxConnections: 2, headerTimeoutMs: 500 });
  const first = await open(tls, port);
  // Connected, never starting its handshake: it holds the second place.
  const silent = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await writeAll(
      first,
      "GET /t HTTP/1.1\r\nhost: t\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\nearly;",
    );
    const got = await readUntil(first, (b) => dec.decode(b).includes("early;"));
    assert.match(dec.decode(got), /^HTTP\/1\.1 101 Switching Protocols\r\n/);
    await writeAll(first, "ping");
    assert.equal(dec.decode(await readUntil(first, (b) => b.byteLength >= 4)), "ping");
    await assert.rejects(async () => {
      const third = await open(tls, port);
      try {
        await writeAll(third, "GET / HTTP/1.1\r\nhost: t\r\n\r\n");
        if ((await readUntil(third, () => false)).byteLength === 0) throw new Error("closed");
      } finally {
        third.close();
      }
    });
    silent.close();
    // The place is free again once the silent socket is gone (at the latest its handshake
    // timeout, as node:tls may not notice an end during a handshake): the next client is served.
    await waitFor(
      async () => {
        try {
          const next = await open(tls, port);
          try {
            await writeAll(next, "GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
            const t = dec.decode(await readUntil(next, () => false));
            return /^HTTP\/1\.1 200 /.test(t);
          } finally {
            next.close();
          }
        } catch {
          return false;
        }
      },
      3000,
      "a place free after the silent socket left",
    );
  } finally {
    first.close();
    closeQuietly(silent);
    await waitFor(() => server.connections === 0, 2000, "tunnel closed");
    await server.shutdown();
  }
});

withCert.test("TLS: a lingering socket whose client stays silent is closed after lingerTimeoutMs", async ({ tls }) => {
  const { server, port } = await start(tls, () => new Response("ok"), { lingerTimeoutMs: 200 });
  const conn = await open(tls, port);
  try {
    // Bytes of another request after the one that asks to close: the server lingers.
    await writeAll(conn, "GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\nGET");
    const text = dec.decode(await readUntil(conn, () => false));
    assert.match(text, /^HTTP\/1\.1 200 /);
    // Silent past the bound: the socket is closed for good, so a write is answered with a reset.
    await delay(800);
    let failed = false;
    for (let i = 0; i < 3 && !failed; i++) {
      try {
        await conn.write(enc.encode("x"));
        await delay(50);
      } catch {
        failed = true;
      }
    }
    assert.ok(failed, "the lingering socket was still open after its bound");
  } finally {
    closeQuietly(conn);
    await server.shutdown();
  }
});

withCert.test("TLS: a listener stuck after descriptors ran out is replaced, and connections come again", async ({ tls }) => {
  // Deno's node:tls server never accepts again after one accept failed with EMFILE. A child with a
  // low descriptor limit uses them all up, a client connects then (not accepted), the child frees
  // them: the liveness check finds its own connection unanswered and starts a new server.
  const mod = new URL("../lib/server/tls_listener.ts", import.meta.url).href;
  const code = `
    import { listenTlsNoDelay } from "${mod}";
    const l = listenTlsNoDelay({
      hostname: "127.0.0.1", port: 0, handshakeTimeoutMs: 5000, maxSockets: 0, livenessMs: 300,
      cert: Deno.readTextFileSync(${JSON.stringify(tls.certFile)}),
      key: Deno.readTextFileSync(${JSON.stringify(tls.keyFile)}),
    });
    await l.ready;
    // As the relay does at start: Deno sets up signal handling on first use and panics when that
    // finds no descriptor.
    Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
    (async () => {
      while (true) {
        const c = await l.accept();
        c.write(new TextEncoder().encode("ok")).then(() => c.close(), () => {});
      }
    })();
    console.log("port " + l.addr.port);
    const files = [];
    try { while (true) files.push(Deno.openSync("/dev/null")); } catch { /* out of descriptors */ }
    console.log("exhausted");
    await new Promise((r) => setTimeout(r, 1500));
    for (const f of files) f.close();
    console.log("freed");
    await new Promise((r) => setTimeout(r, 8000));
  `;
  const child = new Deno.Command("bash", {
    args: ["-c", `ulimit -n 256; exec "${Deno.execPath()}" eval --no-config "$0"`, code],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  const waitLine = async (what: string) => {
    while (!out.includes(what)) {
      const { value, done } = await lines.read();
      if (done) {
        const err = await new Response(child.stderr).text();
        throw new Error(`child ended before "${what}": ${out}${err}`);
      }
      out += value;
    }
  };
  /** A TLS request within `ms`: the answer, or null. */
  const tryOnce = async (port: number, ms: number): Promise<string | null> => {
    let conn: Deno.TlsConn | null = null;
    const timer = setTimeout(() => conn?.close(), ms);
    try {
      conn = await open(tls, port);
      return dec.decode(await readUntil(conn, (b) => b.byteLength >= 2));
    } catch {
      return null;
    } finally {
      clearTimeout(timer);
      try {
        conn?.close();
      } catch { /* closed */ }
    }
  };
  try {
    await waitLine("exhausted");
    const port = Number(/port (\d+)/.exec(out)![1]);
    assert.equal(await tryOnce(port, 500), null, "accepted while out of descriptors");
    await waitLine("freed");
    // Bounded by time, not tries: while the new server takes the port, connects are refused at once.
    let answer: string | null = null;
    const until = performance.now() + 8000;
    while (answer === null && performance.now() < until) {
      answer = await tryOnce(port, 500);
      if (answer === null) await delay(100);
    }
    if (answer === null) {
      child.kill("SIGKILL");
      const err = await new Response(child.stderr).text();
      assert.fail(`no connection was accepted after the descriptors were freed: ${out}${err}`);
    }
    assert.equal(answer, "ok");
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* ended */ }
    await lines.cancel().catch(() => {});
    await child.stderr.cancel().catch(() => {}); // read already when the child failed
    await child.status;
  }
});
