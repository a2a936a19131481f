/**
 * The one coarse timer behind every idle, header and send deadline (lib/http/watchdog.ts): what
 * it expires and when, and that an item it no longer watches is not kept alive by it, not even
 * for young-generation GCs (each watched exchange holds its whole request).
 */

import assert from "node:assert/strict";
import { Watchdog, type Watched } from "../lib/http/watchdog.ts";
import { IDLE_SLOT, WATCH_SLOT } from "../lib/http/slot_set.ts";
import { deadline, waitFor } from "./helpers.ts";
import { exposedGc, youngSurvivors } from "./young_gc.ts";

function item(onExpire: () => void = () => {}): Watched & { expired: number } {
  const it = {
    lastTick: 0,
    [WATCH_SLOT]: -1,
    expired: 0,
    expire() {
      it.expired++;
      onExpire();
    },
  };
  return it;
}

deadline.test("a silent item expires once, an active or unwatched one never", async () => {
  const dog = new Watchdog(50);
  const silent = item(), active = item(), gone = item();
  dog.watch(silent);
  dog.watch(active);
  dog.watch(gone);
  dog.watch(gone); // watching twice is watching once
  assert.equal(dog.size, 3);
  dog.unwatch(gone);
  dog.unwatch(gone);
  assert.equal(dog.size, 2);
  const keepActive = setInterval(() => (active.lastTick = dog.tick), 5);
  try {
    await waitFor(() => silent.expired > 0, 2000, "the silent item to expire");
    await new Promise((r) => setTimeout(r, 120));
    assert.equal(silent.expired, 1);
    assert.equal(active.expired, 0);
    assert.equal(gone.expired, 0);
    assert.equal(dog.size, 1);
  } finally {
    clearInterval(keepActive);
    dog.close();
  }
  assert.equal(dog.size, 0);
});

Deno.test("an item in two watchdogs with keys of their own is watched by each on its own; one key twice throws", () => {
  const a = new Watchdog(60_000), b = new Watchdog(60_000, IDLE_SLOT);
  const x = { ...item(), [IDLE_SLOT]: -1 }, y = { ...item(), [IDLE_SLOT]: -1 };
  a.watch(x);
  a.watch(y);
  b.watch(y);
  b.watch(x);
  // A third under a's key could not be found by a after it: refused.
  const same = new Watchdog(60_000);
  assert.throws(() => same.watch(y), /in another set with this key/);
  a.watch(y); // again: still a member, no error
  same.close();
  a.unwatch(y);
  assert.equal(a.size, 1);
  assert.equal(b.size, 2);
  b.unwatch(x);
  a.unwatch(x);
  assert.equal(a.size, 0);
  assert.equal(b.size, 1);
  b.unwatch(y);
  assert.equal(b.size, 0);
  a.close();
  b.close();
});

deadline.test("expiring items may unwatch and watch others during the sweep: each silent one expires once", async () => {
  const dog = new Watchdog(50);
  const items: Array<Watched & { expired: number }> = [];
  const unwatched = new Set<Watched>();
  for (let i = 0; i < 40; i++) {
    items.push(item(() => {
      // From inside the sweep: unwatches another item, and watches a new one.
      const other = items[(i * 7 + 3) % items.length]!;
      if (other.expired === 0) unwatched.add(other);
      dog.unwatch(other);
      dog.watch(item());
    }));
  }
  for (const it of items) dog.watch(it);
  try {
    await waitFor(
      () => items.every((it) => it.expired > 0 || unwatched.has(it)),
      3000,
      () => `every item expired or unwatched (${items.filter((it) => it.expired).length} expired)`,
    );
    // Two more sweeps' time: nothing expires twice, and nothing unwatched expires later.
    const after = items.map((it) => it.expired);
    await new Promise((r) => setTimeout(r, 120));
    assert.deepEqual(items.map((it) => it.expired), after);
    assert.ok(items.every((it) => it.expired <= 1), "an item expired twice");
    assert.ok(items.every((it) => it.expired === 1 || unwatched.has(it)));
  } finally {
    dog.close();
  }
});

deadline.test("an item unwatched is not kept alive by the watchdog through young-generation GCs", async () => {
  const gc = exposedGc();
  const none = () => {};
  // A scavenge during a churn can promote what that job made (see young_gc.ts): a run where the
  // control kept most of its items, or the watched churn more than the control, is measured again,
  // up to 5 times. A watchdog that keeps its items fails every attempt.
  for (let attempt = 1;; attempt++) {
    const control = await youngSurvivors(gc, item, none, none);
    const dog = new Watchdog(60_000);
    // The watchdog lives long, as in the relay: its storage is in the old generation.
    dog.watch(item());
    gc();
    const watched = await youngSurvivors(
      gc,
      item,
      (it) => dog.watch(it),
      (it) => dog.unwatch(it),
    );
    dog.close();
    const clear = control.survived < control.made / 2 &&
      watched.survived <= control.survived + 50;
    if (!clear && attempt < 5) continue;
    assert.ok(
      watched.survived <= control.survived + 50,
      `${watched.survived} of ${watched.made} unwatched items survived two young-generation GCs ` +
        `(${control.survived} without the watchdog)`,
    );
    break;
  }
});
