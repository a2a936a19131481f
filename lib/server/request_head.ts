/**
 * @module request_head
 * The own server's request-head parser: the request line and header lines as text in, a
 * {@link RequestHead} out, and `req.url` built from it. Pure. Must never: accept framing that
 * `Deno.serve` (hyper) would refuse or that could be read two ways (both lengths, differing
 * lengths, a last coding other than chunked), normalise the target (the relay's own path checks
 * must see it as sent), or let a Host header move the URL.
 */

import { type ErrorParams, type RelayError, relayError } from "../errors.ts";
import { TOKEN, trimOws } from "../http/mod.ts";

/** A parsed request head. */
export interface RequestHead {
  method: string;
  /** The request-target as sent. */
  target: string;
  http10: boolean;
  /** Names and values as sent (values without surrounding whitespace). */
  headers: [string, string][];
  /** The Host header, or null when there is none. */
  host: string | null;
  /** -1 when there is no content-length. */
  contentLength: number;
  chunked: boolean;
  keepAlive: boolean;
  expectContinue: boolean;
  /** The request has an Upgrade header. */
  upgrade: boolean;
}

// deno-lint-ignore no-control-regex
const BAD_CTL = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/;
const BARE_CR = /\r(?!\n)/;
const DIGITS = /^\d{1,15}$/;

export function badRequest(reason: ErrorParams<"bad_request">["reason"]): RelayError {
  return relayError("bad_request", { reason });
}

/**
 * Parses a request head: the request line and header lines, each ended by CRLF or LF, without the
 * blank line. Throws a 400 {@link RelayError} for anything `Deno.serve` (hyper) would refuse, and
 * for the framing it could be fooled by: both content-length and transfer-encoding, differing
 * content-lengths, a final transfer coding other than chunked.
 */
export function parseRequestHead(text: string): RequestHead {
  if (BAD_CTL.test(text) || BARE_CR.test(text)) {
    throw badRequest("control_character");
  }
  let eol = text.indexOf("\n");
  if (eol < 0) eol = text.length;
  const line = text.slice(0, text.charCodeAt(eol - 1) === 13 ? eol - 1 : eol);
  const sp1 = line.indexOf(" ");
  const sp2 = sp1 < 0 ? -1 : line.indexOf(" ", sp1 + 1);
  if (sp1 <= 0 || sp2 < 0) throw badRequest("request_line");
  const method = line.slice(0, sp1);
  const target = line.slice(sp1 + 1, sp2);
  const version = line.slice(sp2 + 1);
  if (!TOKEN.test(method)) throw badRequest("method");
  if (target === "" || target.includes("\t")) throw badRequest("request_target");
  const http10 = version === "HTTP/1.0";
  if (!http10 && version !== "HTTP/1.1") throw badRequest("http_version");

  const headers: [string, string][] = [];
  let host: string | null = null;
  let contentLength = -1;
  let te: string | null = null;
  let connection: string | null = null;
  let expectContinue = false;
  let upgrade = false;
  let pos = eol + 1;
  while (pos < text.length) {
    let e = text.indexOf("\n", pos);
    if (e < 0) e = text.length;
    const le = text.charCodeAt(e - 1) === 13 ? e - 1 : e;
    const c0 = text.charCodeAt(pos);
    if (c0 === 32 || c0 === 9) throw badRequest("folded_header");
    const colon = text.indexOf(":", pos);
    if (colon < 0 || colon >= le) throw badRequest("header_line");
    const name = text.slice(pos, colon);
    if (!TOKEN.test(name)) throw badRequest("header_name");
    let vs = colon + 1;
    let ve = le;
    let c: number;
    while (vs < ve && ((c = text.charCodeAt(vs)) === 32 || c === 9)) vs++;
    while (ve > vs && ((c = text.charCodeAt(ve - 1)) === 32 || c === 9)) ve--;
    const value = text.slice(vs, ve);
    headers.push([name, value]);
    pos = e + 1;
    // Only names of these lengths matter here: skip the lowercasing for the rest.
    const n = name.length;
    if (n !== 4 && n !== 6 && n !== 7 && n !== 10 && n !== 14 && n !== 17) continue;
    switch (name.toLowerCase()) {
      case "host":
        if (host !== null) throw badRequest("duplicate_host");
        host = value;
        break;
      case "content-length": {
        if (!DIGITS.test(value)) throw badRequest("content_length");
        const len = Number(value);
        if (contentLength >= 0 && contentLength !== len) {
          throw badRequest("conflicting_content_length");
        }
        contentLength = len;
        break;
      }
      case "transfer-encoding":
        te = te === null ? value : `${te},${value}`;
        break;
      case "connection":
        connection = connection === null ? value : `${connection},${value}`;
        break;
      case "expect":
        expectContinue = value.toLowerCase() === "100-continue";
        break;
      case "upgrade":
        upgrade = true;
        break;
    }
  }
  let chunked = false;
  if (te !== null) {
    if (contentLength >= 0) throw badRequest("length_and_chunked");
    // RFC 9112 §6.1: an HTTP/1.0 message with transfer-encoding has faulty framing.
    if (http10) throw badRequest("http10_transfer_encoding");
    if (trimOws(te.slice(te.lastIndexOf(",") + 1)).toLowerCase() !== "chunked") {
      throw badRequest("transfer_encoding");
    }
    chunked = true;
  }
  // RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request with no Host.
  if (host === null && !http10) throw badRequest("missing_host");
  const conn = connection?.toLowerCase() ?? "";
  const keepAlive = http10
    ? hasToken(conn, "keep-alive") && !hasToken(conn, "close")
    : !hasToken(conn, "close");
  return {
    method,
    target,
    http10,
    headers,
    host,
    contentLength,
    chunked,
    keepAlive,
    expectContinue: expectContinue && !http10,
    upgrade,
  };
}

export function hasToken(list: string, token: string): boolean {
  if (!list.includes(token)) return false;
  for (const t of list.split(",")) if (trimOws(t) === token) return true;
  return false;
}

// A reg-name, IPv4 or IP-literal with an optional port: nothing that would move the URL's path
// (`/`, `?`, `#`), add user info (`@`) or be rewritten (`\`, whitespace, non-ASCII).
const HOST = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::\d{0,5})?$/;

/**
 * `req.url` for a request: `http://` + the Host header (or `fallbackHost` when there is none or it
 * is empty) + the request-target. An absolute-form target contributes its path and query only;
 * `*` (OPTIONS) becomes `/*`. Throws a 400 {@link RelayError} for a Host header that is not a plain
 * host and port, or a target in another form.
 */
export function requestUrl(head: RequestHead, fallbackHost: string): string {
  const host = head.host === null || head.host === "" ? fallbackHost : head.host;
  if (!HOST.test(host)) throw badRequest("invalid_host");
  let target = head.target;
  if (target.charCodeAt(0) !== 47) {
    if (target === "*") target = "/*";
    else {
      const scheme = target.slice(0, 8).toLowerCase();
      const skip = scheme.startsWith("http://") ? 7 : scheme.startsWith("https://") ? 8 : -1;
      if (skip < 0) throw badRequest("target_form");
      let at = -1;
      for (let i = skip; i < target.length; i++) {
        const c = target.charCodeAt(i);
        if (c === 47 || c === 63 || c === 35) {
          at = i;
          break;
        }
      }
      target = at < 0
        ? "/"
        : target.charCodeAt(at) === 47
        ? target.slice(at)
        : `/${target.slice(at)}`;
    }
  }
  return `http://${host}${target}`;
}

export function parseLength(value: string): number {
  return DIGITS.test(value) ? Number(value) : -1;
}
