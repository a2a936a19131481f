/**
 * @module credentials
 * UID-route key swap: the client's access key is checked and replaced by the route's Server A key.
 *
 * Owns: where API keys can appear (`Authorization: Bearer`, `x-api-key`, `x-goog-api-key`,
 * `?key=`) and the constant-time comparison. Pure.
 * Must never: add a credential in a place the client did not use, leave the access key in
 * the forwarded request, or put any key into an error message.
 */

import { relayError } from "../errors.ts";
import type { HeaderList } from "../http/mod.ts";

const encoder = new TextEncoder();

/** Compares two secrets in time that depends only on the length of `expected`. */
export function timingSafeEqual(actual: string, expected: string): boolean {
  const a = encoder.encode(actual);
  const b = encoder.encode(expected);
  let diff = a.byteLength ^ b.byteLength;
  for (let i = 0; i < b.byteLength; i++) diff |= (a[i % (a.byteLength || 1)] ?? 0) ^ b[i]!;
  return diff === 0;
}

const BEARER = /^bearer[ \t]+/i;

/**
 * Checks that every credential the client sent equals `accessKey` and replaces each with `apiKey`
 * in the same place. Throws a 401 RelayError when there is none or any differs.
 */
export function swapKey(
  headers: HeaderList,
  query: string,
  keys: { accessKey: string; apiKey: string },
): { headers: HeaderList; query: string } {
  let found = 0;
  let ok = true;
  const out: HeaderList = headers.map((entry) => {
    const [name, value] = entry;
    if (name === "authorization") {
      const m = BEARER.exec(value);
      if (m === null) return entry;
      found++;
      ok = timingSafeEqual(value.slice(m[0].length).trim(), keys.accessKey) && ok;
      return [name, `${m[0]}${keys.apiKey}`];
    }
    if (name === "x-api-key" || name === "x-goog-api-key") {
      found++;
      ok = timingSafeEqual(value.trim(), keys.accessKey) && ok;
      return [name, keys.apiKey];
    }
    return entry;
  });
  let newQuery = query;
  if (query.length > 1) {
    const params = query.slice(1).split("&").map((p) => {
      const eq = p.indexOf("=");
      // A decodes parameter names (`%6Bey` is `key`): so must the check, or the key slips past.
      if (decodedName(eq < 0 ? p : p.slice(0, eq)) !== "key") return p;
      found++;
      let v: string;
      try {
        v = decodeURIComponent(p.slice(eq + 1).replace(/\+/g, " "));
      } catch {
        v = "";
        ok = false;
      }
      if (eq < 0) ok = false;
      ok = timingSafeEqual(v, keys.accessKey) && ok;
      return `key=${encodeURIComponent(keys.apiKey)}`;
    });
    newQuery = `?${params.join("&")}`;
  }
  if (found === 0) throw relayError("missing_api_key");
  if (!ok) throw relayError("invalid_api_key");
  return { headers: out, query: newQuery };
}

function decodedName(raw: string): string {
  try {
    return decodeURIComponent(raw.replace(/\+/g, " "));
  } catch {
    return raw;
  }
}
