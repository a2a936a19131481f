/**
 * @module mod
 * The public surface of `lib/upstream/`: what other layers import from it. Files outside the
 * folder import from here, never from the files behind it (tests may).
 */

export { UpstreamSet } from "./health.ts";
export {
  bodyFraming,
  type BodyReader,
  BodySource,
  type BodyTap,
  type Connection,
  type Connector,
  exchange,
  exchangeOptions,
  Pool,
  readHead,
  UpstreamError,
  type UpstreamResponse,
} from "./http1.ts";
// Type only: a value export would load the HTTP/2 client at start (pools.ts imports it on first use).
export type { H2Pool } from "./http2.ts";
export { PoolSet, type PoolSetOptions } from "./pools.ts";
