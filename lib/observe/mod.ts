/**
 * @module mod
 * The public surface of `lib/observe/`: what other layers import from it. Files outside the
 * folder import from here, never from the files behind it (tests may).
 */

export { type AccessLogHandle, openAccessLog } from "./access_log.ts";
export { dashboardAsset } from "./dashboard_entry.ts";
export { Logger, stderrSink } from "./log.ts";
export { PROM_CONTENT_TYPE } from "./metrics.ts";
export { type Counters, Telemetry } from "./telemetry.ts";
export { UsageTap } from "./usage.ts";
export { VERSION } from "./version.ts";
