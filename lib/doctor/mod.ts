/**
 * @module mod
 * The public surface of `lib/doctor/`: what `scripts/doctor.ts` imports. A folder of its own, apart
 * from `ops/` (which `main.ts` imports), so that the relay never loads the doctor's code.
 */

export {
  DOCTOR_USAGE,
  type DoctorArgs,
  formatReport,
  parseDoctorArgs,
  runDoctor,
} from "./doctor.ts";
