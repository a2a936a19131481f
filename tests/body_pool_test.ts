/**
 * Unit: the own server's pool of request-body buffers (lib/server/body_pool.ts).
 */

import assert from "node:assert/strict";
import { BodyPool, POOL_MAX, POOL_MIN } from "../lib/server/body_pool.ts";

Deno.test("take gives a view of n bytes on a buffer of the smallest power-of-two size that holds it", () => {
  const pool = new BodyPool();
  for (
    const [n, size] of [
      [POOL_MIN, 4096],
      [POOL_MIN + 1, 8192],
      [100_000, 131_072],
      [131_072, 131_072],
      [262_144, 262_144],
      [300_000, 524_288],
      [POOL_MAX, 1_048_576],
    ] as const
  ) {
    const b = pool.take(n);
    assert.equal(b.byteLength, n);
    assert.equal(b.buffer.byteLength, size, `${n} bytes`);
  }
  // Outside the pooled range: a buffer of its own, exactly that size.
  assert.equal(pool.take(100).buffer.byteLength, 100);
  assert.equal(pool.take(POOL_MAX + 1).buffer.byteLength, POOL_MAX + 1);
});

Deno.test("a buffer given back is handed out again, once, to a body of its size class", () => {
  const pool = new BodyPool();
  const a = pool.take(100_000);
  pool.give(a);
  assert.equal(pool.kept, 1);
  const b = pool.take(70_000); // same class (128 KiB)
  assert.equal(b.buffer, a.buffer);
  assert.equal(pool.kept, 0);
  assert.notEqual(pool.take(100_000).buffer, a.buffer, "handed out twice");
  // Another class does not get it.
  pool.give(b);
  assert.notEqual(pool.take(10_000).buffer, a.buffer);
});

Deno.test("give ignores buffers the pool did not size, and keeps at most 8 of a size and 2 MiB of one", () => {
  const pool = new BodyPool();
  pool.give(new Uint8Array(5000));
  pool.give(new Uint8Array(100));
  pool.give(new Uint8Array(POOL_MAX * 2));
  assert.equal(pool.kept, 0);
  for (let i = 0; i < 20; i++) pool.give(new Uint8Array(65_536));
  assert.equal(pool.kept, 8);
  for (let i = 0; i < 20; i++) pool.give(new Uint8Array(524_288));
  assert.equal(pool.kept, 8 + 4);
  for (let i = 0; i < 20; i++) pool.give(new Uint8Array(POOL_MAX));
  assert.equal(pool.kept, 8 + 4 + 2);
});
