/**
 * Raw-wire harness for the HTTP framing tests: a fake Server A that logs every byte and parses
 * requests strictly (RFC 9112), a raw client that writes given bytes in given pieces and parses
 * whatever comes back leniently, the relay started through its real entry point, and the oracle.
 *
 * The oracle: A parsed exactly the requests whose answers the proxy delivered, in order and with
 * the same method, target and body; every client reads only answers to its own requests; A runs no
 * request that no client got an answer for (a smuggled one); no stray bytes reach a client or are
 * left over at A. A's answers carry `x-a-seq: N` (N = A's request number) so the oracle tells them
 * from the proxy's own answers. On top of that, {@link policyViolations} checks the outcome the
 * relay's framing policy requires for the vector (refused with which code, which body A gets...).
 */

import { stopChild } from "./helpers.ts";
import {
  type Identity,
  type Outcome,
  type RequestVector,
  type ResponseExpect,
  responseTarget,
  type Vector,
} from "./framing_corpus.ts";

const HOST = "127.0.0.1";
const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** Latin-1 bytes of `s` (one character, one byte). */
export function latin1(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
}

/** `bytes` as a Latin-1 string. */
export function text(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    s += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return s;
}

/** A short printable rendering of bytes for failure messages. */
export function show(s: string, max = 240): string {
  const e = JSON.stringify(s.length > max ? s.slice(0, max) + "…" : s);
  return e;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------------------------------------
// A's strict request parser.

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP\/1\.([01])$/;
// Field values: VCHAR, obs-text, SP, HTAB; nothing else (no CTL, no bare CR or LF).
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const CHUNK_EXT =
  /^((?:[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:[ \t]*=[ \t]*(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|"(?:[^"\\]|\\.)*"))?)*)$/;

/** A request head as A parsed it. */
export interface AHead {
  method: string;
  target: string;
  headers: Array<[string, string]>;
  /** How many content-length and transfer-encoding lines the head had. */
  framingLines: number;
  framing: { kind: "none" } | { kind: "length"; length: number } | { kind: "chunked" };
}

type ParseStep =
  | { kind: "need"; head: AHead | null }
  | { kind: "request"; head: AHead; body: Uint8Array; used: number }
  | { kind: "error"; error: string };

function owsTrim(s: string): string {
  let a = 0;
  let b = s.length;
  while (a < b && (s[a] === " " || s[a] === "\t")) a++;
  while (b > a && (s[b - 1] === " " || s[b - 1] === "\t")) b--;
  return s.slice(a, b);
}

function indexOfCrlfCrlf(buf: Uint8Array, from = 0): number {
  for (let i = from; i + 3 < buf.length; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}

function indexOfCrlf(buf: Uint8Array, from: number): number {
  for (let i = from; i + 1 < buf.length; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10) return i;
  }
  return -1;
}

/** Parses a request head (without the blank line) strictly; a string is the error. */
export function parseStrictHead(head: string): AHead | string {
  const lines = head.split("\r\n");
  if (lines.some((l) => l.includes("\r") || l.includes("\n"))) return "bare CR or LF in the head";
  const m = REQUEST_LINE.exec(lines[0] ?? "");
  if (m === null) return `bad request line ${show(lines[0] ?? "", 80)}`;
  const headers: Array<[string, string]> = [];
  let hosts = 0;
  let length: number | null = null;
  let te: string[] | null = null;
  let framingLines = 0;
  for (const line of lines.slice(1)) {
    if (line.startsWith(" ") || line.startsWith("\t")) return "obs-fold";
    const colon = line.indexOf(":");
    if (colon <= 0) return `bad header line ${show(line, 80)}`;
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) return `bad header name ${show(name, 80)}`;
    const value = owsTrim(line.slice(colon + 1));
    if (!FIELD_VALUE.test(value)) return `bad header value ${show(value, 80)}`;
    const lower = name.toLowerCase();
    headers.push([lower, value]);
    if (lower === "host") hosts++;
    if (lower === "content-length") {
      framingLines++;
      if (!/^\d{1,15}$/.test(value)) return `bad content-length ${show(value)}`;
      const n = Number(value);
      if (length !== null && length !== n) return "conflicting content-length";
      length = n;
    }
    if (lower === "transfer-encoding") {
      framingLines++;
      te = [...(te ?? []), ...value.split(",").map(owsTrim)];
    }
  }
  if (m[3] === "1" && hosts !== 1) return `${hosts} Host headers`;
  let framing: AHead["framing"] = { kind: "none" };
  if (te !== null) {
    if (length !== null) return "both content-length and transfer-encoding";
    if (te.length !== 1 || te[0]!.toLowerCase() !== "chunked") {
      return `transfer-encoding ${show(te.join(","))}`;
    }
    framing = { kind: "chunked" };
  } else if (length !== null && length > 0) {
    framing = { kind: "length", length };
  }
  return { method: m[1]!, target: m[2]!, headers, framingLines, framing };
}

/** Parses one request from the start of `buf`, strictly. */
export function parseStrictRequest(buf: Uint8Array): ParseStep {
  const end = indexOfCrlfCrlf(buf);
  if (end < 0) {
    // A bare LF ends no line for A: seeing "\n\n" without CRLFs means the head is malformed.
    const t = text(buf.subarray(0, Math.min(buf.length, 70_000)));
    if (/(^|[^\r])\n/.test(t)) return { kind: "error", error: "bare LF in the head" };
    if (buf.length > 65_536) return { kind: "error", error: "head too large" };
    return { kind: "need", head: null };
  }
  const head = parseStrictHead(text(buf.subarray(0, end)));
  if (typeof head === "string") return { kind: "error", error: head };
  let pos = end + 4;
  if (head.framing.kind === "none") {
    return { kind: "request", head, body: new Uint8Array(), used: pos };
  }
  if (head.framing.kind === "length") {
    if (buf.length - pos < head.framing.length) return { kind: "need", head };
    return {
      kind: "request",
      head,
      body: buf.slice(pos, pos + head.framing.length),
      used: pos + head.framing.length,
    };
  }
  const parts: Uint8Array[] = [];
  while (true) {
    const eol = indexOfCrlf(buf, pos);
    if (eol < 0) {
      if (buf.length - pos > 4096) return { kind: "error", error: "chunk size line too long" };
      if (buf.subarray(pos).includes(10)) return { kind: "error", error: "bare LF in chunk line" };
      return { kind: "need", head };
    }
    const line = text(buf.subarray(pos, eol));
    const sm = /^([0-9A-Fa-f]{1,8})(.*)$/.exec(line);
    if (sm === null || !CHUNK_EXT.test(sm[2]!)) {
      return { kind: "error", error: `bad chunk line ${show(line, 60)}` };
    }
    const size = parseInt(sm[1]!, 16);
    pos = eol + 2;
    if (size === 0) {
      // Trailer section: field lines until an empty line.
      while (true) {
        const tEol = indexOfCrlf(buf, pos);
        if (tEol < 0) return { kind: "need", head };
        if (tEol === pos) {
          pos += 2;
          break;
        }
        const tl = text(buf.subarray(pos, tEol));
        const colon = tl.indexOf(":");
        if (
          colon <= 0 || !TOKEN.test(tl.slice(0, colon)) || !FIELD_VALUE.test(tl.slice(colon + 1))
        ) {
          return { kind: "error", error: `bad trailer line ${show(tl, 60)}` };
        }
        pos = tEol + 2;
      }
      let total = 0;
      for (const p of parts) total += p.length;
      const body = new Uint8Array(total);
      let off = 0;
      for (const p of parts) {
        body.set(p, off);
        off += p.length;
      }
      return { kind: "request", head, body, used: pos };
    }
    if (buf.length - pos < size + 2) return { kind: "need", head };
    if (buf[pos + size] !== 13 || buf[pos + size + 1] !== 10) {
      return { kind: "error", error: "chunk data not followed by CRLF" };
    }
    parts.push(buf.slice(pos, pos + size));
    pos += size + 2;
  }
}

// ---------------------------------------------------------------------------------------------
// The fake Server A.

/** One request A parsed, with its number. */
export interface ARequest {
  seq: number;
  conn: number;
  method: string;
  target: string;
  headers: Array<[string, string]>;
  body: string;
  framingLines: number;
  epoch: number;
}

/** One connection to A, as A saw it. */
export interface AConn {
  index: number;
  /** Every byte received, with the epoch (vector) it arrived in. */
  chunks: Array<{ epoch: number; bytes: Uint8Array }>;
  /** Bytes received and not yet parsed into a whole request. */
  buffer: Uint8Array;
  /** A head whose body has not arrived in full. */
  pendingHead: AHead | null;
  error: { epoch: number; message: string } | null;
  /** Why no further byte may arrive here, once A sent an answer that spoils the connection. */
  tainted: { epoch: number; reason: string } | null;
  bytesAfterTaint: number;
  /** Answers A has queued on this connection and not yet written. */
  unanswered: number;
  closed: boolean;
  /** Who closed first: the proxy (EOF seen by A) or A. */
  closedBy: "proxy" | "a" | null;
  socket: Deno.Conn;
}

/** A scripted raw answer for one target. */
export interface AScript {
  segments: string[];
  gapMs: number;
  close: boolean;
  noReuse: boolean;
}

/** Options of {@link FakeA}. */
export interface FakeAOptions {
  /** Targets containing `/slow` are answered after this many ms (default 600). */
  slowMs?: number;
}

/**
 * A raw-TCP Server A on 127.0.0.1:0. It parses every byte strictly, numbers each request it runs
 * (`x-a-seq`), answers in order per connection, and by default answers 200 with a JSON body
 * naming the request. Per target, a scripted raw answer can replace that.
 */
export class FakeA {
  readonly port: number;
  readonly url: string;
  readonly requests: ARequest[] = [];
  readonly conns: AConn[] = [];
  readonly scripts: Map<string, AScript> = new Map();
  /** Answer each request once its head is in, before reading its body. */
  answerEarly = false;
  /** Increments per vector; everything A records is tagged with it. */
  epoch = 0;
  #seq = 0;
  #listener: Deno.Listener;
  #tasks = new Set<Promise<void>>();
  #slowMs: number;
  #closed = false;

  constructor(options: FakeAOptions = {}) {
    this.#slowMs = options.slowMs ?? 600;
    this.#listener = Deno.listen({ hostname: HOST, port: 0 });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.url = `http://${HOST}:${this.port}`;
    this.#track(this.#accept());
  }

  #track(p: Promise<void>): void {
    this.#tasks.add(p);
    p.finally(() => this.#tasks.delete(p));
  }

  async #accept(): Promise<void> {
    try {
      for await (const socket of this.#listener) {
        const conn: AConn = {
          index: this.conns.length,
          chunks: [],
          buffer: new Uint8Array(),
          pendingHead: null,
          error: null,
          tainted: null,
          bytesAfterTaint: 0,
          unanswered: 0,
          closed: false,
          closedBy: null,
          socket,
        };
        this.conns.push(conn);
        this.#track(this.#serve(conn));
      }
    } catch { /* listener closed */ }
  }

  /** Starts a new vector: scripts and modes are cleared, records stay (tagged by epoch). */
  begin(): number {
    this.scripts.clear();
    this.answerEarly = false;
    return ++this.epoch;
  }

  /** Requests A parsed in `epoch`. */
  requestsOf(epoch: number): ARequest[] {
    return this.requests.filter((r) => r.epoch === epoch);
  }

  /** Bytes A received in `epoch`, per connection, for failure messages. */
  bytesOf(epoch: number): string[] {
    const out: string[] = [];
    for (const c of this.conns) {
      const mine = c.chunks.filter((ch) => ch.epoch === epoch);
      if (mine.length > 0) {
        out.push(`conn ${c.index}: ${show(mine.map((m) => text(m.bytes)).join(""), 600)}`);
      }
    }
    return out;
  }

  /**
   * Closes every connection that is not clean (left-over bytes, errors, tainted, answers still to
   * come), so that nothing from one vector can reach the next.
   */
  async dropUnclean(): Promise<number> {
    let n = 0;
    for (const c of this.conns) {
      if (c.closed) continue;
      if (
        c.buffer.length > 0 || c.pendingHead !== null || c.error !== null || c.tainted !== null ||
        c.unanswered > 0
      ) {
        this.#close(c, "a");
        n++;
      }
    }
    // Give the proxy a moment to see the close before it picks an idle connection again.
    if (n > 0) await delay(60);
    return n;
  }

  #close(c: AConn, by: "proxy" | "a"): void {
    if (c.closed) return;
    c.closed = true;
    c.closedBy = by;
    try {
      c.socket.close();
    } catch { /* already closed */ }
  }

  async #serve(c: AConn): Promise<void> {
    const buf = new Uint8Array(65536);
    let answering: Promise<void> = Promise.resolve();
    /** The sequence number given to the head in `pendingHead` (early answers). */
    let earlySeq: number | null = null;
    while (true) {
      let n: number | null;
      try {
        n = await c.socket.read(buf);
      } catch {
        n = null;
      }
      if (n === null) {
        this.#close(c, c.closed ? (c.closedBy ?? "a") : "proxy");
        break;
      }
      const bytes = buf.slice(0, n);
      c.chunks.push({ epoch: this.epoch, bytes });
      if (c.tainted !== null) c.bytesAfterTaint += n;
      if (c.error !== null) continue;
      c.buffer = concat(c.buffer, bytes);
      while (c.buffer.length > 0) {
        const step = parseStrictRequest(c.buffer);
        if (step.kind === "error") {
          c.error = { epoch: this.epoch, message: step.error };
          const reply =
            "HTTP/1.1 400 Bad Request\r\nx-a-seq: parse-error\r\nconnection: close\r\n" +
            "content-length: 0\r\n\r\n";
          answering = answering.then(() => this.#write(c, reply)).then(() => this.#close(c, "a"));
          break;
        }
        if (step.kind === "need") {
          c.pendingHead = step.head;
          if (step.head !== null && this.answerEarly && earlySeq === null) {
            const seq = ++this.#seq;
            earlySeq = seq;
            const head = step.head;
            answering = this.#queue(
              c,
              answering,
              () => this.#answer(c, seq, head.method, head.target),
            );
          }
          break;
        }
        c.buffer = c.buffer.subarray(step.used);
        c.pendingHead = null;
        const early = earlySeq;
        earlySeq = null;
        const seq = early ?? ++this.#seq;
        this.requests.push({
          seq,
          conn: c.index,
          method: step.head.method,
          target: step.head.target,
          headers: step.head.headers,
          body: text(step.body),
          framingLines: step.head.framingLines,
          epoch: this.epoch,
        });
        // An early answer went out when the head came; otherwise the whole request is in now.
        if (early === null) {
          const { method, target } = step.head;
          answering = this.#queue(c, answering, () => this.#answer(c, seq, method, target));
        }
      }
    }
    await answering.catch(() => {});
  }

  /** Chains an answer after the ones before it on `c` (answers go out in request order). */
  #queue(c: AConn, before: Promise<void>, answer: () => Promise<void>): Promise<void> {
    c.unanswered++;
    return before.then(answer).finally(() => c.unanswered--);
  }

  async #write(c: AConn, s: string): Promise<void> {
    if (c.closed) return;
    const bytes = latin1(s);
    let off = 0;
    try {
      while (off < bytes.length) off += await c.socket.write(bytes.subarray(off));
    } catch { /* the proxy went away */ }
  }

  async #answer(c: AConn, seq: number, method: string, target: string): Promise<void> {
    const script = this.scripts.get(target);
    if (script !== undefined) {
      for (let i = 0; i < script.segments.length; i++) {
        if (i > 0) await delay(script.gapMs);
        await this.#write(c, script.segments[i]!.replaceAll("{seq}", String(seq)));
      }
      if (script.noReuse) c.tainted = { epoch: this.epoch, reason: "A's answer spoiled it" };
      if (script.close) this.#close(c, "a");
      return;
    }
    if (target.includes("/slow")) await delay(this.#slowMs);
    const body = JSON.stringify({ seq, method, target });
    await this.#write(
      c,
      `HTTP/1.1 200 OK\r\nx-a-seq: ${seq}\r\ncontent-type: application/json\r\n` +
        `content-length: ${body.length}\r\n\r\n${method === "HEAD" ? "" : body}`,
    );
  }

  /** Stops listening and closes every connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch { /* closed */ }
    for (const c of this.conns) this.#close(c, "a");
    await Promise.allSettled([...this.#tasks]);
  }
}

