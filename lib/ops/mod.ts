/**
 * @module mod
 * The public surface of `lib/ops/`: what other layers import from it. Files outside the
 * folder import from here, never from the files behind it (tests may).
 */

export {
  broadPermissions,
  readAllowList,
  RELAY_NO_CODE_CACHE,
  RELAY_V8_FLAGS,
  relayDenoArgs,
  startupWarnings,
  writeAllowList,
} from "./permissions.ts";
export { exposedGc, startIdleGc } from "./idle_gc.ts";
