/**
 * @module ws_frames
 * WebSocket frames (RFC 6455 §5) for the relay's upstream side.
 *
 * Why our own: the client side uses `Deno.upgradeWebSocket`, but the upstream handshake runs on
 * the relay's HTTP/1.1 client so that A's non-101 answers (404/405/426, which Codex uses to fall
 * back to HTTP) reach the client unchanged. After a 101 the relay speaks frames on that socket.
 * Owns: encoding (client frames are masked), incremental decoding with a payload limit, message
 * assembly from fragments, close payloads. Pure. Must never: accept a frame over the limit or
 * a fragmented control frame.
 */

import { concat } from "../http/mod.ts";

/** Frame opcodes. */
export const OP = { cont: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 } as const;

/** A protocol violation; `closeCode` is what to close the connection with. */
export class WsProtocolError extends Error {
  readonly closeCode: number;
  constructor(closeCode: number, message: string) {
    super(message);
    this.name = "WsProtocolError";
    this.closeCode = closeCode;
  }
}

/** One decoded frame. */
export interface Frame {
  fin: boolean;
  opcode: number;
  payload: Uint8Array;
}

/** Encodes one frame (FIN set). `mask` is required from a client, absent from a server. */
export function encodeFrame(
  opcode: number,
  payload: Uint8Array,
  mask: Uint8Array | null,
): Uint8Array {
  const len = payload.byteLength;
  const ext = len < 126 ? 0 : len < 65536 ? 2 : 8;
  const out = new Uint8Array(2 + ext + (mask ? 4 : 0) + len);
  out[0] = 0x80 | opcode;
  out[1] = (mask ? 0x80 : 0) | (ext === 0 ? len : ext === 2 ? 126 : 127);
  const view = new DataView(out.buffer);
  if (ext === 2) view.setUint16(2, len);
  if (ext === 8) view.setBigUint64(2, BigInt(len));
  let off = 2 + ext;
  if (mask) {
    out.set(mask, off);
    off += 4;
    for (let i = 0; i < len; i++) out[off + i] = payload[i]! ^ mask[i & 3]!;
  } else {
    out.set(payload, off);
  }
  return out;
}

/** A random 4-byte masking key. */
export function newMask(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(4));
}

/** Incremental frame decoder. */
export class FrameDecoder {
  readonly #maxPayload: number;
  #buf: Uint8Array = new Uint8Array(0);
  /**
   * Reads kept aside while a large frame is still arriving, joined once it is complete: joining
   * on every read would copy a 32 MiB frame hundreds of times on the event loop.
   */
  #waiting: Uint8Array[] = [];
  #waitingBytes = 0;
  /** Bytes the frame at the start of the buffer needs in all; 0 while its header is incomplete. */
  #need = 0;

  constructor(maxPayload: number) {
    this.#maxPayload = maxPayload;
  }

