/**
 * The test runner's pure parts (scripts/run_tests.ts): reading Deno's report, naming the test a
 * killed file was running, the seeded file order and the command line.
 */

import assert from "node:assert/strict";
import { parseArgs, parseSummary, runningTest, shuffled } from "../scripts/run_tests.ts";

Deno.test("parseSummary reads Deno's last summary line, coloured or not", () => {
  assert.deepEqual(parseSummary("x ... ok (1ms)\n\nok | 3 passed | 0 failed | 2 ignored (2s)\n"), {
    passed: 3,
    failed: 0,
    ignored: 2,
  });
  const coloured = "\x1b[0m\x1b[31mFAILED\x1b[0m | 5 passed (2 steps) | 1 failed \x1b[0m(14s)\n" +
    "\nerror: Test failed\n";
  assert.deepEqual(parseSummary(coloured), { passed: 5, failed: 1, ignored: 0 });
  assert.equal(parseSummary("running 2 tests from ./tests/x_test.ts\nfirst ... ok (1ms)\n"), null);
});

Deno.test("runningTest names the test whose result never came, and nothing when all finished", () => {
  const killed = "running 2 tests\nfirst passes ... ok (1ms)\nthis one hangs for ever ...\n";
  assert.equal(runningTest(killed), "this one hangs for ever");
  assert.equal(runningTest("a ... ok (1ms)\nb ... FAILED (2s)\n"), null);
  assert.equal(runningTest(""), null);
});

Deno.test("shuffled gives the same order for the same seed and a permutation of the input", () => {
  const files = Array.from({ length: 40 }, (_, i) => `tests/f${i}_test.ts`);
  const a = shuffled(files, 1234);
  assert.deepEqual(a, shuffled(files, 1234));
  assert.deepEqual([...a].sort(), [...files].sort());
  assert.notDeepEqual(a, files);
  assert.notDeepEqual(a, shuffled(files, 1235));
});

Deno.test("parseArgs takes a seed, a server and paths, and picks a seed when none is given", () => {
  const given = parseArgs(["--seed=42", "--server=deno", "tests/a_test.ts"]);
  assert.equal(given.seed, 42);
  assert.deepEqual(given.servers, ["deno"]);
  assert.deepEqual(given.paths, ["tests/a_test.ts"]);
  const defaults = parseArgs([], () => 7);
  assert.equal(defaults.seed, 7);
  assert.deepEqual(defaults.servers, ["relay", "deno"]);
  assert.deepEqual(defaults.paths, ["tests"]);
  for (const bad of ["--seed=x", "--server=nginx", "--file-timeout=0", "--frobnicate"]) {
    assert.throws(() => parseArgs([bad]), Error, bad);
  }
});
