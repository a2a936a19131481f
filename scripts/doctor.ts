/**
 * `deno task doctor`: checks configuration and the path to Server A, and explains failures.
 * The checks live in `lib/doctor/doctor.ts`; this file reads the command line and environment and prints.
 */

import { DOCTOR_USAGE, formatReport, parseDoctorArgs, runDoctor } from "../lib/doctor/mod.ts";
import type { DoctorArgs } from "../lib/doctor/mod.ts";

async function main(): Promise<number> {
  let args: DoctorArgs;
  try {
    args = parseDoctorArgs(Deno.args);
  } catch (err) {
    // deno-lint-ignore no-console
    console.error(`doctor: ${err instanceof Error ? err.message : String(err)}\n\n${DOCTOR_USAGE}`);
    return 2;
  }
  if (args.help) {
    // deno-lint-ignore no-console
    console.log(DOCTOR_USAGE);
    return 0;
  }
  const env = Deno.env.toObject();
  let caCerts: string[] | undefined;
  if (args.caFile !== undefined) {
    try {
      caCerts = [Deno.readTextFileSync(args.caFile)];
    } catch (err) {
      // deno-lint-ignore no-console
      console.error(`doctor: cannot read --ca-file ${args.caFile} (${(err as Error).name})`);
      return 2;
    }
  }
  const report = await runDoctor({
    env,
    key: args.key ?? env.DOCTOR_API_KEY,
    relay: args.relay,
    caCerts,
    ...(args.timeoutMs !== undefined ? { timeoutMs: args.timeoutMs } : {}),
  });
  // deno-lint-ignore no-console
  console.log(args.json ? JSON.stringify(report, null, 2) : formatReport(report));
  return report.ok ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());
