/**
 * A minimal HTTP/1.1 client for measuring, not for general use: one request at a time on one
 * connection, Nagle off (as curl does), TLS optional, and timestamps taken at the exact points a
 * benchmark needs (request written, first response byte, end of body). Using `fetch` here would
 * add its own pool, decoding and Nagle behaviour to every number.
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Where to connect. */
export interface Target {
  hostname: string;
  port: number;
  tls: boolean;
  /** PEM trust anchors for TLS. */
  caCerts?: string[];
}

/** Parses an http(s) URL into a {@link Target} and the request path. */
export function parseTarget(url: string, caCerts?: string[]): { target: Target; path: string } {
  const u = new URL(url);
  const tls = u.protocol === "https:";
  const target: Target = {
    hostname: u.hostname,
    port: u.port === "" ? (tls ? 443 : 80) : Number(u.port),
    tls,
    ...(caCerts ? { caCerts } : {}),
  };
  return { target, path: u.pathname + u.search };
}

/** Builds request bytes once so the timed loop does no string work. */
export function buildRequest(
  method: string,
  path: string,
  host: string,
  headers: Record<string, string>,
  body: string | null,
): Uint8Array {
  let head = `${method} ${path} HTTP/1.1\r\nhost: ${host}\r\n`;
  for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
  if (body !== null) head += `content-length: ${encoder.encode(body).byteLength}\r\n`;
  head += "\r\n";
  return encoder.encode(head + (body ?? ""));
}

/** Timings of one exchange, in ms from `performance.now()`. */
export interface Timing {
  status: number;
  /** When the request's first byte was handed to the socket. */
  sentAt: number;
  /** When the first response byte arrived. */
  firstByteAt: number;
  /** When the response head was complete. */
  headAt: number;
  /** When the body ended. */
  endAt: number;
  bodyBytes: number;
}

/** One client connection. */
export class Client {
  readonly conn: Deno.Conn;
  /** When the TCP connect started, and when TCP (and TLS) were done. */
  readonly connectStartAt: number;
  readonly connectedAt: number;
  readonly #buf: Uint8Array;
  #left: Uint8Array | null = null;
  closed = false;

  private constructor(conn: Deno.Conn, startAt: number, doneAt: number, bufSize: number) {
    this.#buf = new Uint8Array(bufSize);
    this.conn = conn;
    this.connectStartAt = startAt;
    this.connectedAt = doneAt;
  }

  /** Opens a connection (TCP, then TLS if asked) with Nagle off; `bufSize` is the read size. */
  static async open(t: Target, bufSize = 64 * 1024): Promise<Client> {
    const start = performance.now();
    const tcp = await Deno.connect({ hostname: t.hostname, port: t.port });
    tcp.setNoDelay(true);
    if (!t.tls) return new Client(tcp, start, performance.now(), bufSize);
    const tls = await Deno.startTls(tcp, {
      hostname: t.hostname,
      alpnProtocols: ["http/1.1"],
      ...(t.caCerts ? { caCerts: t.caCerts } : {}),
    });
    await tls.handshake();
    return new Client(tls, start, performance.now(), bufSize);
  }

  async #read(): Promise<Uint8Array | null> {
    if (this.#left !== null) {
      const l = this.#left;
      this.#left = null;
      return l;
    }
    const n = await this.conn.read(this.#buf);
    if (n === null) return null;
    return this.#buf.slice(0, n);
  }

