/**
 * @module tls_listener
 * TLS for the own HTTP/1.1 server, with Nagle's algorithm off.
 *
 * Why not `Deno.listenTls`: Deno 2.9.6 keeps Nagle on for the sockets it accepts and `TlsConn` has
 * no `setNoDelay`, so a small write waits for the ACK of the one before it, which a client delays
 * up to 40 ms (measured: 44 ms more per kept-alive HTTP/1.1 answer, `bench/tls_delay.ts`). Deno's
 * `node:tls` server can turn it off per socket. Each accepted socket is handed to the server as a
 * {@link Deno.Conn}-shaped object ({@link NodeTlsConn}): reads copy from the socket's data events
 * (pausing it while more than {@link HIGH_WATER} bytes wait), writes resolve once the socket
 * took the bytes.
 * Must never: hand out a connection before its handshake completed; let a socket error become an
 * uncaught exception.
 */

// Types only: `node:tls` loads Deno's Node layer (~2.6 MB of idle RSS measured), so it is imported
// when a TLS listener starts, never by a plain-HTTP relay.
import type * as tls from "node:tls";
import type { Buffer } from "node:buffer";

/** What the own server needs of a listener (`Deno.TcpListener` has it, `ready` aside). */
export interface ConnListener {
  readonly addr: Deno.NetAddr;
  /** Settles once connections can come; absent when they can at once. */
  readonly ready?: Promise<void>;
  accept(): Promise<Deno.Conn<Deno.NetAddr>>;
  close(): void;
}

/** Bytes read from a socket and not taken yet above which it is paused. */
const HIGH_WATER = 64 * 1024;

function netAddr(hostname: string | undefined, port: number | undefined): Deno.NetAddr {
  return { transport: "tcp", hostname: hostname ?? "", port: port ?? 0 };
}

/** One accepted TLS socket, read and written like a `Deno.Conn`. */
export class NodeTlsConn {
  readonly remoteAddr: Deno.NetAddr;
  readonly localAddr: Deno.NetAddr;
  readonly #sock: tls.TLSSocket;
  readonly #queue: Uint8Array[] = [];
  #queued = 0;
  #paused = false;
  #ended = false;
  #error: Error | null = null;
  #closed = false;
  #reader:
    | { buf: Uint8Array; resolve: (n: number | null) => void; reject: (e: Error) => void }
    | null = null;

  constructor(sock: tls.TLSSocket) {
    this.#sock = sock;
    this.remoteAddr = netAddr(sock.remoteAddress, sock.remotePort);
    this.localAddr = netAddr(sock.localAddress, sock.localPort);
    sock.setNoDelay(true);
    sock.on("data", (chunk: Buffer) => this.#onData(chunk));
    sock.on("end", () => this.#onEnd(null));
    sock.on("close", () => this.#onEnd(null));
    sock.on("error", (err: Error) => this.#onEnd(err));
  }

  #onData(chunk: Uint8Array): void {
    const r = this.#reader;
    if (r !== null && this.#queued === 0) {
      this.#reader = null;
      const n = Math.min(chunk.byteLength, r.buf.byteLength);
      r.buf.set(chunk.subarray(0, n));
      if (n < chunk.byteLength) this.#push(chunk.subarray(n));
      r.resolve(n);
      return;
    }
    this.#push(chunk);
  }

  #push(chunk: Uint8Array): void {
    this.#queue.push(chunk);
    this.#queued += chunk.byteLength;
    if (!this.#paused && this.#queued > HIGH_WATER) {
      this.#paused = true;
      this.#sock.pause();
    }
  }

  #onEnd(err: Error | null): void {
    if (err !== null) this.#error ??= err;
    this.#ended = true;
    const r = this.#reader;
    if (r === null || this.#queued > 0) return;
    this.#reader = null;
    if (this.#error !== null && !this.#closed) r.reject(this.#error);
    else r.resolve(null);
  }

  /** Like `Deno.Conn.read`: the bytes copied into `buf`, or null at the end of the stream. */
  read(buf: Uint8Array): Promise<number | null> {
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("closed"));
    if (this.#queued > 0) {
      let n = 0;
      while (n < buf.byteLength && this.#queue.length > 0) {
        const head = this.#queue[0]!;
        const take = Math.min(head.byteLength, buf.byteLength - n);
        buf.set(head.subarray(0, take), n);
        n += take;
        if (take === head.byteLength) this.#queue.shift();
        else this.#queue[0] = head.subarray(take);
      }
      this.#queued -= n;
      if (this.#paused && this.#queued <= HIGH_WATER / 2) {
        this.#paused = false;
        this.#sock.resume();
      }
      return Promise.resolve(n);
    }
    if (this.#ended) {
      return this.#error !== null ? Promise.reject(this.#error) : Promise.resolve(null);
    }
    return new Promise((resolve, reject) => {
      this.#reader = { buf, resolve, reject };
    });
  }

  /** Like `Deno.Conn.write`: resolves with the whole length once the socket took the bytes. */
  write(bytes: Uint8Array): Promise<number> {
    if (this.#closed || this.#sock.destroyed) {
      return Promise.reject(new Deno.errors.BadResource("closed"));
    }
    return new Promise((resolve, reject) => {
      this.#sock.write(bytes, (err?: Error | null) => {
        if (err) reject(err);
        else resolve(bytes.byteLength);
      });
    });
  }

