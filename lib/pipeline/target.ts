/**
 * @module target
 * From the client's request target to the path sent to Server A.
 *
 * Owns: what counts as a forwardable path (`/v1/...`, `/v1beta/...`, optionally behind `/u{id}`),
 * and the refusal of any target that could leave the configured upstream or its prefix. Pure.
 * Must never: parse the target with `new URL` and trust the result (it resolves `..`, `%2e%2e`
 * and backslashes, hiding what the client sent), or build a target from anything but the
 * configured upstream plus the validated client path.
 */

import { type RelayError, relayError } from "../errors.ts";

/** The client's request target split into raw path and raw query (with its `?`, or ""). */
export interface RawTarget {
  path: string;
  query: string;
}

/**
 * Splits `Request.url` without normalising it. Deno gives the target as sent (`/v1/../x` stays),
 * prefixed with scheme and authority; absolute-form targets keep the client's authority, which is
 * dropped here and never used.
 */
export function splitRequestUrl(url: string): RawTarget {
  const schemeEnd = url.indexOf("://");
  const pathStart = schemeEnd < 0 ? 0 : url.indexOf("/", schemeEnd + 3);
  if (pathStart < 0) return { path: "/", query: "" };
  const hash = url.indexOf("#", pathStart);
  const end = hash < 0 ? url.length : hash;
  const q = url.indexOf("?", pathStart);
  if (q < 0 || q > end) return { path: url.slice(pathStart, end), query: "" };
  return { path: url.slice(pathStart, q), query: url.slice(q, end) };
}

// RFC 3986 pchar plus "/" for paths; query adds "?". Anything else (space, CTL, backslash, quote,
// "#", non-ASCII) is refused: the path goes onto the request line verbatim.
const PATH_CHARS = /^[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*$/;
const QUERY_CHARS = /^[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*$/;
const PCT = /%(?![0-9A-Fa-f]{2})/;

function decodeSegment(segment: string): string | null {
  if (!segment.includes("%")) return segment;
  try {
    return decodeURIComponent(segment);
  } catch {
    return null;
  }
}

/** Refusal of a path that is malformed or tries to leave the prefix. */
function invalid(): RelayError {
  return relayError("invalid_path");
}

/**
 * Checks a client path and query for anything that could escape the upstream or its prefix:
 * dot-segments (plain or percent-encoded, including ones hidden behind an encoded slash),
 * backslashes, NUL, control and non-URL characters, bad percent-escapes. Returns the error or null.
 */
export function checkTarget(path: string, query: string): RelayError | null {
  if (!path.startsWith("/") || path.startsWith("//")) return invalid();
  if (!PATH_CHARS.test(path) || PCT.test(path)) return invalid();
  if (query !== "" && (!QUERY_CHARS.test(query) || PCT.test(query))) return invalid();
  // Without an escape each segment is what A reads, and PATH_CHARS already refused `\` and NUL:
  // only a dot-segment is left to find, without splitting the path into strings.
  if (!path.includes("%")) return hasDotSegment(path) ? invalid() : null;
  for (const segment of path.split("/")) {
    if (segment === "") continue;
    const decoded = decodeSegment(segment);
    if (decoded === null) return invalid();
    if (decoded.includes("\\") || decoded.includes("\0")) return invalid();
    // An encoded slash can hide "..": A may decode it before resolving dot-segments.
    for (const part of decoded.split("/")) if (part === "." || part === "..") return invalid();
  }
  return null;
}

/** Whether a segment of `path` (between slashes or the ends) is `.` or `..`. */
function hasDotSegment(path: string): boolean {
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    if (i < path.length && path.charCodeAt(i) !== 47) continue;
    const len = i - start;
    if (
      (len === 1 || len === 2) && path.charCodeAt(start) === 46 &&
      (len === 1 || path.charCodeAt(start + 1) === 46)
    ) {
      return true;
    }
    start = i + 1;
  }
  return false;
}

/** The API paths forwarded to Server A. */
export function isApiPath(path: string): boolean {
  return path.startsWith("/v1/") || path.startsWith("/v1beta/") || path === "/v1" ||
    path === "/v1beta";
}

/** A `/u{id}/...` path split into the route id and the API path behind it. */
export function matchUidPath(path: string): { id: string; rest: string } | null {
  const m = /^\/u(\d{1,9})(\/.*)?$/.exec(path);
  if (m === null) return null;
  return { id: m[1]!, rest: m[2] ?? "/" };
}

/**
 * The request target sent to A: the upstream's configured prefix, then the client's path and
 * query exactly as {@link checkTarget} accepted them. The only place the relay builds it (HTTP,
 * HTTP/2 and WebSocket alike), so what the property tests check is what goes on the wire.
 */
export function upstreamTarget(prefix: string, target: RawTarget): string {
  return prefix + target.path + target.query;
}