// ---------------------------------------------------------------------------------------------
// The client side: a lenient response parser and a raw client.

/** One final response a client read (interim 1xx answers attached). */
export interface ClientResponse {
  status: number;
  headers: Array<[string, string]>;
  body: string;
  /** False when the connection ended before the body did. */
  complete: boolean;
  interim: number[];
}

function header(r: { headers: Array<[string, string]> }, name: string): string | null {
  const all = r.headers.filter(([n]) => n === name).map(([, v]) => v);
  return all.length === 0 ? null : all.join(", ");
}

/** `x-a-seq` of a response: a number for A's answers, null for the proxy's own. */
export function aSeq(r: ClientResponse): string | null {
  return header(r, "x-a-seq");
}

/**
 * Parses the responses in `buf`, leniently: CRLF or LF line ends, content-length, chunked and
 * close-delimited bodies, interim 1xx skipped. `methods[i]` is the method of the i-th request
 * (HEAD answers have no body). `ended`: the connection is closed, so open bodies end here.
 * `rest` holds bytes that are not a response (stray bytes).
 */
export function parseResponses(
  buf: Uint8Array,
  methods: string[],
  ended: boolean,
): { responses: ClientResponse[]; rest: string; waiting: boolean } {
  const s = text(buf);
  const responses: ClientResponse[] = [];
  let pos = 0;
  let interim: number[] = [];
  while (pos < s.length) {
    let headEnd = s.indexOf("\r\n\r\n", pos);
    let sepLen = 4;
    const lf = s.indexOf("\n\n", pos);
    if (lf >= 0 && (headEnd < 0 || lf < headEnd)) {
      headEnd = lf;
      sepLen = 2;
    }
    const statusLine = /^HTTP\/1\.[01] (\d{3})/.exec(s.slice(pos, pos + 12));
    if (statusLine === null) {
      // Not a response: unless it may still become one, it is stray.
      if ("HTTP/1.1 ".startsWith(s.slice(pos, pos + 9)) && !ended) {
        return { responses, rest: "", waiting: true };
      }
      return { responses, rest: s.slice(pos), waiting: false };
    }
    if (headEnd < 0) return { responses, rest: ended ? s.slice(pos) : "", waiting: !ended };
    const lines = s.slice(pos, headEnd).split(/\r?\n/);
    const status = Number(statusLine[1]);
    const headers: Array<[string, string]> = [];
    for (const line of lines.slice(1)) {
      const c = line.indexOf(":");
      if (c > 0) headers.push([line.slice(0, c).trim().toLowerCase(), line.slice(c + 1).trim()]);
    }
    pos = headEnd + sepLen;
    if (status >= 100 && status < 200 && status !== 101) {
      interim.push(status);
      continue;
    }
    const method = methods[responses.length] ?? "GET";
    const r: ClientResponse = { status, headers, body: "", complete: true, interim };
    interim = [];
    const te = header(r, "transfer-encoding");
    const cl = header(r, "content-length");
    if (method === "HEAD" || status === 204 || status === 304) {
      responses.push(r);
      continue;
    }
    if (te !== null && /chunked\s*$/i.test(te)) {
      let body = "";
      let done = false;
      while (true) {
        const eol = s.indexOf("\r\n", pos);
        if (eol < 0) break;
        const size = parseInt(s.slice(pos, eol).split(";")[0]!.trim(), 16);
        if (!Number.isFinite(size)) {
          // A broken chunk line: what follows is not this body.
          return {
            responses: [...responses, { ...r, body, complete: false }],
            rest: s.slice(pos),
            waiting: false,
          };
        }
        if (size === 0) {
          const end = s.indexOf("\r\n\r\n", eol);
          const end2 = s.startsWith("\r\n", eol + 2) ? eol + 4 : end < 0 ? -1 : end + 4;
          if (end2 < 0) break;
          pos = end2;
          done = true;
          break;
        }
        if (s.length < eol + 2 + size + 2) break;
        body += s.slice(eol + 2, eol + 2 + size);
        pos = eol + 2 + size + 2;
      }
      if (!done) {
        if (!ended) return { responses, rest: "", waiting: true };
        responses.push({ ...r, body, complete: false });
        return { responses, rest: "", waiting: false };
      }
      responses.push({ ...r, body });
      continue;
    }
    if (cl !== null && /^\d+$/.test(cl)) {
      const n = Number(cl);
      if (s.length - pos < n) {
        if (!ended) return { responses, rest: "", waiting: true };
        responses.push({ ...r, body: s.slice(pos), complete: false });
        return { responses, rest: "", waiting: false };
      }
      responses.push({ ...r, body: s.slice(pos, pos + n) });
      pos += n;
      continue;
    }
    // Close-delimited.
    if (!ended) return { responses, rest: "", waiting: true };
    responses.push({ ...r, body: s.slice(pos) });
    return { responses, rest: "", waiting: false };
  }
  return { responses, rest: "", waiting: false };
}

