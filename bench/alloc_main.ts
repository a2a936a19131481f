/**
 * Runs the relay (`main.ts`) under V8's sampling heap profiler: the first SIGUSR2 starts sampling
 * (objects collected by either GC included, so it counts garbage too), the second stops and writes
 * the profile to `ALLOC_PROFILE`, and so on. Used by `alloc_requests.ts` and `alloc_streams.ts`; not
 * for production.
 */
import { Session } from "node:inspector";
import { main } from "../main.ts";

const out = Deno.env.get("ALLOC_PROFILE") ?? "alloc.heapprofile";
const session = new Session();
session.connect();
const post = (method: string, params: object = {}): Promise<unknown> =>
  new Promise((resolve, reject) =>
    session.post(method, params, (err, result) => err ? reject(err) : resolve(result))
  );
await post("HeapProfiler.enable");
let sampling = false;
Deno.addSignalListener("SIGUSR2", async () => {
  if (!sampling) {
    sampling = true;
    await post("HeapProfiler.startSampling", {
      samplingInterval: 256,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    });
    return;
  }
  sampling = false; // the next signal starts another sampling (alloc_streams.ts takes two)
  const result = await post("HeapProfiler.stopSampling") as { profile: unknown };
  Deno.writeTextFileSync(out, JSON.stringify(result.profile));
});
Deno.exit(await main());
