/**
 * @module mod
 * The public surface of `lib/http/`: what other layers import from it. Files outside the
 * folder import from here, never from the files behind it (tests may).
 */

export { concat, decodeLatin1, encodeLatin1, putLatin1 } from "./bytes.ts";
export { ChunkedDecoder, FramingError } from "./chunked.ts";
export {
  attachCancel,
  cancelHookAvailable,
  directReadAvailable,
  internalsFound,
  readConn,
  staticBody,
} from "./deno_internals.ts";
export { type ClientInfo, type Upgrader } from "./client_info.ts";
export { type Endpoint, type Upstream } from "./endpoint.ts";
export {
  appendAll,
  fieldValue,
  type HeaderList,
  isEventStream,
  isSecretHeader,
  redactHeaders,
  redactQuery,
  requestHeaders,
  responseFields,
  responseHeaders,
  trimOws,
  trimOwsFrom,
} from "./headers.ts";
export {
  appendLine,
  type BodyReaderLike,
  eachFieldLine,
  keepSentUrl,
  lazyFieldLines,
  lazyRequestFields,
  type LentBytes,
  requestField,
  requestFieldsOf,
  sentUrl,
  streamOf,
  takeBodyRelease,
  takeDirectBody,
  takeLentBody,
  withBodyRelease,
  withDirectBody,
  withFieldLines,
  withRequestFields,
  withWholeBody,
} from "./handoff.ts";
export { STATUS_CLASSES, statusClassIndex } from "./status.ts";
export { TOKEN } from "./syntax.ts";
export { Watchdog, type Watched } from "./watchdog.ts";
export {
  BLOCKED_SLOT,
  CONN_SLOT,
  IDLE_SLOT,
  LINGER_SLOT,
  SlotSet,
  type Slotted,
  WATCH_SLOT,
} from "./slot_set.ts";
export { IdTable } from "./id_table.ts";
export { type WriteSlab, WriteSlabs } from "./write_slabs.ts";
