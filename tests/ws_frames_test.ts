/**
 * Unit: WebSocket frame decoding and message assembly (`lib/pipeline/ws_frames.ts`), used by the bridge on
 * Deno.serve. Frames fed in any split decode the same; limits close with the right codes; a large
 * frame arriving in many reads is joined once, not once per read.
 */

import assert from "node:assert/strict";
import { concat } from "../lib/http/bytes.ts";
import {
  closePayload,
  CloseWatcher,
  encodeFrame,
  type Frame,
  FrameDecoder,
  MessageAssembler,
  newMask,
  OP,
  WsProtocolError,
} from "../lib/pipeline/ws_frames.ts";

const summary = (frames: Frame[]) =>
  frames.map((f) => `${f.opcode}:${f.fin}:${[...f.payload].join(",")}`);

function frames(): Uint8Array {
  const parts = [
    encodeFrame(OP.text, new TextEncoder().encode("hello"), new Uint8Array([1, 2, 3, 4])),
    encodeFrame(OP.binary, new Uint8Array(300).map((_, i) => i & 255), null),
    encodeFrame(OP.ping, new Uint8Array([9]), new Uint8Array([5, 6, 7, 8])),
    encodeFrame(OP.binary, new Uint8Array(70_000).map((_, i) => (i * 7) & 255), null),
  ];
  const all = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let off = 0;
  for (const p of parts) {
    all.set(p, off);
    off += p.byteLength;
  }
  return all;
}

Deno.test("frames decode the same whether they arrive whole or split at any size", () => {
  const all = frames();
  const whole = summary(new FrameDecoder(1 << 20).push(all));
  assert.equal(whole.length, 4);
  assert.equal(whole[0], `1:true:${[..."hello"].map((c) => c.charCodeAt(0)).join(",")}`);
  for (const size of [1, 2, 3, 7, 125, 126, 4096, 65_536]) {
    const d = new FrameDecoder(1 << 20);
    const got: Frame[] = [];
    for (let p = 0; p < all.byteLength; p += size) got.push(...d.push(all.slice(p, p + size)));
    assert.deepEqual(summary(got), whole, `split every ${size} bytes`);
  }
});

Deno.test("limits: a frame over the payload limit is 1009, an unknown opcode 1002", () => {
  const tooBig = encodeFrame(OP.binary, new Uint8Array(101), null);
  assert.throws(
    () => new FrameDecoder(100).push(tooBig),
    (e: unknown) => e instanceof WsProtocolError && e.closeCode === 1009,
  );
  const unknown = new Uint8Array([0x83, 0x00]);
  assert.throws(
    () => new FrameDecoder(100).push(unknown),
    (e: unknown) => e instanceof WsProtocolError && e.closeCode === 1002,
  );
});

Deno.test("fragments are assembled into one message, within the message limit", () => {
  const a = new MessageAssembler(10);
  assert.equal(a.push({ fin: false, opcode: OP.text, payload: new Uint8Array([1, 2]) }), null);
  assert.equal(a.push({ fin: false, opcode: OP.cont, payload: new Uint8Array([3]) }), null);
  assert.deepEqual(a.push({ fin: true, opcode: OP.cont, payload: new Uint8Array([4, 5]) }), {
    opcode: OP.text,
    data: new Uint8Array([1, 2, 3, 4, 5]),
  });
  assert.throws(
    () => a.push({ fin: true, opcode: OP.binary, payload: new Uint8Array(11) }),
    (e: unknown) => e instanceof WsProtocolError && e.closeCode === 1009,
  );
});

Deno.test("a 32 MiB frame in 64 KiB reads is joined once, not once per read", () => {
  const big = encodeFrame(OP.binary, new Uint8Array(32 << 20), null);
  const d = new FrameDecoder(33 << 20);
  const t0 = performance.now();
  let got = 0;
  for (let p = 0; p < big.byteLength; p += 65_536) {
    got += d.push(big.subarray(p, p + 65_536)).length;
  }
  const ms = performance.now() - t0;
  assert.equal(got, 1);
  // Joined once it takes ~50 ms here; joining on every read (512 copies of a growing buffer)
  // took ~5 s. The bound sits between the two with room for a busy machine.
  assert.ok(ms < 2000, `decoding took ${ms.toFixed(0)} ms`);
});

Deno.test("CloseWatcher sees a close frame only at a frame boundary, however the bytes are split", () => {
  // Payloads full of 0x88 (what a close frame's first byte looks like) must be skipped, not read.
  const lure = new Uint8Array(70_000).fill(0x88);
  const stream = concat([
    encodeFrame(OP.text, lure.subarray(0, 100), newMask()),
    encodeFrame(OP.binary, lure.subarray(0, 300), null),
    encodeFrame(OP.binary, lure, newMask()),
    encodeFrame(OP.ping, lure.subarray(0, 5), null),
  ]);
  const close = encodeFrame(OP.close, closePayload(1000, "bye"), newMask());
  for (const step of [1, 2, 3, 7, 1000, stream.byteLength]) {
    const w = new CloseWatcher();
    for (let i = 0; i < stream.byteLength; i += step) w.push(stream.subarray(i, i + step));
    assert.equal(w.sawClose, false, `step ${step}: no close yet`);
    for (let i = 0; i < close.byteLength; i += step) w.push(close.subarray(i, i + step));
    assert.equal(w.sawClose, true, `step ${step}: the close frame`);
  }
});