/** A raw client connection that keeps everything it reads. */
export class RawClient {
  buf: Uint8Array = new Uint8Array();
  ended = false;
  writeError: string | null = null;
  #conn: Deno.Conn;
  #reading: Promise<void>;
  #wake: (() => void) | null = null;

  private constructor(conn: Deno.Conn) {
    this.#conn = conn;
    this.#reading = this.#read();
  }

  static async connect(port: number): Promise<RawClient> {
    const conn = await Deno.connect({ hostname: HOST, port });
    conn.setNoDelay(true);
    return new RawClient(conn);
  }

  async #read(): Promise<void> {
    const chunk = new Uint8Array(65536);
    while (true) {
      let n: number | null;
      try {
        n = await this.#conn.read(chunk);
      } catch {
        n = null;
      }
      if (n === null) break;
      this.buf = concat(this.buf, chunk.slice(0, n));
      this.#wake?.();
    }
    this.ended = true;
    this.#wake?.();
  }

  async write(s: string): Promise<void> {
    if (this.ended || this.writeError !== null) return;
    const bytes = latin1(s);
    let off = 0;
    try {
      while (off < bytes.length) off += await this.#conn.write(bytes.subarray(off));
    } catch (err) {
      this.writeError = err instanceof Error ? err.name : String(err);
    }
  }

  /** Waits until `cond` holds, the connection ends, or `ms` pass; returns whether `cond` holds. */
  async waitFor(cond: () => boolean, ms: number): Promise<boolean> {
    const end = Date.now() + ms;
    while (!cond()) {
      if (this.ended) return cond();
      const left = end - Date.now();
      if (left <= 0) return false;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((r) => {
        this.#wake = r;
        timer = setTimeout(r, Math.min(left, 50));
      });
      clearTimeout(timer);
      this.#wake = null;
    }
    return true;
  }

  /** Responses parsed so far, for requests with these methods. */
  parse(methods: string[]): ReturnType<typeof parseResponses> {
    return parseResponses(this.buf, methods, this.ended);
  }

  async close(): Promise<void> {
    try {
      this.#conn.close();
    } catch { /* closed */ }
    await this.#reading;
  }
}

