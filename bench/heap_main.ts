/**
 * Runs the relay (`main.ts`) and writes a V8 heap snapshot on each SIGUSR2, to the directory in
 * `HEAP_SNAPSHOT_DIR` (snap0, snap1, ...). Used by `heap_streams.ts`; not for production.
 */
import v8 from "node:v8";
import { main } from "../main.ts";

const dir = Deno.env.get("HEAP_SNAPSHOT_DIR") ?? ".";
let n = 0;
Deno.addSignalListener("SIGUSR2", () => {
  v8.writeHeapSnapshot(`${dir}/snap${n++}.heapsnapshot`);
});
Deno.exit(await main());