  /**
   * Sends one request and reads the whole response. `onBody` sees body bytes (de-chunked) with
   * their arrival time. Throws if the connection ends early.
   */
  async exchange(
    request: Uint8Array,
    onBody?: (bytes: Uint8Array, at: number) => void,
  ): Promise<Timing> {
    const sentAt = performance.now();
    let off = 0;
    while (off < request.byteLength) off += await this.conn.write(request.subarray(off));
    let firstByteAt = 0;
    let head: Uint8Array = new Uint8Array(0);
    let headEnd = -1;
    while (headEnd < 0) {
      const chunk = await this.#read();
      if (chunk === null) throw new Error("connection closed before the response head");
      if (firstByteAt === 0) firstByteAt = performance.now();
      head = head.byteLength === 0 ? chunk : concat(head, chunk);
      headEnd = indexOfCrlfCrlf(head);
      if (headEnd < 0 && head.byteLength > 65536) throw new Error("response head too large");
    }
    const headAt = performance.now();
    const text = decoder.decode(head.subarray(0, headEnd));
    const status = Number(text.slice(9, 12));
    const lower = text.toLowerCase();
    const chunked = /\r\ntransfer-encoding:[^\r]*chunked/.test(lower);
    const lengthMatch = /\r\ncontent-length:\s*(\d+)/.exec(lower);
    const closeDelimited = !chunked && lengthMatch === null;
    let rest = head.subarray(headEnd + 4);
    let bodyBytes = 0;
    const emit = (b: Uint8Array, at: number) => {
      bodyBytes += b.byteLength;
      onBody?.(b, at);
    };
    if (status === 204 || status === 304) {
      if (rest.byteLength > 0) this.#left = rest;
      return { status, sentAt, firstByteAt, headAt, endAt: performance.now(), bodyBytes };
    }
    if (!chunked && !closeDelimited) {
      let remaining = Number(lengthMatch![1]);
      let at = headAt;
      while (true) {
        if (rest.byteLength > 0) {
          const take = Math.min(remaining, rest.byteLength);
          emit(rest.subarray(0, take), at);
          remaining -= take;
          if (take < rest.byteLength) this.#left = rest.slice(take);
        }
        if (remaining === 0) break;
        const c = await this.#read();
        if (c === null) throw new Error("connection closed mid-body");
        at = performance.now();
        rest = c;
      }
      return { status, sentAt, firstByteAt, headAt, endAt: performance.now(), bodyBytes };
    }
    if (closeDelimited) {
      let at = headAt;
      while (true) {
        if (rest.byteLength > 0) emit(rest, at);
        const c = await this.#read();
        if (c === null) break;
        at = performance.now();
        rest = c;
      }
      this.close();
      return { status, sentAt, firstByteAt, headAt, endAt: performance.now(), bodyBytes };
    }
    const dec = new Dechunker();
    let at = headAt;
    while (true) {
      if (rest.byteLength > 0) {
        for (const p of dec.push(rest)) emit(p, at);
        if (dec.done) {
          if (dec.rest !== null && dec.rest.byteLength > 0) this.#left = dec.rest.slice();
          break;
        }
      }
      const c = await this.#read();
      if (c === null) throw new Error("connection closed mid-body");
      at = performance.now();
      rest = c;
    }
    return { status, sentAt, firstByteAt, headAt, endAt: performance.now(), bodyBytes };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }
}

/** Incremental chunked-transfer decoder. */
export class Dechunker {
  #state: "size" | "data" | "crlf" | "trailer" | "done" = "size";
  #line = "";
  #remaining = 0;
  rest: Uint8Array | null = null;

  get done(): boolean {
    return this.#state === "done";
  }

  push(bytes: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    let i = 0;
    while (i < bytes.byteLength) {
      if (this.#state === "done") {
        this.rest = bytes.subarray(i);
        return out;
      }
      if (this.#state === "data") {
        const take = Math.min(this.#remaining, bytes.byteLength - i);
        out.push(bytes.subarray(i, i + take));
        i += take;
        this.#remaining -= take;
        if (this.#remaining === 0) this.#state = "crlf";
        continue;
      }
      const b = bytes[i++]!;
      if (b !== 10) {
        if (b !== 13) this.#line += String.fromCharCode(b);
        continue;
      }
      const line = this.#line;
      this.#line = "";
      if (this.#state === "crlf") {
        this.#state = "size";
      } else if (this.#state === "trailer") {
        if (line === "") this.#state = "done";
      } else {
        this.#remaining = parseInt(line.split(";")[0]!, 16);
        if (!Number.isFinite(this.#remaining)) throw new Error(`bad chunk size ${line}`);
        this.#state = this.#remaining === 0 ? "trailer" : "data";
      }
    }
    if (this.#state === "done") this.rest = new Uint8Array(0);
    return out;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a, 0);
  out.set(b, a.byteLength);
  return out;
}

function indexOfCrlfCrlf(buf: Uint8Array): number {
  for (let i = 0; i + 3 < buf.byteLength; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}