// ---------------------------------------------------------------------------------------------
// The relay, through its real entry point.

/** The client-facing server the relay runs: its own (`relay`) or Deno.serve (`deno`). */
export type ServerKind = "relay" | "deno";

/** A relay process started from `main.ts`. */
export interface RelayProcess {
  kind: ServerKind;
  port: number;
  pid: number;
  /** The last part of its stdout and stderr (its JSON log), for failure messages. */
  output(): string;
  stop(): Promise<void>;
}

/** Relay settings for the framing runs: short upstream waits, no background requests to A. */
export const RELAY_ENV: Record<string, string> = {
  HOST,
  PORT: "0",
  // A request that hangs at A shows up in seconds, not after 600 s.
  UPSTREAM_TIMEOUT_SEC: "2",
  CLIENT_BODY_TIMEOUT_SEC: "2",
  // Keep-warm and health probes would be A requests no client asked for.
  UPSTREAM_KEEPWARM_SEC: "0",
  HEALTH_CHECK_SEC: "3600",
  HEALTH_CHECK_PATH: "/v1/_framing_probe",
  SHUTDOWN_GRACE_SEC: "0",
};

/** The health path A may see once at start-up (not a client request). */
export const PROBE_PATH = "/v1/_framing_probe";

/** Starts `deno run main.ts` against `upstream` and resolves once it reports its port. */
export async function spawnRelay(
  kind: ServerKind,
  upstream: string,
  extraEnv: Record<string, string> = {},
): Promise<RelayProcess> {
  const keep = ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR"];
  const env: Record<string, string> = {};
  for (const k of keep) {
    const v = Deno.env.get(k);
    if (v !== undefined) env[k] = v;
  }
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--unstable-no-legacy-abort", "-A", MAIN],
    env: { ...env, ...RELAY_ENV, UPSTREAM_SERVER_A: upstream, HTTP_SERVER: kind, ...extraEnv },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  const keepTail = (t: string) => {
    out += t;
    if (out.length > 200_000) out = out.slice(-100_000);
  };
  const drain = (s: ReadableStream<Uint8Array>) =>
    s.pipeThrough(new TextDecoderStream()).pipeTo(new WritableStream({ write: keepTail }))
      .catch(() => {});
  const done = Promise.all([drain(child.stdout), drain(child.stderr)]);
  const stop = async () => {
    await stopChild(child, 3000);
    await done;
  };
  const end = Date.now() + 20_000;
  while (Date.now() < end) {
    const m = /"address":"http:\/\/127\.0\.0\.1:(\d+)"/.exec(out);
    if (m) {
      return { kind, port: Number(m[1]), pid: child.pid, output: () => out.slice(-4000), stop };
    }
    await delay(25);
  }
  await stop();
  throw new Error(`the relay (${kind}) did not report its port: ${out.slice(-2000)}`);
}

