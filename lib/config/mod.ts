/**
 * @module mod
 * The public surface of `lib/config/`: what other layers import from it. Files outside the
 * folder import from here, never from the files behind it (tests may).
 */

export {
  type Config,
  ConfigError,
  type Env,
  parseConfig,
  type Route,
  type Upstream,
} from "./config.ts";
export { clientIpFrom, isLoopback, isPublicBindAddress } from "./ip.ts";
export { parseRate, type Rate } from "./rate.ts";
export { createReloader, planReload, type ReloadPlan } from "./reload.ts";
export { loadTlsFiles, type TlsPair } from "./tls.ts";
export { VARS } from "./vars.ts";
