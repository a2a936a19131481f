import assert from "node:assert/strict";
import { RELAY_V8_FLAGS } from "../lib/ops/permissions.ts";
import { waitFor } from "./helpers.ts";
import {
  IDLE_GC_MAX_IN_FLIGHT,
  IDLE_GC_START,
  type IdleGcState,
  idleGcStep,
  startIdleGc,
} from "../lib/ops/idle_gc.ts";

/**
 * Runs looks over the request counts seen (a number) or (requests, in flight) pairs; returns at
 * which looks it collected.
 */
function run(looks: Array<number | [number, number]>, from: IdleGcState = IDLE_GC_START): number[] {
  let state = from;
  const at: number[] = [];
  looks.forEach((look, i) => {
    const [requests, inFlight] = typeof look === "number" ? [look, 0] : look;
    const step = idleGcStep(state, requests, inFlight);
    state = step.state;
    if (step.collect) at.push(i);
  });
  return at;
}

Deno.test("idle gc: one collection after a burst, once a whole interval passed without a request", () => {
  // Traffic at looks 0-2, quiet from look 3: one collection at look 3, none after.
  assert.deepEqual(run([10, 50, 90, 90, 90, 90]), [3]);
});

Deno.test("idle gc: never without traffic, so an idle relay is left alone", () => {
  assert.deepEqual(run([0, 0, 0]), []);
});

Deno.test("idle gc: streams still open do not hold it off (a long generation, a WebSocket)", () => {
  // Two streams stay open over every look, with no new request after look 1.
  assert.deepEqual(run([[5, 2], [7, 2], [7, 2], [7, 2]]), [2]);
  assert.deepEqual(run([[5, IDLE_GC_MAX_IN_FLIGHT], [5, IDLE_GC_MAX_IN_FLIGHT]]), [1]);
});

Deno.test("idle gc: held off while more streams are open than a pause should stop, until fewer are", () => {
  const many = IDLE_GC_MAX_IN_FLIGHT + 1;
  assert.deepEqual(run([[5, many], [5, many], [5, many], [5, 3], [5, 3]]), [3]);
});

Deno.test("idle gc: a request arriving at every look holds it off, however long", () => {
  assert.deepEqual(run([1, 2, 3, 4, 5, 6, 7, 8]), []);
});

Deno.test("idle gc: each burst gets its own collection", () => {
  assert.deepEqual(run([5, 5, 5, 9, 9, 9]), [1, 4]);
});

Deno.test("idle gc: the timer calls gc once after traffic, and stop ends it", async () => {
  let requests = 0, calls = 0, looks = 0;
  const loop = startIdleGc({
    requests: () => (looks++, requests),
    inFlight: () => 1,
    gc: () => calls++,
    everyMs: 20,
  });
  // Waits for `n` more looks, however slow the machine's timers are.
  const looksMore = (n: number) => {
    const target = looks + n;
    return waitFor(() => looks >= target, 5000, `${n} looks`);
  };
  try {
    requests = 3;
    await waitFor(() => calls === 1, 5000, "the collection");
    await looksMore(3);
    assert.equal(calls, 1, "no second collection without new traffic");
  } finally {
    loop.stop();
  }
  const stoppedAt = looks;
  requests = 10;
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(looks, stoppedAt, "stopped: no more looks");
  assert.equal(calls, 1);
});

Deno.test("idle gc: under the relay's shipped V8 flags, gc exists and takes the options it is given", async () => {
  const mod = new URL("../lib/ops/idle_gc.ts", import.meta.url).href;
  const code = `import { exposedGc } from "${mod}";
const gc = exposedGc();
if (gc === null) Deno.exit(3);
gc();
console.log("collected");`;
  const run = (flags: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-config", ...flags, code],
      stdout: "piped",
      stderr: "piped",
    }).output();
  const shipped = await run([RELAY_V8_FLAGS]);
  assert.equal(new TextDecoder().decode(shipped.stderr), "");
  assert.equal(shipped.code, 0);
  assert.equal(new TextDecoder().decode(shipped.stdout).trim(), "collected");
  // Without --expose-gc (Deno Deploy, a hand-made deno run) there is nothing to call.
  assert.equal((await run([])).code, 3);
});
