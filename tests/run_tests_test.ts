/**
 * The test runner's pure parts (scripts/run_tests.ts): reading Deno's report, naming the test a
 * killed file was running, the seeded file order and the command line.
 */

import assert from "node:assert/strict";
import {
  failureReports,
  parseArgs,
  parseSummary,
  runningTest,
  shuffled,
} from "../scripts/run_tests.ts";
import { serversOfThisPass } from "./helpers.ts";

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

Deno.test("failureReports gives each failed test with its error, without source excerpt or stack", () => {
  const c = (code: string, text: string) => `\x1b[0m\x1b[${code}m${text}\x1b[0m`;
  const output = [
    "first ... " + c("31", "FAILED") + " (1ms)",
    "",
    c("1m\x1b[37m\x1b[41", " ERRORS "),
    "",
    `the second request is fast ${c("38;5;245", "=> ./tests/x_test.ts:3:6")}`,
    `${c("31", "error")}: AssertionError: second request took 1234 ms`,
    '  assert.ok(second < 1000, "second request took");',
    c("31", "           ^"),
    `    at ${c("36", "file:///w/tests/x_test.ts")}:3:57`,
    "",
    "lists match => ./tests/x_test.ts:9:6",
    "error: AssertionError: Expected values to be strictly deep-equal:",
    "+ actual - expected",
    "",
    "- 3",
    "    at file:///w/tests/x_test.ts:9:47",
    "",
    "./tests/x_test.ts (uncaught error)",
    "error: Error: late",
    "    at Timeout._onTimeout (file:///w/tests/x_test.ts:1:49)",
    "",
    c("1m\x1b[37m\x1b[41", " FAILURES "),
    "",
    "the second request is fast => ./tests/x_test.ts:3:6",
    "",
    "FAILED | 1 passed | 2 failed (1s)",
  ].join("\n");
  assert.deepEqual(failureReports(output), [
    '"the second request is fast" (./tests/x_test.ts:3:6)\n' +
    "  error: AssertionError: second request took 1234 ms",
    '"lists match" (./tests/x_test.ts:9:6)\n' +
    "  error: AssertionError: Expected values to be strictly deep-equal:\n" +
    "  + actual - expected\n  - 3",
    "uncaught in ./tests/x_test.ts\n  error: Error: late",
  ]);
  assert.equal(
    failureReports(output, 1)[1],
    '"lists match" (./tests/x_test.ts:9:6)\n' +
      "  error: AssertionError: Expected values to be strictly deep-equal:",
  );
  assert.deepEqual(failureReports("a ... ok (1ms)\n\nok | 1 passed | 0 failed (1s)\n"), []);
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

Deno.test("serversOfThisPass: a test naming its server runs only the pass's own, both when run directly", () => {
  const saved = Deno.env.get("PF_TEST_HTTP_SERVER");
  try {
    Deno.env.set("PF_TEST_HTTP_SERVER", "relay");
    assert.deepEqual(serversOfThisPass(), ["relay"]);
    Deno.env.set("PF_TEST_HTTP_SERVER", "deno");
    assert.deepEqual(serversOfThisPass(), ["deno"]);
    Deno.env.delete("PF_TEST_HTTP_SERVER");
    assert.deepEqual(serversOfThisPass(), ["relay", "deno"]);
  } finally {
    if (saved === undefined) Deno.env.delete("PF_TEST_HTTP_SERVER");
    else Deno.env.set("PF_TEST_HTTP_SERVER", saved);
  }
});
