/**
 * @module mod
 * The public surface of `lib/server/`: what other layers import from it. Files outside the
 * folder import from here, never from the files behind it (tests may).
 */

export {
  connectionCap,
  fdLimitArg,
  isOutOfDescriptors,
  overloaded,
  readFdLimit,
  ulimitHard,
} from "./conn_limit.ts";
export { listen, type Listener, type ListenOptions } from "./listen.ts";
export { SendTimeoutError, SendWatch } from "./send_watch.ts";
