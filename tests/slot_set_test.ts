/**
 * The set behind the watchdogs and the server's connection list (lib/http/slot_set.ts): it
 * behaves as a `Set` of objects does, in any order of adds and deletes (fast-check, with a `Set`
 * as the oracle), two sets share members without disturbing each other, and a member it no longer
 * holds is not kept alive by it.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { SlotSet } from "../lib/http/slot_set.ts";
import { againstContrast, exposedGc, youngSurvivors } from "./young_gc.ts";

Deno.test("a SlotSet agrees with a Set of the same objects after any adds and deletes, in two sets at once", () => {
  const op = fc.record({
    set: fc.constantFrom(0, 1),
    kind: fc.constantFrom("add", "delete", "deleteAt", "clear"),
    member: fc.nat({ max: 11 }),
  });
  fc.assert(
    fc.property(fc.array(op, { minLength: 20, maxLength: 300, size: "large" }), (ops) => {
      const pool = Array.from({ length: 12 }, (_, id) => ({ id }));
      const sets = [new SlotSet<{ id: number }>(), new SlotSet<{ id: number }>()];
      const oracles = [new Set<{ id: number }>(), new Set<{ id: number }>()];
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
  const make = () => ({});
  const churn = (set: { add(o: object): unknown; delete(o: object): unknown } | null) =>
    youngSurvivors(gc, make, (o) => set?.add(o), (o) => set?.delete(o));
  const longLived = <S extends SlotSet<object> | Set<object>>(set: S): S => {
    set.add({});
    gc(); // the owner and its storage in the old generation, as in the relay
    return set;
  };
  const { control, subject: slotSet, contrast: set } = await againstContrast(async (kind) =>
    (await churn(
      kind === "control" ? null : longLived(kind === "subject" ? new SlotSet() : new Set()),
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
  const set = new SlotSet<object>();
  let collected = 0;
  const registry = new FinalizationRegistry(() => collected++);
  (() => {
    const members = Array.from({ length: 100 }, () => ({ payload: new Array(20).fill(0) }));
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
