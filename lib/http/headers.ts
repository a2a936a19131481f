/**
 * @module headers
 * Which headers cross the relay, in each direction.
 *
 * Owns: the hop-by-hop set, the client-IP headers the relay writes, and the redaction used for
 * debug output. Pure: no I/O, no logging. Must never: drop or rewrite an end-to-end header
 * (underscored names such as `session_id`, `content-encoding`, `anthropic-*`, `openai-*`), or let
 * a client-supplied `X-Real-IP` / `X-Forwarded-For` through unless the caller says it is trusted.
 */

/** A header list as sent on the wire, names lower-case. */
export type HeaderList = Array<[string, string]>;

/** RFC 9110 §7.6.1 hop-by-hop headers, plus ones the HTTP client sets itself. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "http2-settings",
]);

/**
 * Request headers the relay itself decides (host, framing, client identity). Framing above all:
 * the upstream writer states the length of the bytes it actually sends, so a client's
 * `content-length` is never copied, whatever `Connection` names.
 */
const REQUEST_OWN = new Set([
  "host",
  "content-length",
  "expect",
  "x-real-ip",
  "x-forwarded-for",
  "forwarded",
]);

/**
 * Header names whose values are secrets: never logged or shown. A pattern rather than a list, so
 * a credential header nobody listed yet (`x-goog-api-key`, `x-auth-token`, a session cookie) is
 * caught by its name.
 */
const SECRET = /auth|key|token|secret|passw|cookie|signature|credential/i;

/** The `Connection` values nearly every message has, parsed once (never changed by callers). */
const COMMON_TOKENS: ReadonlyMap<string, ReadonlySet<string>> = new Map(
  ["keep-alive", "close", "Keep-Alive", "Close"].map((v) => [v, new Set([v.toLowerCase()])]),
);

function connectionTokens(value: string | null): ReadonlySet<string> | null {
  if (value === null || value === "") return null;
  const common = COMMON_TOKENS.get(value);
  if (common !== undefined) return common;
  const names = value.toLowerCase().split(",").map(trimOws).filter((s) => s !== "");
  return names.length === 0 ? null : new Set(names);
}

/** Whether a field name is `Connection` in any case, without a lower-cased copy for most names. */
function isConnection(name: string): boolean {
  return name === "connection" || name === "Connection" ||
    (name.length === 10 && name.toLowerCase() === "connection");
}

/**
 * The header names listed by the `Connection` lines of `lines` (names in any case). Every line
 * counts: a client or an upstream may send several.
 */
function namedByConnection(
  lines: ReadonlyArray<readonly [string, string]>,
): ReadonlySet<string> | null {
  let named: ReadonlySet<string> | null = null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (!isConnection(line[0])) continue;
    const tokens = connectionTokens(line[1]);
    if (tokens !== null) named = named === null ? tokens : new Set([...named, ...tokens]);
  }
  return named;
}

/** Options for {@link requestHeaders}. */
export interface RequestHeaderOptions {
  /** The real client IP, sent as `X-Real-IP` and appended to `X-Forwarded-For`. */
  clientIp: string;
  /**
   * `X-Forwarded-For` chain to append to: only from a trusted proxy in front of the relay.
   * Undefined means the client's own value is discarded.
   */
  trustedForwardedFor?: string | undefined;
  /**
   * The address the relay got the request from (the trusted proxy), appended to a trusted chain
   * as every proxy appends its own peer. Defaults to `clientIp`.
   */
  peerIp?: string | undefined;
}

/**
 * The headers to send to Server A for a client request: every end-to-end header as sent, minus
 * hop-by-hop ones and those named by `Connection`, plus the client IP headers. Given the field
 * lines as they arrived (the own server hands them over), they go on in the client's order,
 * repeated fields apart; given `Headers` (`Deno.serve`), as `Headers` iterates them: sorted, a
 * repeated field joined into one line.
 */
export function requestHeaders(
  incoming: Headers | HeaderList,
  options: RequestHeaderOptions,
): HeaderList {
  const lines = incoming instanceof Headers ? [...incoming] : incoming;
  const named = namedByConnection(lines);
  const out: HeaderList = [];
  for (let i = 0; i < lines.length; i++) {
    const field = lines[i]!;
    const name = field[0].toLowerCase();
    if (HOP_BY_HOP.has(name) || REQUEST_OWN.has(name) || named?.has(name)) continue;
    out.push(name === field[0] ? field : [name, field[1]]);
  }
  out.push(["x-real-ip", options.clientIp]);
  const chain = options.trustedForwardedFor?.trim();
  out.push([
    "x-forwarded-for",
    chain ? `${chain}, ${options.peerIp ?? options.clientIp}` : options.clientIp,
  ]);
  return out;
}

/**
 * The headers to send to the client for Server A's response: everything but hop-by-hop ones and
 * those named by `Connection`. `content-encoding` and `content-length` stay: the body bytes are
 * passed through exactly as A sent them. A `content-length` that does not describe the body goes
 * (RFC 9112 §6.3): beside `transfer-encoding`, which wins, and on a 1xx, 204 or 304, which has
 * no body.
 */
