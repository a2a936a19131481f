/**
 * @module response_head
 * The bytes of a response head as the own server writes them: status lines with canonical
 * reasons, the `date` header made once a second, connection management at the end of a head, and
 * whole error answers for sockets the server refuses itself.
 *
 * Pure apart from the clock behind `date`. Header values are ByteStrings (Latin-1): each char is
 * one byte on the wire, never UTF-8.
 */

import { errorBody, type RelayError } from "../errors.ts";
import { concat, encodeLatin1, putLatin1 } from "../http/mod.ts";

const encoder = new TextEncoder();

const REASONS: Record<number, string> = {
  100: "Continue",
  101: "Switching Protocols",
  102: "Processing",
  103: "Early Hints",
  200: "OK",
  201: "Created",
  202: "Accepted",
  203: "Non-Authoritative Information",
  204: "No Content",
  205: "Reset Content",
  206: "Partial Content",
  207: "Multi-Status",
  208: "Already Reported",
  226: "IM Used",
  300: "Multiple Choices",
  301: "Moved Permanently",
  302: "Found",
  303: "See Other",
  304: "Not Modified",
  305: "Use Proxy",
  307: "Temporary Redirect",
  308: "Permanent Redirect",
  400: "Bad Request",
  401: "Unauthorized",
  402: "Payment Required",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  406: "Not Acceptable",
  407: "Proxy Authentication Required",
  408: "Request Timeout",
  409: "Conflict",
  410: "Gone",
  411: "Length Required",
  412: "Precondition Failed",
  413: "Payload Too Large",
  414: "URI Too Long",
  415: "Unsupported Media Type",
  416: "Range Not Satisfiable",
  417: "Expectation Failed",
  418: "I'm a teapot",
  421: "Misdirected Request",
  422: "Unprocessable Entity",
  423: "Locked",
  424: "Failed Dependency",
  426: "Upgrade Required",
  428: "Precondition Required",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  451: "Unavailable For Legal Reasons",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
  506: "Variant Also Negotiates",
  507: "Insufficient Storage",
  508: "Loop Detected",
  510: "Not Extended",
  511: "Network Authentication Required",
};

const statusLines11 = new Map<number, string>();
const statusLines10 = new Map<number, string>();

/** `HTTP/1.x <status> <canonical reason>\r\n` (like hyper, the Response's statusText is not used). */
export function statusLine(status: number, http10: boolean): string {
  const cache = http10 ? statusLines10 : statusLines11;
  let line = cache.get(status);
  if (line === undefined) {
    line = `HTTP/1.${http10 ? 0 : 1} ${status} ${REASONS[status] ?? ""}\r\n`;
    cache.set(status, line);
  }
  return line;
}

let dateSecond = -1;
let dateText = "";

/** The `date` header value, made once per second. */
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(now).toUTCString();
  }
  return dateText;
}

/** The end of a response head: `date` unless the handler set one, connection management, CRLF. */
export function headTail(hasDate: boolean, keep: boolean, http10: boolean): string {
  let t = hasDate ? "\r\n" : `date: ${httpDate()}\r\n\r\n`;
  if (!keep && !http10) t = `connection: close\r\n${t}`;
  else if (keep && http10) t = `connection: keep-alive\r\n${t}`;
  return t;
}

/** What a response write is made of: strings (head, chunk framing; one char per byte) and bytes. */
export type Part = string | Uint8Array;

/**
 * Copies parts into `out`; returns the length. Strings are written as Latin-1: header values are
 * ByteStrings, which TextEncoder would turn into UTF-8.
 */
export function fill(out: Uint8Array, parts: Part[]): number {
  let off = 0;
  for (const p of parts) {
    if (typeof p === "string") {
      off = putLatin1(out, off, p);
    } else {
      out.set(p, off);
      off += p.byteLength;
    }
  }
  return off;
}

/** A whole error response (JSON body, `connection: close`) as bytes. */
export function errorBytes(err: RelayError): Uint8Array {
  const body = encoder.encode(errorBody(err));
  let head = statusLine(err.status, false) +
    `content-type: application/json; charset=utf-8\r\ncontent-length: ${body.byteLength}\r\n`;
  for (const [name, value] of Object.entries(err.headers ?? {})) {
    if (name.toLowerCase() !== "connection") head += `${name.toLowerCase()}: ${value}\r\n`;
  }
  head += `date: ${httpDate()}\r\nconnection: close\r\n\r\n`;
  return concat([encodeLatin1(head), body]);
}
