/**
 * The table behind an HTTP/2 session's open streams (lib/http/id_table.ts): it behaves as a `Map`
 * from ids to objects does, in any order of sets and deletes, ids that share a home slot included
 * (fast-check, with a `Map` as the oracle), and an entry it no longer holds is not kept alive by
 * it through young-generation GCs, where a churned `Map` keeps it.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { IdTable } from "../lib/http/id_table.ts";
import { againstContrast, exposedGc, youngSurvivors } from "./young_gc.ts";

Deno.test("an IdTable agrees with a Map after any sets, deletes and clears, through growth", () => {
  const op = fc.record({
    kind: fc.oneof(
      { weight: 30, arbitrary: fc.constant("set") },
      { weight: 20, arbitrary: fc.constant("delete") },
      { weight: 1, arbitrary: fc.constant("clear") },
    ),
    // Odd ids from a small range, as a session's streams (they collide and wrap a 16-slot table
    // often), and now and then one near the top of the range.
    id: fc.oneof(
      { weight: 20, arbitrary: fc.nat({ max: 80 }).map((n) => n * 2 + 1) },
      { weight: 1, arbitrary: fc.integer({ min: 0x7fffff00, max: 0x7fffffff }) },
    ),
  });
  fc.assert(
    fc.property(fc.array(op, { minLength: 20, maxLength: 400, size: "large" }), (ops) => {
      const table = new IdTable<{ id: number; v: number }>();
      const oracle = new Map<number, { id: number; v: number }>();
      let v = 0;
      for (const o of ops) {
        if (o.kind === "set") {
          const item = { id: o.id, v: v++ };
          table.set(o.id, item);
          oracle.set(o.id, item);
        } else if (o.kind === "delete") {
          assert.equal(table.delete(o.id), oracle.delete(o.id));
        } else {
          table.clear();
          oracle.clear();
        }
        assert.equal(table.size, oracle.size);
        for (const [id, item] of oracle) assert.equal(table.get(id), item, `id ${id}`);
        assert.deepEqual(new Set(table.toArray()), new Set(oracle.values()));
      }
      // Every id the ops touched and the oracle lacks is absent from the table too.
      for (const o of ops) {
        if (!oracle.has(o.id)) assert.equal(table.get(o.id), undefined);
        assert.equal(table.has(o.id), oracle.has(o.id));
      }
    }),
    { numRuns: 300 },
  );
});

Deno.test("an IdTable takes ids from 1 to 2^31 - 1 only", () => {
  const table = new IdTable<object>();
  for (const bad of [0, -1, 0x80000000, 1.5, NaN]) {
    assert.throws(() => table.set(bad, {}), RangeError, `id ${bad}`);
  }
  table.set(1, {});
  table.set(0x7fffffff, {});
  assert.equal(table.size, 2);
  for (const absent of [0, -1, 2, 0x80000000]) {
    assert.equal(table.get(absent), undefined, `get(${absent})`);
    assert.equal(table.has(absent), false, `has(${absent})`);
    assert.equal(table.delete(absent), false, `delete(${absent})`);
  }
  assert.equal(table.size, 2);
});

Deno.test("an entry deleted from a long-lived IdTable is not kept alive through young-generation GCs", async () => {
  const gc = exposedGc();
  let next = 1;
  const make = () => ({ id: 0 });
  const churn = (
    table: { set(id: number, o: object): unknown; delete(id: number): unknown } | null,
  ) =>
    youngSurvivors(gc, make, (o) => {
      o.id = next;
      next += 2;
      table?.set(o.id, o);
    }, (o) => table?.delete(o.id));
  const longLived = <S extends IdTable<object> | Map<number, object>>(table: S): S => {
    table.set(next, {});
    next += 2;
    gc(); // the owner and its storage in the old generation, as a session's in the relay
    return table;
  };
  const { control, subject: table, contrast: map } = await againstContrast(async (kind) =>
    (await churn(
      kind === "control" ? null : longLived(kind === "subject" ? new IdTable() : new Map()),
    )).survived
  );
  assert.ok(table <= control + 50, `${table} of 2000 survived (${control} with no table)`);
  // What this guards against, so that the test can fail: a churned Map keeps them.
  assert.ok(map > control + 50, `a churned Map kept only ${map} of 2000 alive (${control})`);
});

Deno.test("an IdTable emptied, or grown, holds none of its former entries", async () => {
  const gc = exposedGc();
  const table = new IdTable<object>();
  let collected = 0;
  const registry = new FinalizationRegistry(() => collected++);
  (() => {
    // 100 entries grow the table from 16 slots to 256; the arrays it left behind must not hold them.
    const entries = Array.from({ length: 100 }, () => ({ payload: new Array(20).fill(0) }));
    entries.forEach((e, i) => {
      registry.register(e, null);
      table.set(i * 2 + 1, e);
    });
    entries.forEach((_, i) => table.delete(i * 2 + 1));
  })();
  gc();
  for (let i = 0; i < 20 && collected < 100; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(collected, 100, "the table still holds entries it deleted");
  assert.equal(table.size, 0);
});
