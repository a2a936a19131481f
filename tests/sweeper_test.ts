import assert from "node:assert/strict";
import { IdleSweeper } from "../lib/upstream/sweeper.ts";

/** Resolves when `tick` has run `n` times, or rejects after `ms`. */
function ticks(n: number, ms: number, keepGoing: (count: number) => boolean) {
  let count = 0;
  let done!: () => void;
  const reached = new Promise<void>((resolve) => (done = resolve));
  const sweeper = new IdleSweeper(0, () => {
    count++;
    if (count === n) done();
    return keepGoing(count);
  });
  const deadline = new Promise<never>((_, reject) =>
    setTimeout(() => reject(new Error(`fewer than ${n} ticks in ${ms} ms`)), ms)
  );
  return { sweeper, reached: Promise.race([reached, deadline]), count: () => count };
}

Deno.test("IdleSweeper stops by itself when the tick says nothing is left to watch", async () => {
  const t = ticks(2, 10_000, (count) => count < 2);
  t.sweeper.start();
  await t.reached;
  // Three more periods (50 ms each) without a tick: the timer is gone.
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(t.count(), 2);
});

Deno.test("IdleSweeper runs one timer however often start is called, until stop", async () => {
  const t = ticks(3, 10_000, () => true);
  t.sweeper.start();
  t.sweeper.start();
  t.sweeper.start();
  await t.reached;
  t.sweeper.stop();
  const at = t.count();
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(t.count(), at);
});
