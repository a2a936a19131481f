/**
 * For tests that a long-lived structure keeps nothing alive once it lets go of it, young-generation
 * GCs included: V8's `gc()` (the suite runs with `--v8-flags=--expose-gc`) and a churn of objects
 * made and dropped like requests.
 */

/** V8's `gc`, which takes `{ type: "minor" }` for a young-generation GC. */
export type Gc = (options?: { type: string }) => void;

/** The exposed `gc`; throws when the process was started without `--expose-gc`. */
export function exposedGc(): Gc {
  const gc = (globalThis as { gc?: Gc }).gc;
  if (gc === undefined) throw new Error("run with --v8-flags=--expose-gc (deno task test does)");
  return gc;
}

/**
 * Makes 2,000 objects (`make()` plus a payload of their own), ~10 in flight at a time: `hold` when
 * one is made, `release` when it is done, like a request passing through. Then runs two
 * young-generation GCs and says how many are still alive. Run it once with no-op hooks as the
 * control: objects promoted by a GC that came while they were in flight survive anyway.
 */
export async function youngSurvivors<T extends object>(
  gc: Gc,
  make: () => T,
  hold: (o: T) => void,
  release: (o: T) => void,
): Promise<{ made: number; survived: number }> {
  let made = 0;
  // Weak references, read right after the GCs: counting finalization callbacks instead depended on
  // V8's cleanup task running within a fixed wait, and on a busy machine it came late, so that
  // the control counted none collected and the test failed.
  const refs: WeakRef<T>[] = [];
  const inFlight: T[] = [];
  for (let round = 0; round < 200; round++) {
    for (let k = 0; k < 10; k++) {
      const o = Object.assign(make(), { payload: Array.from({ length: 50 }, (_, i) => ({ i })) });
      refs.push(new WeakRef(o));
      made++;
      hold(o);
      inFlight.push(o);
    }
    while (inFlight.length > 5) release(inFlight.shift()!);
    if (round % 20 === 0) await new Promise((r) => setTimeout(r, 0));
  }
  for (const o of inFlight.splice(0)) release(o);
  // A WeakRef keeps its target alive until the end of the job that made it: end this one first.
  await new Promise((r) => setTimeout(r, 0));
  gc({ type: "minor" });
  gc({ type: "minor" });
  let survived = 0;
  for (const r of refs) if (r.deref() !== undefined) survived++;
  return { made, survived };
}

/**
 * Counts what a long-lived structure keeps through young-generation GCs next to no structure (the
 * control) and next to one known to keep what churned through it (the contrast, so that the test
 * can fail): `survivors` runs one churn of {@link youngSurvivors} for each. A scavenge during a
 * churn promotes what was made in that job (a new WeakRef holds its target until the job ends), and
 * on a busy machine that once took the control's 2,000 objects too: with no contrast left the run
 * says nothing, so it is measured again, up to 5 times. Returns the last attempt's counts; a
 * structure that keeps what it held fails every attempt.
 */
export async function againstContrast(
  survivors: (kind: "control" | "subject" | "contrast") => Promise<number>,
): Promise<{ control: number; subject: number; contrast: number }> {
  for (let attempt = 1;; attempt++) {
    const control = await survivors("control");
    const subject = await survivors("subject");
    const contrast = await survivors("contrast");
    if ((subject <= control + 50 && contrast > control + 50) || attempt >= 5) {
      return { control, subject, contrast };
    }
  }
}