// ---------------------------------------------------------------------------------------------
// Running a vector and judging it.

/** What one client connection meant, wrote and read. */
export interface ClientRun {
  label: string;
  expect: Outcome[];
  responses: ClientResponse[];
  rest: string;
  ended: boolean;
  /** Still waiting for a response when the client gave up. */
  waiting: boolean;
  /** Every byte the client read, Latin-1. */
  raw: string;
}

/** Everything the oracle needs about one vector's run. */
export interface VectorRun {
  vector: Vector;
  /** What ran the vector: the relay on its own server or on Deno.serve, or another proxy. */
  server: string;
  clients: ClientRun[];
  a: ARequest[];
  /** A's connections touched in this run. */
  conns: AConn[];
  epoch: number;
  aBytes: string[];
}

/** Wait limits of a run (ms). */
export interface RunLimits {
  /** Longest wait for an expected response. */
  responseMs: number;
  /** Quiet time after the expected responses, to catch stray bytes. */
  quietMs: number;
  /** Longest wait for a proxy to close a connection it must close. */
  closeMs: number;
}

export const DEFAULT_LIMITS: RunLimits = { responseMs: 3500, quietMs: 60, closeMs: 1000 };

const VICTIM = "GET /v1/models HTTP/1.1\r\nHost: r\r\n\r\n";
const VICTIM_ID: Identity = { method: "GET", target: "/v1/models", body: "" };

function fwd(as: Identity): Outcome {
  return { policy: "forward", as };
}

function methodOf(o: Outcome): string {
  return o.as.method;
}

/** How many answers a client waits for: every request except those that must stay unanswered. */
function answerable(expect: Outcome[]): number {
  return expect.filter((o) => o.policy !== "none").length;
}

async function runClient(
  port: number,
  label: string,
  writes: Array<{ bytes: string; pauseMs: number }>,
  expect: Outcome[],
  limits: RunLimits,
  mustClose: boolean,
): Promise<ClientRun> {
  const c = await RawClient.connect(port);
  try {
    const methods = expect.map(methodOf);
    for (const w of writes) {
      if (w.pauseMs > 0) await delay(w.pauseMs);
      await c.write(w.bytes);
    }
    const want = answerable(expect);
    const enough = () => {
      const p = c.parse(methods);
      return !p.waiting && p.responses.length >= want;
    };
    await c.waitFor(enough, limits.responseMs);
    await c.waitFor(() => false, mustClose ? limits.closeMs : limits.quietMs);
    const p = c.parse(methods);
    return {
      label,
      expect,
      responses: p.responses,
      rest: p.rest,
      ended: c.ended,
      waiting: p.waiting,
      raw: text(c.buf),
    };
  } finally {
    await c.close();
  }
}

/** Splits `send` at `splits` into writes `pauseMs` apart. */
function writesOf(v: RequestVector): Array<{ bytes: string; pauseMs: number }> {
  const cuts = [0, ...(v.splits ?? []), v.send.length];
  const out: Array<{ bytes: string; pauseMs: number }> = [];
  for (let i = 0; i + 1 < cuts.length; i++) {
    const piece = v.send.slice(cuts[i], cuts[i + 1]);
    if (piece !== "") out.push({ bytes: piece, pauseMs: i === 0 ? 0 : (v.pauseMs ?? 5) });
  }
  return out;
}