export function responseHeaders(incoming: HeaderList, status: number): Headers {
  return new Headers(responseFields(incoming, status));
}

/** {@link responseHeaders} as a header list: the field lines in A's order, repeated ones apart. */
export function responseFields(incoming: HeaderList, status: number): HeaderList {
  const named = namedByConnection(incoming);
  let dropLength = status < 200 || status === 204 || status === 304;
  for (let i = 0; i < incoming.length && !dropLength; i++) {
    if (incoming[i]![0] === "transfer-encoding") dropLength = true;
  }
  const out: HeaderList = [];
  for (let i = 0; i < incoming.length; i++) {
    const field = incoming[i]!;
    const name = field[0];
    if (HOP_BY_HOP.has(name) || named?.has(name)) continue;
    if (dropLength && name === "content-length") continue;
    out.push(field);
  }
  return out;
}

/**
 * `s` without leading and trailing spaces and tabs: RFC 9110 OWS. Not `String.prototype.trim`,
 * which also strips `\xa0` and other Unicode spaces, so `chunked\xa0` would pass for `chunked`.
 */
export function trimOws(s: string): string {
  return trimOwsFrom(s, 0);
}

/** {@link trimOws} of `s` from index `start` on, without slicing twice. */
export function trimOwsFrom(s: string, start: number): string {
  let end = s.length;
  let c: number;
  while (start < end && ((c = s.charCodeAt(start)) === 32 || c === 9)) start++;
  while (end > start && ((c = s.charCodeAt(end - 1)) === 32 || c === 9)) end--;
  return start === 0 && end === s.length ? s : s.slice(start, end);
}

/** Whether a header carries a credential. */
export function isSecretHeader(name: string): boolean {
  return SECRET.test(name);
}

/** A copy of headers safe for debug logs: credential values replaced by their length only. */
export function redactHeaders(headers: Iterable<[string, string]>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of headers) {
    const safe = SECRET.test(name) ? `[redacted ${value.length} chars]` : value;
    out[name] = out[name] === undefined ? safe : `${out[name]}, ${safe}`;
  }
  return out;
}

/** Redacts `key=` query parameters (Gemini-style API keys) from a path with query. */
export function redactQuery(pathAndQuery: string): string {
  const q = pathAndQuery.indexOf("?");
  if (q < 0) return pathAndQuery;
  const params = pathAndQuery.slice(q + 1).split("&").map((p) => {
    const eq = p.indexOf("=");
    const raw = eq < 0 ? p : p.slice(0, eq);
    return isKeyParam(raw) ? `${raw}=[redacted]` : p;
  });
  return `${pathAndQuery.slice(0, q)}?${params.join("&")}`;
}

/** Whether a raw query parameter name (possibly percent-encoded) names a credential. */
export function isKeyParam(rawName: string): boolean {
  let name = rawName;
  if (name.includes("%") || name.includes("+")) {
    try {
      name = decodeURIComponent(name.replace(/\+/g, " "));
    } catch { /* undecodable: compare as written */ }
  }
  name = name.toLowerCase();
  return name === "key" || name === "api_key" || name === "access_token";
}

/**
 * Whether a response is an event stream (`text/event-stream`, any case, any parameters). Its
 * framing is passed on as A chose it, and it is logged as a stream, however fast it arrived.
 */
export function isEventStream(headers: ReadonlyArray<readonly [string, string]>): boolean {
  for (let i = 0; i < headers.length; i++) {
    const [name, value] = headers[i]!;
    if (sameName(name, "content-type")) {
      return value.trimStart().toLowerCase().startsWith("text/event-stream");
    }
  }
  return false;
}

/**
 * Every value of the field `name` (given lower-case) in `lines`, whatever the case of the names
 * there, joined with ", " as `Headers.get` does; null when there is none. Reads the lines as they
 * arrived without making a `Headers` (see `handoff.ts`).
 */
export function fieldValue(
  lines: ReadonlyArray<readonly [string, string]>,
  name: string,
): string | null {
  let out: string | null = null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (sameName(line[0], name)) out = out === null ? line[1] : `${out}, ${line[1]}`;
  }
  return out;
}

/** Whether field name `sent` (any case) is `lower`; no string is made. */
function sameName(sent: string, lower: string): boolean {
  if (sent.length !== lower.length) return false;
  if (sent === lower) return true;
  for (let i = 0; i < sent.length; i++) {
    let c = sent.charCodeAt(i);
    if (c >= 65 && c <= 90) c += 32;
    if (c !== lower.charCodeAt(i)) return false;
  }
  return true;
}

/**
 * Appends each field line of `lines` to `headers`, validated as `new Headers(lines)` would.
 * A header list given in `RequestInit`/`ResponseInit` goes through WebIDL's sequence conversion
 * first: `new Response(body, { headers: lines })` with six lines takes ~6.6 µs, the Response
 * without them and six appends ~2.2 µs (`deno bench`, this project's 2-core machine).
 */
export function appendAll(headers: Headers, lines: ReadonlyArray<readonly [string, string]>): void {
  for (let i = 0; i < lines.length; i++) headers.append(lines[i]![0], lines[i]![1]);
}
