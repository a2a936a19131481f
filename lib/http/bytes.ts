/**
 * @module bytes
 * Byte helpers both HTTP ends share: joining chunks and the Latin-1 mapping header bytes use on
 * the wire. Pure; no I/O.
 */

const encoder = new TextEncoder();
const asciiDecoder = new TextDecoder();

/** Joins byte arrays (returns the only part as is). */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  let len = 0;
  for (const p of parts) len += p.byteLength;
  const out = new Uint8Array(len);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

/**
 * Header bytes are Latin-1 on the wire; TextEncoder would turn é into two bytes. Throws a
 * RangeError for a character above U+00FF: masking it to a byte would write a different header.
 */
export function encodeLatin1(s: string): Uint8Array {
  // deno-lint-ignore no-control-regex
  if (/^[\x00-\x7f]*$/.test(s)) return encoder.encode(s);
  const out = new Uint8Array(s.length);
  putLatin1(out, 0, s);
  return out;
}

/**
 * Writes `s` as Latin-1 bytes into `out` at `off` and returns the offset after it; throws a
 * RangeError, as {@link encodeLatin1} does, for a character above U+00FF. For a head built from
 * many pieces: written straight into one buffer, no joined string is made and then encoded.
 */
export function putLatin1(out: Uint8Array, off: number, s: string): number {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff) throw new RangeError("character above U+00FF in a header");
    out[off++] = c;
  }
  return off;
}

/** Bytes as a Latin-1 string (one char per byte). */
export function decodeLatin1(bytes: Uint8Array): string {
  // Nearly every head is ASCII: decode natively; only bytes >= 0x80 need the Latin-1 mapping.
  let ascii = true;
  for (let i = 0; i < bytes.byteLength; i++) {
    if (bytes[i]! > 0x7f) {
      ascii = false;
      break;
    }
  }
  if (ascii) return asciiDecoder.decode(bytes);
  let s = "";
  for (let i = 0; i < bytes.byteLength; i += 8192) {
    s += String.fromCharCode(...bytes.subarray(i, Math.min(i + 8192, bytes.byteLength)));
  }
  return s;
}