/** The proxy under test: listening on `port`, in front of `a`; `server` names it in results. */
export interface ProxyUnderTest {
  port: number;
  a: FakeA;
  server: string;
}

/** Runs one vector against a proxy. */
export async function runVector(
  v: Vector,
  proxy: ProxyUnderTest,
  limits: RunLimits = DEFAULT_LIMITS,
): Promise<VectorRun> {
  const { port, a } = proxy;
  const epoch = a.begin();
  const firstConn = a.conns.length;
  const clients: ClientRun[] = [];
  if (v.kind === "request") {
    a.answerEarly = v.aAnswersEarly ?? false;
    const mustClose = v.expect.some((o) => o.closeAfter);
    const attacker = runClient(port, "client", writesOf(v), v.expect, limits, mustClose);
    let victim: Promise<ClientRun>;
    if (v.victimAfterMs !== undefined) {
      victim = delay(v.victimAfterMs).then(() =>
        runClient(port, "victim", [{ bytes: VICTIM, pauseMs: 0 }], [fwd(VICTIM_ID)], limits, false)
      );
    } else {
      victim = attacker.then(() =>
        runClient(port, "victim", [{ bytes: VICTIM, pauseMs: 0 }], [fwd(VICTIM_ID)], limits, false)
      );
    }
    clients.push(await attacker, await victim);
  } else {
    const target = responseTarget(v);
    const method = v.method ?? "GET";
    a.scripts.set(target, {
      segments: v.answer,
      gapMs: v.gapMs ?? 40,
      close: v.aCloses ?? false,
      noReuse: v.noReuse ?? false,
    });
    clients.push(await runResponseClient(port, target, method, limits));
    clients.push(
      await runClient(
        port,
        "probe",
        [{ bytes: `GET ${target}/probe HTTP/1.1\r\nHost: r\r\n\r\n`, pauseMs: 0 }],
        [
          fwd({ method: "GET", target: `${target}/probe`, body: "" }),
        ],
        limits,
        false,
      ),
    );
  }
  // A connection that must not be reused must also be closed by the proxy: give it time.
  const tainted = () => a.conns.filter((c) => c.tainted?.epoch === epoch && !c.closed);
  const until = Date.now() + limits.closeMs;
  while (tainted().length > 0 && Date.now() < until) await delay(20);
  // Let A finish parsing what is in flight, and let proxies close upstream connections they gave up.
  const settle = Date.now() + 500;
  while (
    Date.now() < settle &&
    a.conns.some((c) => !c.closed && (c.buffer.length > 0 || c.pendingHead !== null))
  ) {
    await delay(20);
  }
  await delay(20);
  const conns = a.conns.filter((c, i) =>
    i >= firstConn || c.chunks.some((ch) => ch.epoch === epoch)
  );
  return {
    vector: v,
    server: proxy.server,
    clients,
    a: a.requestsOf(epoch).filter((r) => r.target !== PROBE_PATH),
    conns,
    epoch,
    aBytes: a.bytesOf(epoch),
  };
}

/** The response-side client: the scripted request, then a follow-up on the same connection. */
async function runResponseClient(
  port: number,
  target: string,
  method: string,
  limits: RunLimits,
): Promise<ClientRun> {
  const first: Outcome = { policy: "forward", as: { method, target, body: "" } };
  const next: Outcome = {
    policy: "maybe",
    as: { method: "GET", target: `${target}/next`, body: "" },
  };
  const expect = [first, next];
  const methods = [method, "GET"];
  const c = await RawClient.connect(port);
  try {
    await c.write(`${method} ${target} HTTP/1.1\r\nHost: r\r\n\r\n`);
    const one = () => {
      const p = c.parse(methods);
      return !p.waiting && p.responses.length >= 1;
    };
    await c.waitFor(one, limits.responseMs);
    const p1 = c.parse(methods);
    const clean = p1.responses.length === 1 && p1.responses[0]!.complete && p1.rest === "";
    if (!c.ended && clean) {
      await c.write(`GET ${target}/next HTTP/1.1\r\nHost: r\r\n\r\n`);
      const two = () => {
        const p = c.parse(methods);
        return !p.waiting && p.responses.length >= 2;
      };
      await c.waitFor(two, limits.responseMs);
    }
    await c.waitFor(() => false, limits.quietMs);
    const p = c.parse(methods);
    return {
      label: "client",
      expect,
      responses: p.responses,
      rest: p.rest,
      ended: c.ended,
      waiting: p.waiting,
      raw: text(c.buf),
    };
  } finally {
    await c.close();
  }
}

function sameIdentity(r: ARequest, want: Identity): boolean {
  return r.method === want.method && r.target === want.target && r.body === want.body;
}

function describe(r: ARequest): string {
  return `${r.method} ${r.target} with body ${show(r.body, 60)} (A #${r.seq}, conn ${r.conn})`;
}

function describeId(i: Identity): string {
  return `${i.method} ${i.target}${i.body === "" ? "" : ` with body ${show(i.body, 60)}`}`;
}

function describeResponse(r: ClientResponse): string {
  const seq = aSeq(r);
  return `${r.status}${seq === null ? " from the proxy" : ` from A #${seq}`}` +
    `${r.complete ? "" : " (cut short)"} body ${show(r.body, 80)}`;
}

/**
 * What the oracle found, by kind:
 * - `desync`: a client got an answer to another request (or one A never meant), A ran a request
 *   no client made, stray bytes reached a client, A was left holding half a request;
 * - `reuse`: the proxy sent another request on a connection whose last answer left it unusable;
 * - `framing`: ambiguous framing crossed the proxy (two framing header lines to A, both
 *   transfer-encoding and content-length, or conflicting lengths, to a client);
 * - `refused by A`: the proxy forwarded bytes that A's strict parser refuses (no desync: A
 *   answers 400 and closes, but the request never ran).
 */
