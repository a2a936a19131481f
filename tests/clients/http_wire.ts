/**
 * Raw HTTP/1.1 and WebSocket wire helpers for the real-client tests: the fake Server A and the TCP
 * tap both read requests from bytes, so that what a client wrote and what A received can be
 * compared byte for byte, framing included.
 */

import zlib from "node:zlib";

const latin1 = new TextDecoder("latin1");
const utf8 = new TextEncoder();

/** One request parsed from raw bytes. */
export interface WireRequest {
  method: string;
  target: string;
  /** Header names lower-cased, in the order sent. */
  headers: Array<[string, string]>;
  /** The body, de-chunked when it was chunked. */
  body: Uint8Array;
  chunked: boolean;
  /** Offset just past this request in the buffer it was parsed from. */
  end: number;
}

/** The first value of header `name` (lower-case), or null. */
export function header(req: { headers: Array<[string, string]> }, name: string): string | null {
  for (const [n, v] of req.headers) if (n === name) return v;
  return null;
}

function indexOfCrlf2(buf: Uint8Array, from: number): number {
  for (let i = from; i + 3 < buf.byteLength; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}

function indexOfCrlf(buf: Uint8Array, from: number): number {
  for (let i = from; i + 1 < buf.byteLength; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10) return i;
  }
  return -1;
}

/**
 * Parses the request starting at `start`, or returns null while it is incomplete. An upgrade
 * request has no body: the bytes after its head belong to the new protocol.
 */
export function parseRequestAt(buf: Uint8Array, start: number): WireRequest | null {
  const headEnd = indexOfCrlf2(buf, start);
  if (headEnd < 0) return null;
  const lines = latin1.decode(buf.subarray(start, headEnd)).split("\r\n");
  const [method = "", target = ""] = lines[0]!.split(" ");
  const headers: Array<[string, string]> = [];
  for (const line of lines.slice(1)) {
    const i = line.indexOf(":");
    if (i > 0) headers.push([line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim()]);
  }
  let off = headEnd + 4;
  const te = headers.find(([n]) => n === "transfer-encoding")?.[1].toLowerCase() ?? "";
  if (te.includes("chunked")) {
    const parts: Uint8Array[] = [];
    while (true) {
      const lineEnd = indexOfCrlf(buf, off);
      if (lineEnd < 0) return null;
      const size = parseInt(latin1.decode(buf.subarray(off, lineEnd)).split(";")[0]!, 16);
      if (!Number.isFinite(size)) throw new Error("bad chunk size");
      off = lineEnd + 2;
      if (size === 0) {
        // Trailers (none expected) end with an empty line.
        const trailerEnd = indexOfCrlf(buf, off);
        if (trailerEnd < 0) return null;
        off = trailerEnd + 2;
        break;
      }
      if (buf.byteLength < off + size + 2) return null;
      parts.push(buf.slice(off, off + size));
      off += size + 2;
    }
    return { method, target, headers, body: concatBytes(parts), chunked: true, end: off };
  }
  const cl = Number(headers.find(([n]) => n === "content-length")?.[1] ?? "0");
  if (buf.byteLength < off + cl) return null;
  return {
    method,
    target,
    headers,
    body: buf.slice(off, off + cl),
    chunked: false,
    end: off + cl,
  };
}

/** Every complete request in a captured client-to-server byte stream, stopping at an upgrade. */
export function parseRequests(buf: Uint8Array): { requests: WireRequest[]; rest: Uint8Array } {
  const requests: WireRequest[] = [];
  let off = 0;
  while (off < buf.byteLength) {
    const req = parseRequestAt(buf, off);
    if (req === null) break;
    requests.push(req);
    off = req.end;
    if (header(req, "upgrade")?.toLowerCase() === "websocket") break;
  }
  return { requests, rest: buf.subarray(off) };
}

export function concatBytes(parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

export async function writeAll(conn: Deno.Conn, bytes: Uint8Array | string): Promise<void> {
  const b = typeof bytes === "string" ? utf8.encode(bytes) : bytes;
  let off = 0;
  while (off < b.byteLength) off += await conn.write(b.subarray(off));
}

/** One WebSocket frame as read, payload unmasked. */
export interface WsFrame {
  fin: boolean;
  /** permessage-deflate's "compressed" bit (RFC 7692). */
  rsv1: boolean;
  opcode: number;
  payload: Uint8Array;
}

/** Parses complete frames from `buf`; returns them and the bytes left over. */
export function parseFrames(buf: Uint8Array): { frames: WsFrame[]; rest: Uint8Array } {
  const frames: WsFrame[] = [];
  let off = 0;
  while (buf.byteLength - off >= 2) {
    const b0 = buf[off]!;
    const b1 = buf[off + 1]!;
    let len = b1 & 0x7f;
    let p = off + 2;
    if (len === 126) {
      if (buf.byteLength - off < 4) break;
      len = (buf[off + 2]! << 8) | buf[off + 3]!;
      p = off + 4;
    } else if (len === 127) {
      if (buf.byteLength - off < 10) break;
      len = Number(new DataView(buf.buffer, buf.byteOffset + off + 2, 8).getBigUint64(0));
      p = off + 10;
    }
    const masked = (b1 & 0x80) !== 0;
    const need = p + (masked ? 4 : 0) + len;
    if (buf.byteLength < need) break;
    const payload = buf.slice(p + (masked ? 4 : 0), need);
    if (masked) {
      for (let i = 0; i < len; i++) payload[i] = payload[i]! ^ buf[p + (i & 3)]!;
    }
    frames.push({ fin: (b0 & 0x80) !== 0, rsv1: (b0 & 0x40) !== 0, opcode: b0 & 0x0f, payload });
    off = need;
  }
  return { frames, rest: buf.slice(off) };
}

/** A server frame (unmasked, FIN set). */
export function serverFrame(opcode: number, payload: Uint8Array, rsv1 = false): Uint8Array {
  const len = payload.byteLength;
  const ext = len < 126 ? 0 : len < 65536 ? 2 : 8;
  const out = new Uint8Array(2 + ext + len);
  out[0] = 0x80 | (rsv1 ? 0x40 : 0) | opcode;
  out[1] = ext === 0 ? len : ext === 2 ? 126 : 127;
  const view = new DataView(out.buffer);
  if (ext === 2) view.setUint16(2, len);
  if (ext === 8) view.setBigUint64(2, BigInt(len));
  out.set(payload, 2 + ext);
  return out;
}

const TAIL = new Uint8Array([0, 0, 0xff, 0xff]);

/**
 * permessage-deflate (RFC 7692) for the server side of one connection. The client may keep its
 * compression context across messages, so every compressed message is inflated together with
 * those before it; the server compresses each message on its own, which any receiver accepts.
 */
export class Deflate {
  #history: Uint8Array[] = [];
  #inflated = 0;

  /** Decompresses one client message (the payload of its frames, joined). */
  inflate(payload: Uint8Array): Uint8Array {
    this.#history.push(payload, TAIL);
    const all = zlib.inflateRawSync(concatBytes(this.#history), {
      finishFlush: zlib.constants.Z_SYNC_FLUSH,
    });
    const out = new Uint8Array(
      all.buffer,
      all.byteOffset + this.#inflated,
      all.byteLength - this.#inflated,
    );
    this.#inflated = all.byteLength;
    return out.slice();
  }

  /** Compresses one server message. */
  deflate(data: Uint8Array): Uint8Array {
    const out = zlib.deflateRawSync(data, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength - 4).slice();
  }
}

/** `sec-websocket-accept` for a client key. */
export async function acceptKey(key: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    utf8.encode(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"),
  );
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}