  /** Feeds bytes; returns the frames they complete. Throws WsProtocolError. */
  push(bytes: Uint8Array): Frame[] {
    this.#waiting.push(bytes);
    this.#waitingBytes += bytes.byteLength;
    if (this.#buf.byteLength + this.#waitingBytes < this.#need) return [];
    this.#buf = concat(this.#buf.byteLength === 0 ? this.#waiting : [this.#buf, ...this.#waiting]);
    this.#waiting = [];
    this.#waitingBytes = 0;
    this.#need = 0;
    const frames: Frame[] = [];
    while (true) {
      const b = this.#buf;
      if (b.byteLength < 2) break;
      const fin = (b[0]! & 0x80) !== 0;
      if ((b[0]! & 0x70) !== 0) throw new WsProtocolError(1002, "reserved bits set");
      const opcode = b[0]! & 0x0f;
      const masked = (b[1]! & 0x80) !== 0;
      let len = b[1]! & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.byteLength < 4) break;
        len = (b[2]! << 8) | b[3]!;
        off = 4;
      } else if (len === 127) {
        if (b.byteLength < 10) break;
        const big = new DataView(b.buffer, b.byteOffset + 2, 8).getBigUint64(0);
        if (big > BigInt(this.#maxPayload)) throw new WsProtocolError(1009, "frame too large");
        len = Number(big);
        off = 10;
      }
      if (opcode >= 8 && (len > 125 || !fin)) throw new WsProtocolError(1002, "bad control frame");
      if (!OPCODES.has(opcode)) throw new WsProtocolError(1002, "unknown opcode");
      if (len > this.#maxPayload) throw new WsProtocolError(1009, "frame too large");
      const maskLen = masked ? 4 : 0;
      if (b.byteLength < off + maskLen + len) {
        this.#need = off + maskLen + len;
        break;
      }
      const payload = b.slice(off + maskLen, off + maskLen + len);
      if (masked) {
        const key = b.subarray(off, off + 4);
        for (let i = 0; i < len; i++) payload[i] = payload[i]! ^ key[i & 3]!;
      }
      frames.push({ fin, opcode, payload });
      this.#buf = b.subarray(off + maskLen + len);
    }
    return frames;
  }
}

/** Joins fragmented data frames into messages, within a size limit. */
export class MessageAssembler {
  readonly #maxMessage: number;
  #opcode = 0;
  #parts: Uint8Array[] = [];
  #size = 0;

  constructor(maxMessage: number) {
    this.#maxMessage = maxMessage;
  }

  /** A data frame in; a whole message out when complete. Throws WsProtocolError. */
  push(frame: Frame): { opcode: number; data: Uint8Array } | null {
    if (frame.opcode === OP.cont) {
      if (this.#opcode === 0) throw new WsProtocolError(1002, "continuation without a message");
    } else {
      if (this.#opcode !== 0) {
        throw new WsProtocolError(1002, "new message inside a fragmented one");
      }
      this.#opcode = frame.opcode;
    }
    this.#size += frame.payload.byteLength;
    if (this.#size > this.#maxMessage) throw new WsProtocolError(1009, "message too large");
    this.#parts.push(frame.payload);
    if (!frame.fin) return null;
    const data = concat(this.#parts);
    const out = { opcode: this.#opcode, data };
    this.#opcode = 0;
    this.#parts = [];
    this.#size = 0;
    return out;
  }
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** The payload of a close frame; code 1005 ("no status") means an empty payload. */
export function closePayload(code: number, reason: string): Uint8Array {
  if (code === 1005 || code === 1006) return new Uint8Array(0);
  const r = enc.encode(reason).subarray(0, 123);
  const out = new Uint8Array(2 + r.byteLength);
  out[0] = code >> 8;
  out[1] = code & 0xff;
  out.set(r, 2);
  return out;
}

/** Code and reason from a close frame's payload (1005 when it has none). */
export function parseClosePayload(payload: Uint8Array): { code: number; reason: string } {
  if (payload.byteLength < 2) return { code: 1005, reason: "" };
  return { code: (payload[0]! << 8) | payload[1]!, reason: dec.decode(payload.subarray(2)) };
}

/** The opcodes RFC 6455 defines: continuation, text, binary, close, ping, pong. */
const OPCODES = new Set([0, 1, 2, 8, 9, 10]);

/**
 * Follows a stream of frames without keeping any of it, to learn whether a close frame went by.
 * The tunnel copies bytes untouched; this tells a session that was closed (a close frame either
 * way) from one a peer simply dropped. Only frame headers are read: payloads are skipped, so
 * compressed or masked frames cost nothing more.
 */
export class CloseWatcher {
  /** A close frame has passed. */
  sawClose = false;
  readonly #head = new Uint8Array(14);
  #headLen = 0;
  /** Payload bytes of the current frame still to pass. */
  #skip = 0;

  push(bytes: Uint8Array): void {
    let i = 0;
    while (i < bytes.byteLength && !this.sawClose) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, bytes.byteLength - i);
        this.#skip -= n;
        i += n;
        continue;
      }
      this.#head[this.#headLen++] = bytes[i++]!;
      if (this.#headLen < 2) continue;
      const len7 = this.#head[1]! & 0x7f;
      const ext = len7 === 126 ? 2 : len7 === 127 ? 8 : 0;
      const size = 2 + ext + ((this.#head[1]! & 0x80) !== 0 ? 4 : 0);
      if (this.#headLen < size) continue;
      if ((this.#head[0]! & 0x0f) === OP.close) {
        this.sawClose = true;
        return;
      }
      let len = len7;
      if (ext === 2) len = (this.#head[2]! << 8) | this.#head[3]!;
      if (ext === 8) {
        len = 0;
        for (let k = 2; k < 10; k++) len = len * 256 + this.#head[k]!;
      }
      this.#skip = len;
      this.#headLen = 0;
    }
  }
}