  /** Sends the TLS close and the end of the stream; reading goes on. */
  closeWrite(): Promise<void> {
    if (this.#closed || this.#sock.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      // A socket destroyed before its end was flushed never finishes: its close settles it.
      this.#sock.once("close", () => resolve());
      this.#sock.end(() => resolve());
    });
  }

  /**
   * Closes; a read waiting is rejected, as Deno's is. With nothing left to send, the TLS close
   * goes out first: a client that reads to the end (a close-delimited body) treats an end without
   * it as a truncation (rustls: "peer closed connection without sending TLS close_notify"). With
   * bytes still queued (a client that stopped reading), at once.
   */
  close(): void {
    if (this.#closed) throw new Deno.errors.BadResource("closed");
    this.#closed = true;
    const sock = this.#sock;
    // Ended already (a lingering close's closeWrite): its finish has passed, so destroy now.
    if (!sock.writableEnded && sock.writableLength === 0 && !sock.destroyed) {
      sock.once("finish", () => sock.destroy());
      sock.end();
    } else {
      sock.destroy();
    }
    const r = this.#reader;
    this.#reader = null;
    r?.reject(new Deno.errors.Interrupted("closed"));
  }

  setNoDelay(): void {}
}

/**
 * Listens with TLS (HTTP/1.1 by ALPN) on `hostname:port`, Nagle off on every accepted socket.
 * Throws like `Deno.listen` (`AddrInUse` and the like) and knows its address at once: the address
 * is bound with `Deno.listen` first, then let go and taken by the `node:tls` server, whose own
 * listen reports only later. `ready` settles once it listens; a failure there (the port taken in
 * between) rejects it and ends `accept`.
 */
