/**
 * Measurement-only entry point: runs the relay's own `main()` from main.ts with one part of the
 * per-request observer path switched off, to price it. Never for production.
 *
 *   deno run --unstable-no-legacy-abort -A bench/relay_variants.ts --no-usage
 *
 * `--no-usage`: `UsageTap.push`/`finish` do nothing, so no response bytes are parsed for token
 * usage (everything else, metrics and access log included, stays as main.ts builds it).
 * Access logging is switched with the relay's own `ACCESS_LOG=0`; metrics have no switch.
 */

import { UsageTap } from "../lib/observe/usage.ts";

if (Deno.args.includes("--no-usage")) {
  UsageTap.prototype.push = function (): void {};
  UsageTap.prototype.finish = function (): undefined {
    return undefined;
  };
}

const { main } = await import("../main.ts");
const code = await main();
Deno.exit(code);
