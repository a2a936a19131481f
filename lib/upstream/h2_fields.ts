/**
 * @module h2_fields
 * The rules on HTTP/2 header lists that the relay's HTTP/2 client applies: a response head from A
 * is checked (RFC 9113 §8.1.1, §8.2, §8.3.2) before the relay writes its fields into the HTTP/1.1
 * head it sends its client, and request fields carrying credentials are marked for HPACK's "never
 * indexed". Pure: no I/O.
 *
 * Must never: pass a field that could end or cut the HTTP/1.1 header line it is relayed in (CR, LF
 * or NUL in a value, a name that is not a lower-case token), a connection-specific field, or a
 * content-length that is not one plain number; or take a field value differently from the relay's
 * HTTP/1.1 client (`http1.ts`), so that A's answer means the same over either protocol.
 */

import { trimOwsFrom } from "../http/mod.ts";

/** Header fields as (name, value) pairs, latin1 strings; names lower-case. */
export type H2Fields = Array<[string, string]>;

/** A response head or trailers A sent that break the rules (§8.1.1): a stream PROTOCOL_ERROR. */
export class Malformed extends Error {}

/** RFC 9110 token chars without upper case: the names a response field may have (§8.2.1). */
const NAME_CHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz") {
  NAME_CHAR[c.charCodeAt(0)] = 1;
}

/** Fields HTTP/2 forbids (§8.2.2); `te` is for requests only. */
function connectionSpecific(name: string): boolean {
  switch (name.length) {
    case 2:
      return name === "te";
    case 7:
      return name === "upgrade";
    case 10:
      return name === "connection" || name === "keep-alive";
    case 16:
      return name === "proxy-connection";
    case 17:
      return name === "transfer-encoding";
    default:
      return false;
  }
}

function checkName(name: string): void {
  if (name.length === 0) throw new Malformed("an empty field name");
  if (name.charCodeAt(0) === 0x3a) throw new Malformed(`pseudo-header ${name} where none may be`);
  for (let i = 0; i < name.length; i++) {
    if (NAME_CHAR[name.charCodeAt(i)] !== 1) {
      throw new Malformed("a field name that is not a lower-case token");
    }
  }
  if (connectionSpecific(name)) throw new Malformed(`connection-specific field ${name}`);
}

/**
 * A field value as the relay's HTTP/1.1 client (http1.ts parseHead) would take it, so that an
 * upstream's field means the same over either protocol: CR, LF or NUL (which would end or cut the
 * HTTP/1.1 header line it is relayed in) throw; leading and trailing SP/HTAB are dropped, as that
 * client drops OWS (§8.2.1 forbids them in HTTP/2; dropping them, not failing the response, is the
 * HTTP/1.1 client's answer to the same bytes, and lets content-length be read alike).
 */
function checkValue(value: string): string {
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0x0a || c === 0x0d || c === 0) throw new Malformed("CR, LF or NUL in a field value");
  }
  return trimOwsFrom(value, 0);
}

/** A content-length value: digits only (a list, even of equal values, is refused), or throws. */
function parseLength(value: string): number {
  if (value.length === 0 || value.length > 15) throw new Malformed("bad content-length");
  let n = 0;
  for (let i = 0; i < value.length; i++) {
    const d = value.charCodeAt(i) - 0x30;
    if (d < 0 || d > 9) throw new Malformed("bad content-length");
    n = n * 10 + d;
  }
  return n;
}

/**
 * Checks a response head (§8.3.2) and takes `:status` out of `fields`: `:status` first and once,
 * three digits; then regular fields only. Returns the status; `lengthOut[0]` gets the
 * content-length, or -1.
 */
export function checkHead(fields: H2Fields, lengthOut: Float64Array): number {
  const first = fields[0];
  if (first === undefined || first[0] !== ":status") {
    throw new Malformed(":status missing or not first");
  }
  const v = first[1];
  if (v.length !== 3) throw new Malformed("bad :status");
  let status = 0;
  for (let i = 0; i < 3; i++) {
    const d = v.charCodeAt(i) - 0x30;
    if (d < 0 || d > 9) throw new Malformed("bad :status");
    status = status * 10 + d;
  }
  if (status < 100) throw new Malformed("bad :status");
  let length = -1;
  for (let i = 1; i < fields.length; i++) {
    const field = fields[i]!;
    const name = field[0];
    checkName(name);
    const value = checkValue(field[1]);
    field[1] = value;
    if (name === "content-length") {
      const n = parseLength(value);
      if (length >= 0 && n !== length) throw new Malformed("conflicting content-length fields");
      length = n;
    }
  }
  fields.shift();
  lengthOut[0] = length;
  return status;
}

/**
 * Request fields sent "never indexed" (RFC 7541 §6.2.3): credentials the clients of this relay send,
 * which no intermediary between B and A may keep in its compression table.
 */
const SENSITIVE: ReadonlySet<string> = new Set([
  "authorization",
  "proxy-authorization",
  "cookie",
  "x-api-key",
  "x-goog-api-key",
  "api-key",
]);

/** Whether a request field is sent "never indexed". */
export function isSensitive(name: string): boolean {
  return SENSITIVE.has(name);
}
