/**
 * The own server's slab memory for small writes (lib/http/write_slabs.ts): a region is never
 * handed out while a write in it is in flight, and a burst of many small writes in flight at once
 * needs a few slabs, reused by the next burst.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { type WriteSlab, WriteSlabs } from "../lib/http/write_slabs.ts";

Deno.test("no region is handed out again while its write is in flight, in any order of reserves and releases", () => {
  const size = 1024;
  const op = fc.oneof(
    fc.record({ reserve: fc.integer({ min: 1, max: size }) }),
    fc.record({ release: fc.nat() }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
      const slabs = new WriteSlabs(size);
      const inFlight: Array<{ slab: WriteSlab; view: Uint8Array; tag: number }> = [];
      let tag = 0;
      const intact = (w: (typeof inFlight)[number]) =>
        w.view.every((b) => b === w.tag) && w.view.buffer === w.slab.bytes.buffer;
      for (const o of ops) {
        if ("reserve" in o) {
          const slab = slabs.reserve(o.reserve);
          const view = slab.view;
          assert.equal(view.byteLength, o.reserve);
          tag = (tag % 255) + 1;
          view.fill(tag);
          inFlight.push({ slab, view, tag });
        } else if (inFlight.length > 0) {
          const [w] = inFlight.splice(o.release % inFlight.length, 1);
          assert.ok(intact(w!), "a region in flight was handed out to another write");
          slabs.release(w!.slab);
        }
        for (const w of inFlight) assert.ok(intact(w), "a region in flight was overwritten");
      }
    }),
    { numRuns: 300 },
  );
});

Deno.test("a burst of 1,000 small writes in flight needs a few slabs, and the next burst reuses them", () => {
  const slabs = new WriteSlabs();
  const burst = () => {
    const held = Array.from({ length: 1000 }, () => slabs.reserve(300));
    for (const s of held) slabs.release(s);
  };
  burst();
  // 64 KiB slabs hold 218 regions of 300 bytes: 5 slabs, where a buffer per write made 1,000.
  assert.equal(slabs.made, 5);
  for (let i = 0; i < 10; i++) burst();
  assert.equal(slabs.made, 5, "the slabs of one burst serve the next");
});

Deno.test("writes in flight one at a time use one slab, from its start each time", () => {
  const slabs = new WriteSlabs();
  for (let i = 0; i < 10_000; i++) {
    const s = slabs.reserve(1 + (i % 5000));
    assert.equal(s.view.byteOffset, 0);
    slabs.release(s);
  }
  assert.equal(slabs.made, 1);
});

Deno.test("a write that never completes keeps its region out of use; later writes go around it", () => {
  const slabs = new WriteSlabs(1024);
  // `view` is the latest region of a slab: a caller keeps its own before reserving again.
  const stuck = slabs.reserve(100).view;
  stuck.fill(9);
  for (let i = 0; i < 100; i++) {
    const s = slabs.reserve(500);
    s.view.fill(1);
    slabs.release(s);
  }
  assert.ok(stuck.every((b) => b === 9));
});
