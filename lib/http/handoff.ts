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
 * Handlers served by `Deno.serve` need neither: there `req.url` is already as sent and a
 * Response's own header list is written.
 */

import type { HeaderList } from "./headers.ts";

const sentUrls = new WeakMap<Request, string>();
const fieldLines = new WeakMap<Response, HeaderList>();

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