export interface Violation {
  kind: "desync" | "reuse" | "framing" | "refused by A";
  text: string;
}

/**
 * The oracle, for any proxy: returns what went wrong (empty = no desync). A proxy's own refusals
 * are no desync.
 */
export function desyncViolations(run: VectorRun): Violation[] {
  const out: Violation[] = [];
  const add = (kind: Violation["kind"], text: string) => out.push({ kind, text });
  const claimed = new Set<number>();
  const bySeq = new Map(run.a.map((r) => [r.seq, r]));
  /** Requests each client made that got no answer from A (refused, cut short, unanswered). */
  const unanswered: Array<{ client: ClientRun; index: number }> = [];
  for (const c of run.clients) {
    let lastSeq = 0;
    c.responses.forEach((r, i) => {
      const seq = aSeq(r);
      const te = header(r, "transfer-encoding");
      const cl = r.headers.filter(([n]) => n === "content-length");
      if (te !== null && cl.length > 0) {
        add("framing", `${c.label} got both transfer-encoding and content-length`);
      }
      if (new Set(cl.map(([, v]) => v)).size > 1) {
        add("framing", `${c.label} got conflicting content-lengths`);
      }
      // A's 400 for bytes it could not parse is reported with A's parse error below.
      if (seq === null || seq === "parse-error") return;
      if (!/^\d+$/.test(seq)) {
        add("desync", `${c.label} got a response A never meant for any request (x-a-seq: ${seq})`);
        return;
      }
      const want = c.expect[i];
      if (want === undefined) {
        add(
          "desync",
          `${c.label} got A's answer #${seq} beyond the ${c.expect.length} requests it sent`,
        );
        return;
      }
      const ar = bySeq.get(Number(seq));
      if (ar === undefined) {
        add(
          "desync",
          `${c.label}'s request ${i + 1} (${describeId(want.as)}) got A's answer #${seq}, ` +
            `which answers no request A parsed in this run`,
        );
        return;
      }
      if (claimed.has(ar.seq)) add("desync", `A's answer #${seq} reached a client twice`);
      claimed.add(ar.seq);
      if (ar.seq <= lastSeq) add("desync", `${c.label} got A's answers out of order`);
      lastSeq = ar.seq;
      const ok = [want.as, ...(want.alt ?? [])].some((w) => sameIdentity(ar, w));
      if (!ok) {
        add(
          "desync",
          `${c.label}'s request ${i + 1} (${describeId(want.as)}) got A's answer to ${
            describe(ar)
          }`,
        );
      }
    });
    c.expect.forEach((_, i) => {
      const r = c.responses[i];
      if (r === undefined || aSeq(r) === null || !r.complete) {
        unanswered.push({ client: c, index: i });
      }
    });
    if (c.rest !== "") {
      add("desync", `${c.label} got ${c.rest.length} stray bytes: ${show(c.rest, 120)}`);
    }
  }
  for (const ar of run.a) {
    if (claimed.has(ar.seq)) continue;
    // A ran it but no answer reached its client (refused late, timed out, cut short): no desync
    // as long as it is a request some client did make and did not get another answer for.
    const k = unanswered.findIndex(({ client, index }) => {
      const want = client.expect[index]!;
      return [want.as, ...(want.alt ?? [])].some((w) => sameIdentity(ar, w));
    });
    if (k >= 0) {
      unanswered.splice(k, 1);
      continue;
    }
    add("desync", `A ran a request no client made or got an answer for: ${describe(ar)}`);
  }
  for (const c of run.conns) {
    if (c.error !== null && c.error.epoch === run.epoch) {
      add(
        "refused by A",
        `A could not parse what the proxy sent on conn ${c.index}: ${c.error.message}`,
      );
    }
    if (!c.closed && (c.buffer.length > 0 || c.pendingHead !== null)) {
      add(
        "desync",
        `A is left waiting on conn ${c.index} with ${c.buffer.length} unparsed bytes` +
          (c.pendingHead
            ? ` (a ${c.pendingHead.method} ${c.pendingHead.target} whose body never came)`
            : ""),
      );
    }
    if (c.tainted?.epoch === run.epoch && c.bytesAfterTaint > 0) {
      add(
        "reuse",
        `the proxy wrote ${c.bytesAfterTaint} more bytes on A's conn ${c.index} after ${c.tainted.reason}`,
      );
    }
  }
  for (const r of run.a) {
    if (r.framingLines > 1) {
      add("framing", `A got ${r.framingLines} framing header lines in ${describe(r)}`);
    }
  }
  // The client sent every byte, yet A got a head whose body never came: the proxy announced a
  // body it did not send (on a pooled connection, the next request's bytes would fill it).
  const v = run.vector;
  if (v.kind !== "request" || !v.partialUpstreamOk) {
    for (const c of run.conns) {
      if (c.closed && c.pendingHead !== null && c.chunks.some((ch) => ch.epoch === run.epoch)) {
        add(
          "framing",
          `A got ${c.pendingHead.method} ${c.pendingHead.target} whose body never came ` +
            `(conn ${c.index} closed by ${c.closedBy})`,
        );
      }
    }
  }
  return out;
}

interface ErrorShape {
  error?: { message?: unknown; type?: unknown; code?: unknown };
}

function relayErrorCode(r: ClientResponse): { code: string | null; shaped: boolean } {
  try {
    const j = JSON.parse(r.body) as ErrorShape;
    const e = j.error;
    const shaped = e !== undefined && typeof e.message === "string" && typeof e.type === "string" &&
      typeof e.code === "string";
    return { code: typeof e?.code === "string" ? e.code : null, shaped };
  } catch {
    return { code: null, shaped: false };
  }
}