export function listenTlsNoDelay(opts: {
  hostname: string;
  port: number;
  cert: string;
  key: string;
  /** A handshake not done in this many ms is dropped. */
  handshakeTimeoutMs: number;
  /**
   * Most sockets open at once, handshakes included (0 = no cap); one more is closed as it comes,
   * before its handshake. Deno's `node:tls` server stops accepting for good once it runs out of
   * descriptors (measured: no error event, no accept after they were freed), so they must not
   * run out through it.
   */
  maxSockets: number;
  /**
   * When no connection came for this long, the listener connects to itself; if that connection is
   * not accepted either, the `node:tls` server is stuck (descriptors ran out through something
   * else) and is replaced by a new one on the same port. Default 30,000; 0 = never.
   */
  livenessMs?: number;
  /** Told when a stuck server was replaced (or could not be). */
  onStall?: (err: Error) => void;
}): ConnListener {
  const probe = Deno.listen({ hostname: opts.hostname, port: opts.port });
  const addr = probe.addr;
  probe.close();
  type Waiter = { res: (c: Deno.Conn<Deno.NetAddr>) => void; rej: (e: Error) => void };
  const waiting: Waiter[] = [];
  const accepted: Deno.Conn<Deno.NetAddr>[] = [];
  let closed = false;
  let failure: Error | null = null;
  let server: tls.Server | null = null;
  /** Sockets open (handshakes included), across servers: a replaced one's stay open. */
  let open = 0;
  /** Connections seen, and when the last came: what the liveness check looks at. */
  let seen = 0;
  let lastSeen = performance.now();
  const end = (err: Error) => {
    for (const w of waiting.splice(0)) w.rej(err);
  };
  const onSocket = (sock: tls.TLSSocket) => {
    if (closed) return void sock.destroy();
    const conn = new NodeTlsConn(sock) as unknown as Deno.Conn<Deno.NetAddr>;
    const w = waiting.shift();
    if (w !== undefined) w.res(conn);
    else accepted.push(conn);
  };
  /** A `node:tls` server listening on the address; rejects with its listen error. */
  const startServer = (mod: typeof tls): Promise<tls.Server> =>
    new Promise((resolve, reject) => {
      const s = mod.createServer({
        cert: opts.cert,
        key: opts.key,
        ALPNProtocols: ["http/1.1"],
        handshakeTimeout: opts.handshakeTimeoutMs,
      }, onSocket);
      s.on("connection", (raw: { destroy(): void; once(e: "close", f: () => void): void }) => {
        seen++;
        lastSeen = performance.now();
        if (opts.maxSockets > 0 && open >= opts.maxSockets) return void raw.destroy();
        open++;
        raw.once("close", () => open--);
      });
      // A failed handshake, one not done within the timeout, or a client gone before it ended:
      // that socket only. Deno's node:tls reports the timeout but leaves the socket open.
      s.on("tlsClientError", (_err: Error, sock: tls.TLSSocket) => sock.destroy());
      s.once("error", reject);
      s.listen(addr.port, addr.hostname, () => {
        s.removeAllListeners("error");
        s.on("error", () => {});
        resolve(s);
      });
    });
  const ready = import("node:tls").then(async (mod) => {
    if (closed) return;
    try {
      server = await startServer(mod);
    } catch (err) {
      failure = err as Error;
      closed = true;
      end(failure);
      throw err;
    }
    const livenessMs = opts.livenessMs ?? 30_000;
    if (livenessMs > 0) watchLiveness(mod, livenessMs);
  });
  ready.catch(() => {});
  let timer: ReturnType<typeof setInterval> | undefined;
  const watchLiveness = (mod: typeof tls, ms: number) => {
    let checking = false;
    const restart = async () => {
      try {
        server = await startServer(mod);
        lastSeen = performance.now();
        opts.onStall?.(new Error("the TLS listener stopped accepting; a new one took its port"));
      } catch (err) {
        opts.onStall?.(err as Error); // tried again at the next look
      }
    };
    const check = async () => {
      if (closed || checking || (server !== null && performance.now() - lastSeen < ms)) return;
      checking = true;
      try {
        if (server === null) return await restart();
        const before = seen;
        let self: Deno.TcpConn;
        try {
          self = await Deno.connect({ hostname: addr.hostname, port: addr.port });
        } catch {
          return; // no descriptor for it either, or refused: look again next time
        }
        const until = performance.now() + Math.min(ms, 2000);
        while (seen === before && performance.now() < until) {
          await new Promise((r) => setTimeout(r, 20));
        }
        try {
          self.close();
        } catch { /* closed */ }
        if (seen !== before || closed) return;
        // Stuck: a new server takes the port; the old one's connections go on.
        const stuck: tls.Server = server;
        server = null;
        await Promise.race([
          new Promise<void>((r) => stuck.close(() => r())),
          new Promise((r) => setTimeout(r, 1000)),
        ]);
        await restart();
      } finally {
        checking = false;
      }
    };
    timer = setInterval(() => void check(), ms);
    Deno.unrefTimer(timer);
  };
  return {
    addr,
    ready,
    accept: () => {
      if (failure !== null) return Promise.reject(failure);
      if (closed) return Promise.reject(new Deno.errors.BadResource("listener closed"));
      const c = accepted.shift();
      if (c !== undefined) return Promise.resolve(c);
      return new Promise((res, rej) => waiting.push({ res, rej }));
    },
    close: () => {
      if (closed) return;
      closed = true;
      if (timer !== undefined) clearInterval(timer);
      (server as tls.Server | null)?.close();
      for (const c of accepted.splice(0)) c.close();
      end(new Deno.errors.BadResource("listener closed"));
    },
  };
}
