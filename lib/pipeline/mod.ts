/**
 * @module mod
 * The public surface of `lib/pipeline/`: what other layers import from it. Files outside the
 * folder import from here, never from the files behind it (tests may).
 */

export { checkAdmin } from "./admin.ts";
export { Guards } from "./guards.ts";
export { forward, relayErrorFor } from "./proxy.ts";
export { type Admission, admit, type StepDeps } from "./steps.ts";
export { type RawTarget, splitRequestUrl } from "./target.ts";
export { isWebSocketUpgrade, relayWebSocket } from "./ws_entry.ts";
