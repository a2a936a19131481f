/**
 * @module handoff
 * What a handler and the own HTTP/1.1 server (`server/`) tell each other beside the standard
 * `Request` and `Response`, through weak maps keyed on those objects (public API only; nothing is
 * kept once the object is gone):
 * - the request target exactly as the client sent it ({@link sentUrl}): `new Request` normalises
 *   dot-segments and escapes, `Deno.serve` does not, and the relay's own path checks depend on
 *   seeing the target as sent;
 * - a forwarded response's field lines in A's order with repeated fields apart
 *   ({@link withFieldLines}): iterating `Headers` joins two `www-authenticate` lines into one and
 *   sorts names, where `Deno.serve` sends them as they were appended.
 *
 * - a response body that can be read without a stream ({@link withDirectBody}): the upstream
 *   client's reader goes straight to A's socket, so the own server's write loop costs no stream
 *   machinery per chunk.
 *
 * - a request's field lines as they arrived ({@link withRequestFields}): iterating `Headers` costs
 *   a sorted, joined copy (about 14 KB of garbage for a typical request), and A should get the
 *   lines as the client sent them.
 *
 * Handlers served by `Deno.serve` need none of them: there `req.url` is already as sent and a
 * Response's own header list is written.
 */

import type { HeaderList } from "./headers.ts";

/** The reading half of a `ReadableStreamDefaultReader`, which also satisfies it. */
export interface BodyReaderLike {
  read(): Promise<ReadableStreamReadResult<Uint8Array>>;
  cancel(reason?: unknown): Promise<void>;
  /**
   * False when the next read must wait for I/O; then the writer sends what it gathered without
   * first letting microtask turns pass in case a chunk is produced without I/O.
   */
  ready?(): boolean;
  /**
   * True when a chunk read is only lent: valid until the next `read()` (it is a view of the
   * reader's buffer). The reader must then be done with every chunk before reading again.
   */
  readonly lent?: boolean;
}

const sentUrls = new WeakMap<Request, string>();
const directBodies = new WeakMap<Response, BodyReaderLike>();
const fieldLines = new WeakMap<Response, HeaderList>();
const requestFields = new WeakMap<Request, HeaderList>();

/**
 * Registers `lines` as the field lines `req` was made from, as they arrived (names as sent,
 * values without surrounding whitespace). Contract: `req.headers` is not changed afterwards.
 */
export function withRequestFields(req: Request, lines: HeaderList): void {
  requestFields.set(req, lines);
}

/** The field lines `req` arrived with, or its `Headers` when the server did not register them. */
export function requestFieldsOf(req: Request): HeaderList | Headers {
  return requestFields.get(req) ?? req.headers;
}

/** Records the URL as sent, when `new Request` changed it (the server calls this). */
export function keepSentUrl(req: Request, url: string): void {
  sentUrls.set(req, url);
}

/** `req.url` as the client sent the target (no dot-segment or escape normalisation). */
export function sentUrl(req: Request): string {
  return sentUrls.get(req) ?? req.url;
}

/**
 * Registers `lines` as the exact field lines of `res` (the headers it was made from) and returns
 * `res`. Contract: `res.headers` is not changed afterwards, since the own server writes `lines`;
 * whoever needs another header adds it to `lines` before making the Response.
 */
export function withFieldLines(res: Response, lines: HeaderList): Response {
  fieldLines.set(res, lines);
  return res;
}

/**
 * Appends a field line to `res` that must stay a line of its own (a second `www-authenticate`
 * challenge: a browser reads two challenges joined into one line as one bad challenge) and
 * returns `res`, registered for the own server. Only for a Response not handed over yet.
 */
export function appendLine(res: Response, name: string, value: string): Response {
  const lines: HeaderList = [];
  res.headers.forEach((v, n) => lines.push([n, v]));
  lines.push([name.toLowerCase(), value]);
  res.headers.append(name, value);
  return withFieldLines(res, lines);
}

/** Calls `fn` for each field line of `res` as it goes on the wire (lower-case names). */
export function eachFieldLine(res: Response, fn: (value: string, name: string) => void): void {
  const lines = fieldLines.get(res);
  if (lines === undefined) {
    res.headers.forEach(fn);
    return;
  }
  for (let i = 0; i < lines.length; i++) fn(lines[i]![1], lines[i]![0]);
}

/**
 * Registers `reader` as another way to read the body of `res` and returns `res`. Contract: it
 * reads the same bytes as `res.body`, and only one of the two is ever read.
 */
export function withDirectBody(res: Response, reader: BodyReaderLike): Response {
  directBodies.set(res, reader);
  return res;
}

/**
 * The direct reader of `res`'s body, once (the registration is removed), or null when there is
 * none or the body stream was already taken.
 */
export function takeDirectBody(res: Response): BodyReaderLike | null {
  const reader = directBodies.get(res);
  if (reader === undefined) return null;
  directBodies.delete(res);
  return res.bodyUsed || res.body?.locked ? null : reader;
}
