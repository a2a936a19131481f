/**
 * The set behind the watchdogs and the server's connection list (lib/http/slot_set.ts): it
 * behaves as a `Set` of objects does, in any order of adds and deletes (fast-check, with a `Set`
 * as the oracle), two sets share members without disturbing each other, and a member it no longer
 * holds is not kept alive by it.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { SlotSet, type Slotted } from "../lib/http/slot_set.ts";

const KEY_A = Symbol("a"), KEY_B = Symbol("b");
type Member = { id: number } & Slotted<typeof KEY_A> & Slotted<typeof KEY_B>;
/** A member of sets keyed KEY_A or KEY_B, its keys declared as a class of the relay does. */
const member = <T extends object>(o: T) => ({ ...o, [KEY_A]: -1, [KEY_B]: -1 });
import { againstContrast, exposedGc, youngSurvivors } from "./young_gc.ts";

Deno.test("a SlotSet agrees with a Set of the same objects after any adds and deletes, in two sets at once", () => {
  const op = fc.record({
    set: fc.constantFrom(0, 1),
    kind: fc.constantFrom("add", "delete", "deleteAt", "clear"),
    member: fc.nat({ max: 11 }),
  });
  fc.assert(
    fc.property(fc.array(op, { minLength: 20, maxLength: 300, size: "large" }), (ops) => {
      const pool: Member[] = Array.from({ length: 12 }, (_, id) => member({ id }));
      const sets = [
        new SlotSet<typeof KEY_A, Member>(KEY_A),
        new SlotSet<typeof KEY_B, Member>(KEY_B),
      ];
      const oracles = [new Set<Member>(), new Set<Member>()];
      for (const o of ops) {
        const s = sets[o.set]!, oracle = oracles[o.set]!;
        const m = pool[o.member]!;
        if (o.kind === "add") assert.equal(s.add(m), !oracle.has(m) && !!oracle.add(m));
        else if (o.kind === "delete") assert.equal(s.delete(m), oracle.delete(m));
        else if (o.kind === "deleteAt" && s.size > 0) {
          const victim = s.at(o.member % s.size);
          s.deleteAt(o.member % s.size);
          oracle.delete(victim);
        } else if (o.kind === "clear" && o.member === 0) {
          s.clear();
          oracle.clear();
        }
        for (let k = 0; k < 2; k++) {
          assert.equal(sets[k]!.size, oracles[k]!.size);
          assert.deepEqual(
            new Set(sets[k]!.toArray()),
            oracles[k],
            "members differ from the Set's",
          );
          for (const p of pool) assert.equal(sets[k]!.has(p), oracles[k]!.has(p));
        }
      }
    }),
    { numRuns: 300 },
  );
});

Deno.test("a member deleted from a long-lived SlotSet is not kept alive through young-generation GCs", async () => {
  const gc = exposedGc();
  const make = () => member({});
  const churn = (set: { add(o: object): unknown; delete(o: object): unknown } | null) =>
    youngSurvivors(gc, make, (o) => set?.add(o), (o) => set?.delete(o));
  const longLived = <S extends SlotSet<typeof KEY_A, Slotted<typeof KEY_A>> | Set<object>>(
    set: S,
  ): S => {
    set.add(member({}));
    gc(); // the owner and its storage in the old generation, as in the relay
    return set;
  };
  const { control, subject: slotSet, contrast: set } = await againstContrast(async (kind) =>
    (await churn(
      kind === "control" ? null : longLived(kind === "subject" ? new SlotSet(KEY_A) : new Set()),
    )).survived
  );
  assert.ok(slotSet <= control + 50, `${slotSet} of 2000 survived (${control} with no set)`);
  // What this guards against, so that the test can fail: a churned Set keeps them.
  assert.ok(
    set > control + 50,
    `a churned Set kept only ${set} of 2000 alive (${control} with none)`,
  );
});

Deno.test("a SlotSet emptied holds none of its former members", async () => {
  const gc = exposedGc();
  const set = new SlotSet<typeof KEY_A, Slotted<typeof KEY_A>>(KEY_A);
  let collected = 0;
  const registry = new FinalizationRegistry(() => collected++);
  (() => {
    const members = Array.from({ length: 100 }, () => member({ payload: new Array(20).fill(0) }));
    for (const m of members) {
      registry.register(m, null);
      set.add(m);
    }
    for (const m of members.reverse()) set.delete(m);
  })();
  gc();
  for (let i = 0; i < 20 && collected < 100; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(collected, 100, "the set still holds members it deleted");
  assert.equal(set.size, 0);
});

// V8's `%HaveSameMap` needs --allow-natives-syntax, so the check runs in a process of its own.
Deno.test("joining and leaving watchdogs and sets changes no member's hidden class", async () => {
  const mod = new URL("../lib/http/mod.ts", import.meta.url).href;
  const script = `
    import { IDLE_SLOT, SlotSet, WATCH_SLOT, Watchdog } from ${JSON.stringify(mod)};
    const sameMap = new Function("a", "b", "return %HaveSameMap(a, b)");
    // Declared as the relay's watched classes declare them (Connection has both keys).
    class Item { [WATCH_SLOT] = -1; [IDLE_SLOT] = -1; lastTick = 0; expire() {} }
    const fresh = new Item(), a = new Item(), b = new Item(), c = new Item();
    const dogs = [new Watchdog(1000), new Watchdog(1000), new Watchdog(1000, IDLE_SLOT)];
    dogs[0].watch(a);
    dogs[1].watch(b);
    dogs[2].watch(b);
    dogs[1].unwatch(b);
    for (const d of dogs) d.close();
    const set = new SlotSet(WATCH_SLOT);
    set.add(c);
    set.add(a);
    set.deleteAt(0);
    // A key added on first use, as the sets did before: the contrast, so the check can fail.
    const grown = new Item();
    grown[Symbol("slot")] = 0;
    console.log(JSON.stringify([a, b, c, grown].map((x) => sameMap(x, fresh))));
  `;
  const file = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(file, script);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-config", "--allow-read", "--v8-flags=--allow-natives-syntax", file],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    assert.deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), [true, true, true, false]);
  } finally {
    await Deno.remove(file);
  }
});