function checkOutcome(c: ClientRun, i: number, o: Outcome, run: VectorRun, out: string[]): void {
  if (run.server === "deno" && o.onDeno !== undefined) o = { ...o, policy: o.onDeno };
  const r = c.responses[i];
  const where = `${c.label}'s request ${i + 1} (${describeId(o.as)})`;
  const bySeq = new Map(run.a.map((x) => [x.seq, x]));
  if (o.policy === "none") {
    if (r !== undefined) out.push(`${where} must stay unanswered, got ${describeResponse(r)}`);
    return;
  }
  if (r === undefined) {
    if (o.policy === "maybe" && c.ended) return;
    if (o.denoMayClose && run.server === "deno" && c.ended) return;
    out.push(
      `${where} got no answer${c.waiting ? " (still waiting when the client gave up)" : ""}`,
    );
    return;
  }
  const seq = aSeq(r);
  if (o.policy === "refuse") {
    const statuses = o.status ?? [400];
    if (seq !== null) {
      out.push(`${where} must be refused by the relay, but got ${describeResponse(r)}`);
      return;
    }
    if (!statuses.includes(r.status)) {
      out.push(`${where} must be refused with ${statuses.join("/")}, got ${describeResponse(r)}`);
    }
    const { code, shaped } = relayErrorCode(r);
    if (o.code !== undefined && code !== o.code) {
      out.push(`${where} must be refused with code ${o.code}, got ${describeResponse(r)}`);
    } else if (r.body !== "" && !shaped) {
      out.push(
        `${where}: the refusal is not {"error":{"message","type","code"}}: ${show(r.body, 100)}`,
      );
    }
    // A request some client got A's answer for is that client's, not this one's.
    const delivered = new Set(
      run.clients.flatMap((x) => x.responses.map(aSeq)).filter((q) => q !== null).map(Number),
    );
    for (const ar of run.a) {
      if (delivered.has(ar.seq)) continue;
      if ([o.as, ...(o.alt ?? [])].some((w) => sameIdentity(ar, w))) {
        out.push(`${where} must never reach A, but A ran ${describe(ar)}`);
      }
    }
    return;
  }
  if (seq === null || !/^\d+$/.test(seq)) {
    out.push(`${where} must be forwarded, got ${describeResponse(r)}`);
    return;
  }
  const ar = bySeq.get(Number(seq));
  if (ar !== undefined && !sameIdentity(ar, o.as)) {
    out.push(`${where} must reach A as sent, A ran ${describe(ar)}`);
  }
  if (!r.complete) out.push(`${where}: A's answer was cut short`);
}

function checkResponse(c: ClientRun, want: ResponseExpect): string | null {
  const r = c.responses[0];
  if ("oneOf" in want) {
    const errs = want.oneOf.map((w) => checkResponse(c, w));
    return errs.some((e) => e === null) ? null : errs.join("; or ");
  }
  if ("broken" in want) {
    if (r === undefined) return c.ended ? null : "no answer and the connection stayed open";
    const seq = aSeq(r);
    if (seq === null && r.status === 502) return null;
    if (seq !== null && !r.complete) {
      return c.responses.length > 1 ? "the connection went on after a broken answer" : null;
    }
    return `a broken answer from A must end with an error, the client got ${describeResponse(r)}`;
  }
  if (r === undefined) return `no answer (${c.waiting ? "still waiting" : "connection closed"})`;
  const problems: string[] = [];
  if (aSeq(r) === null) problems.push(`got ${describeResponse(r)} instead of A's answer`);
  if (r.status !== want.status) problems.push(`status ${r.status}, want ${want.status}`);
  if (r.body !== want.body) problems.push(`body ${show(r.body, 80)}, want ${show(want.body)}`);
  if (!r.complete) problems.push("the body was cut short");
  if (want.noLength) {
    for (const h of ["content-length", "transfer-encoding"]) {
      const v = header(r, h);
      if (v !== null) problems.push(`${h}: ${v} on a ${r.status}`);
    }
  }
  return problems.length === 0 ? null : problems.join(", ");
}

/** The relay's framing policy for the vector, on top of the desync oracle. */
export function policyViolations(run: VectorRun): string[] {
  const out: string[] = [];
  const v = run.vector;
  for (const c of run.clients) {
    if (c.label === "client" && v.kind === "response") continue;
    c.expect.forEach((o, i) => checkOutcome(c, i, o, run, out));
    if (c.responses.length > c.expect.length) {
      out.push(
        `${c.label} got ${c.responses.length - c.expect.length} answers more than it asked for: ` +
          c.responses.slice(c.expect.length).map(describeResponse).join("; "),
      );
    }
    const closeAt = c.expect.findIndex((o) => o.closeAfter);
    if (closeAt >= 0 && !c.ended) {
      out.push(`${c.label}'s connection must be closed after answer ${closeAt + 1}`);
    }
  }
  if (v.kind === "response") {
    const c = run.clients[0]!;
    const bad = checkResponse(c, v.expect);
    if (bad !== null) out.push(`client: ${bad}`);
    const broken = "broken" in v.expect;
    if (!broken && c.responses[0]?.complete) checkOutcome(c, 1, c.expect[1]!, run, out);
    if (c.responses.length > 2) out.push(`client got ${c.responses.length} answers for 2 requests`);
    for (const conn of run.conns) {
      if (conn.tainted?.epoch === run.epoch && !conn.closed) {
        out.push(`the relay kept A's conn ${conn.index} open after ${conn.tainted.reason}`);
      }
    }
  }
  return out;
}

/** A readable account of a run, for failure messages. */
export function trace(run: VectorRun): string {
  const lines: string[] = [];
  for (const c of run.clients) {
    lines.push(
      `${c.label}: ${c.responses.map(describeResponse).join(" | ") || "no answers"}` +
        `${c.ended ? " [closed]" : ""}${c.waiting ? " [waiting]" : ""}`,
    );
  }
  for (const c of run.clients) lines.push(`${c.label} read ${show(c.raw, 600)}`);
  lines.push(`A ran: ${run.a.map(describe).join("; ") || "nothing"}`);
  for (const b of run.aBytes) lines.push(`A read ${b}`);
  return lines.join("\n");
}

/** Rejects after `ms`, naming `what`; the timer never outlives the promise. */
export async function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
