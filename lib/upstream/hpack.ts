/**
 * @module hpack
 * HPACK (RFC 7541), the header compression of HTTP/2: a full decoder for the header blocks A
 * sends, and the simplest correct encoder for the blocks we send.
 *
 * Owns: the static table, the Huffman code (Appendix B), one connection's decoding dynamic table,
 * and the encoding of a request's header list. Pure: no I/O, no logging. Names and values are
 * latin1 strings (one char per byte), since HTTP field values are bytes, not text; whether a
 * decoded name or value is valid HTTP is the session's question, not this module's.
 *
 * Must never: let a block desynchronise the dynamic table from A's encoder (a too-large header
 * list is reported only after the whole block is decoded, so the table took every insertion), let
 * an integer, a string length or an index from the wire reach past the block or the table, or put
 * a sensitive field where an intermediary may index it.
 *
 * The encoder sends every field as a literal without indexing (never indexed for secrets), its
 * name by static index where one exists, without Huffman: it has no dynamic table to keep in step
 * with A's decoder, A's SETTINGS_HEADER_TABLE_SIZE does not matter, and a request's few hundred
 * bytes of headers are not worth the CPU that compressing them would take on every request.
 */

/** A header block A sent that cannot be decoded (a connection error, COMPRESSION_ERROR, in HTTP/2). */
export class HpackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HpackError";
  }
}

/** A decoded block whose fields exceed the caller's limit (RFC 7541 §4.1 sizes: name + value + 32 each). */
export class HeaderListTooLarge extends HpackError {
  constructor(message: string) {
    super(message);
    this.name = "HeaderListTooLarge";
  }
}

/** RFC 7541 Appendix A; entry 0 is a placeholder so that static index i is `STATIC_TABLE[i]`. */
export const STATIC_TABLE: ReadonlyArray<readonly [string, string]> = [
  ["", ""],
  [":authority", ""],
  [":method", "GET"],
  [":method", "POST"],
  [":path", "/"],
  [":path", "/index.html"],
  [":scheme", "http"],
  [":scheme", "https"],
  [":status", "200"],
  [":status", "204"],
  [":status", "206"],
  [":status", "304"],
  [":status", "400"],
  [":status", "404"],
  [":status", "500"],
  ["accept-charset", ""],
  ["accept-encoding", "gzip, deflate"],
  ["accept-language", ""],
  ["accept-ranges", ""],
  ["accept", ""],
  ["access-control-allow-origin", ""],
  ["age", ""],
  ["allow", ""],
  ["authorization", ""],
  ["cache-control", ""],
  ["content-disposition", ""],
  ["content-encoding", ""],
  ["content-language", ""],
  ["content-length", ""],
  ["content-location", ""],
  ["content-range", ""],
  ["content-type", ""],
  ["cookie", ""],
  ["date", ""],
  ["etag", ""],
  ["expect", ""],
  ["expires", ""],
  ["from", ""],
  ["host", ""],
  ["if-match", ""],
  ["if-modified-since", ""],
  ["if-none-match", ""],
  ["if-range", ""],
  ["if-unmodified-since", ""],
  ["last-modified", ""],
  ["link", ""],
  ["location", ""],
  ["max-forwards", ""],
  ["proxy-authenticate", ""],
  ["proxy-authorization", ""],
  ["range", ""],
  ["referer", ""],
  ["refresh", ""],
  ["retry-after", ""],
  ["server", ""],
  ["set-cookie", ""],
  ["strict-transport-security", ""],
  ["transfer-encoding", ""],
  ["user-agent", ""],
  ["vary", ""],
  ["via", ""],
  ["www-authenticate", ""],
];
const STATIC_COUNT = 61;

/** The first static index of each name: what the encoder refers to. */
const STATIC_NAME_INDEX = new Map<string, number>();
for (let i = STATIC_COUNT; i >= 1; i--) STATIC_NAME_INDEX.set(STATIC_TABLE[i]![0], i);

/**
 * Largest integer taken from the wire. Every real use is far smaller (a block's length, a table
 * index, a table size); the bound keeps sums exact and stops a run of continuation bytes.
 */
const MAX_INT = 2 ** 31;
/** Continuation bytes enough for {@link MAX_INT} after any prefix; a longer encoding is an error. */
const MAX_INT_BYTES = 5;

// ---------------------------------------------------------------------------------------------
// Huffman code (Appendix B). The code is canonical: codes of one length are consecutive in symbol
// order, and the first code of each length follows the last of the one before. So the 257 code
// lengths are all the table there is; the codes are derived from them at load.

/** Code length in bits of symbols 0..256 (256 is EOS), RFC 7541 Appendix B. */
// deno-fmt-ignore
export const HUFFMAN_LENGTHS: readonly number[] = [
  // 0..31: control characters
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
  28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
  // 32..63: ' ' ! " # $ % & ' ( ) * + , - . / 0-9 : ; < = > ?
  6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
  5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
  // 64..95: @ A-Z [ \ ] ^ _
  13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
  7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
  // 96..127: ` a-z { | } ~ DEL
  15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
  6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
  // 128..255
  20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
  24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
  22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
  21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
  26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
  19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
  20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
  26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
  // 256: EOS
  30,
];

const EOS = 256;
/** MSB-first code of each symbol, {@link HUFFMAN_LENGTHS} bits long. */
const CODES = new Uint32Array(257);

/**
 * The decoder is a state machine over nibbles: a state is an inner node of the code tree, and
 * `STEP[state << 4 | nibble]` is the node reached after those 4 bits, plus the symbol completed on
 * the way (at most one: no code is shorter than 5 bits). Two table reads per input byte, no
 * per-bit loop, no search for long codes. -1 marks a nibble that completes EOS, which may never
 * appear in a string (§5.2).
 */
const STEP = new Int32Array(256 * 16);
/** `STEP` flag: bits 8..15 hold a completed symbol. */
const EMITS = 1 << 16;
/**
 * States a string may end in: the root, or a run of at most 7 one-bits from it (a prefix of EOS,
 * the only padding §5.2 allows). Anything else is padding too long or not all ones.
 */
const ACCEPTS = new Uint8Array(256);

function buildHuffman(): void {
  // Canonical codes: walk the symbols by (length, symbol).
  let code = 0;
  let prevLen = 0;
  const order = Array.from({ length: 257 }, (_, s) => s)
    .sort((a, b) => HUFFMAN_LENGTHS[a]! - HUFFMAN_LENGTHS[b]! || a - b);
  for (const s of order) {
    const len = HUFFMAN_LENGTHS[s]!;
    code = prevLen === 0 ? 0 : (code + 1) * 2 ** (len - prevLen);
    CODES[s] = code;
    prevLen = len;
  }
  // The tree: children of inner node n at 2n and 2n+1; a leaf is stored as -(symbol + 1).
  const child = new Int32Array(512);
  const depth = new Uint8Array(256);
  const allOnes = new Uint8Array(256).fill(1);
  let nodes = 1;
  for (let s = 0; s <= EOS; s++) {
    const len = HUFFMAN_LENGTHS[s]!;
    let n = 0;
    for (let i = len - 1; i >= 0; i--) {
      const bit = Math.floor(CODES[s]! / 2 ** i) & 1;
      const slot = 2 * n + bit;
      if (i === 0) {
        child[slot] = -(s + 1);
        break;
      }
      if (child[slot] === 0) {
        child[slot] = nodes;
        depth[nodes] = depth[n]! + 1;
        allOnes[nodes] = allOnes[n]! & bit;
        nodes++;
      }
      n = child[slot]!;
    }
  }
  // 257 leaves make 256 inner nodes: the lengths above are a complete prefix code.
  if (nodes !== 256) throw new Error(`HPACK Huffman tree has ${nodes} inner nodes`);
  for (let state = 0; state < 256; state++) {
    ACCEPTS[state] = allOnes[state]! && depth[state]! <= 7 ? 1 : 0;
    for (let nibble = 0; nibble < 16; nibble++) {
      let n = state;
      let step = 0;
      for (let i = 3; i >= 0; i--) {
        const c = child[2 * n + ((nibble >> i) & 1)]!;
        if (c >= 0) {
          n = c;
          continue;
        }
        const sym = -c - 1;
        if (sym === EOS) {
          step = -1;
          break;
        }
        step = EMITS | (sym << 8);
        n = 0;
      }
      STEP[(state << 4) | nibble] = step < 0 ? -1 : step | n;
    }
  }
}
buildHuffman();

/** The Huffman code of a symbol (0..256), its {@link HUFFMAN_LENGTHS} low bits, MSB first. */
export function huffmanCode(symbol: number): number {
  return CODES[symbol]!;
}

/** Output of Huffman decoding, reused: the string is made from it at once. */
let scratch = new Uint8Array(1024);

/** Decodes the Huffman-coded string in `src[start..end)` to a latin1 string. Throws HpackError. */
export function huffmanDecode(src: Uint8Array, start = 0, end: number = src.length): string {
  // A symbol takes at least 5 bits: at most 8/5 of a char per byte.
  const most = Math.ceil(((end - start) * 8) / 5);
  if (scratch.length < most) scratch = new Uint8Array(most * 2);
  const out = scratch;
  let o = 0;
  let state = 0;
  for (let i = start; i < end; i++) {
    const b = src[i]!;
    let t = STEP[(state << 4) | (b >> 4)]!;
    if (t < 0) throw new HpackError("Huffman string contains EOS");
    if (t & EMITS) out[o++] = (t >> 8) & 0xff;
    t = STEP[((t & 0xff) << 4) | (b & 0x0f)]!;
    if (t < 0) throw new HpackError("Huffman string contains EOS");
    if (t & EMITS) out[o++] = (t >> 8) & 0xff;
    state = t & 0xff;
  }
  if (ACCEPTS[state] === 0) {
    throw new HpackError("Huffman padding longer than 7 bits or not all ones");
  }
  return latin1(out, 0, o);
}

/**
 * Bytes as a latin1 string. Not TextDecoder("latin1"): that is windows-1252 (0x80 becomes the euro sign).
 * `fromCharCode.apply` on a view makes the string in one go; below 16 bytes its call costs more
 * than a short loop (measured with `deno bench`, Deno 2.9: 10 bytes 57 vs 82 ns, 30 bytes 249
 * vs 140 ns, 200 bytes 1.7 µs vs 657 ns). Chunks keep the arguments off the stack limit.
 */
function latin1(bytes: Uint8Array, start: number, end: number): string {
  if (end - start < 16) {
    let s = "";
    for (let i = start; i < end; i++) s += String.fromCharCode(bytes[i]!);
    return s;
  }
  if (end - start <= 8192) {
    return String.fromCharCode.apply(null, bytes.subarray(start, end) as unknown as number[]);
  }
  let s = "";
  for (let i = start; i < end; i += 8192) {
    s += String.fromCharCode.apply(
      null,
      bytes.subarray(i, Math.min(end, i + 8192)) as unknown as number[],
    );
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Decoder

/** The per-entry overhead of §4.1, counted in table sizes and header list sizes alike. */
const ENTRY_OVERHEAD = 32;

/**
 * Decodes the header blocks of one connection, in the order they arrive: the dynamic table lives
 * across blocks. The table is a ring of the latest entries, newest at the highest position, so an
 * insertion and an eviction are both O(1) and nothing is copied.
 */
export class HpackDecoder {
  /** The size we advertised: a table size update may not go above it (§6.3). */
  readonly #limit: number;
  /** The table's current maximum size, as A last set it. */
  #max: number;
  #size = 0;
  #names: string[] = new Array<string>(16).fill("");
  #values: string[] = new Array<string>(16).fill("");
  /** Ring position of the oldest entry, and the entry count. */
  #first = 0;
  #count = 0;
  #pos = 0;
  #end = 0;

  /** `maxTableSize`: the SETTINGS_HEADER_TABLE_SIZE we advertise (default 4096). */
  constructor(maxTableSize = 4096) {
    if (!Number.isInteger(maxTableSize) || maxTableSize < 0 || maxTableSize > MAX_INT) {
      throw new RangeError(`HPACK table size ${maxTableSize}`);
    }
    this.#limit = maxTableSize;
    this.#max = maxTableSize;
  }

  /** The dynamic table's size by §4.1 (diagnostics and tests). */
  get tableSize(): number {
    return this.#size;
  }

  /**
   * Decodes one complete header block (HEADERS + CONTINUATION fragments already joined). Names and
   * values are latin1 strings (one char per byte). Throws HpackError; throws HeaderListTooLarge
   * when the list's size passes `maxListSize` - but only AFTER decoding the whole block, so that the
   * dynamic table stays in step with the encoder (the session treats that as a stream error, not a
   * connection error). Fields are returned in order, pseudo-headers included as decoded.
   */
  decode(block: Uint8Array, maxListSize: number): Array<[string, string]> {
    const out: Array<[string, string]> = [];
    this.#pos = 0;
    this.#end = block.length;
    let listSize = 0;
    let updates = 0;
    let fields = false;
    while (this.#pos < this.#end) {
      const b = block[this.#pos]!;
      let name: string;
      let value: string;
      if (b >= 0x80) {
        // §6.1 indexed field.
        const index = this.#int(block, 0x7f);
        if (index === 0) throw new HpackError("indexed field with index 0");
        if (index <= STATIC_COUNT) {
          const entry = STATIC_TABLE[index]!;
          name = entry[0];
          value = entry[1];
        } else {
          const at = this.#slot(index);
          name = this.#names[at]!;
          value = this.#values[at]!;
        }
      } else if (b >= 0x40) {
        // §6.2.1 literal with incremental indexing.
        name = this.#literalName(block, 0x3f);
        value = this.#string(block);
        this.#insert(name, value);
      } else if (b >= 0x20) {
        // §6.3 dynamic table size update: only before the first field, and at most two (a
        // decrease and the new size, after two SETTINGS changes; §4.2).
        if (fields) throw new HpackError("table size update after a field");
        if (++updates > 2) throw new HpackError("more than two table size updates");
        const size = this.#int(block, 0x1f);
        if (size > this.#limit) {
          throw new HpackError(`table size update to ${size}, above ${this.#limit}`);
        }
        this.#max = size;
        this.#evictTo(size);
        continue;
      } else {
        // §6.2.2 without indexing (0000) and §6.2.3 never indexed (0001): alike to a decoder.
        name = this.#literalName(block, 0x0f);
        value = this.#string(block);
      }
      fields = true;
      // Past the limit the fields are no longer kept (their strings are shared with the table or
      // soon garbage), but decoding goes on for the table's sake.
      listSize += name.length + value.length + ENTRY_OVERHEAD;
      if (listSize <= maxListSize) out.push([name, value]);
    }
    if (listSize > maxListSize) {
      throw new HeaderListTooLarge(`header list of ${listSize} bytes, above ${maxListSize}`);
    }
    return out;
  }

  /** §5.1 integer with an N-bit prefix (`mask` = 2^N - 1) at the current position. */
  #int(block: Uint8Array, mask: number): number {
    let v = block[this.#pos++]! & mask;
    if (v < mask) return v;
    let scale = 1;
    for (let i = 0; i < MAX_INT_BYTES; i++) {
      if (this.#pos >= this.#end) throw new HpackError("integer past the end of the block");
      const b = block[this.#pos++]!;
      v += (b & 0x7f) * scale;
      if (b < 0x80) {
        if (v > MAX_INT) throw new HpackError(`integer ${v} too large`);
        return v;
      }
      scale *= 128;
    }
    throw new HpackError("integer encoding too long");
  }

  /** §5.2 string literal at the current position. */
  #string(block: Uint8Array): string {
    if (this.#pos >= this.#end) throw new HpackError("string past the end of the block");
    const huffman = block[this.#pos]! >= 0x80;
    const length = this.#int(block, 0x7f);
    const start = this.#pos;
    if (length > this.#end - start) throw new HpackError("string past the end of the block");
    this.#pos = start + length;
    return huffman ? huffmanDecode(block, start, this.#pos) : latin1(block, start, this.#pos);
  }

  /** The name of a literal field: an index (`mask` is its prefix), or a string when 0. */
  #literalName(block: Uint8Array, mask: number): string {
    const index = this.#int(block, mask);
    if (index === 0) return this.#string(block);
    return index <= STATIC_COUNT ? STATIC_TABLE[index]![0] : this.#names[this.#slot(index)]!;
  }

  /** The ring position of dynamic index `index` (62 is the newest entry, §2.3.3). */
  #slot(index: number): number {
    const back = index - STATIC_COUNT - 1;
    if (back >= this.#count) throw new HpackError(`index ${index} not in the table`);
    return (this.#first + this.#count - 1 - back) & (this.#names.length - 1);
  }

  #evictTo(size: number): void {
    const mask = this.#names.length - 1;
    while (this.#size > size) {
      const at = this.#first;
      this.#size -= this.#names[at]!.length + this.#values[at]!.length + ENTRY_OVERHEAD;
      this.#names[at] = "";
      this.#values[at] = "";
      this.#first = (at + 1) & mask;
      this.#count--;
    }
  }

  /** §4.4: evict until the entry fits; an entry larger than the table only empties it. */
  #insert(name: string, value: string): void {
    const size = name.length + value.length + ENTRY_OVERHEAD;
    if (size > this.#max) {
      this.#evictTo(0);
      return;
    }
    this.#evictTo(this.#max - size);
    if (this.#count === this.#names.length) this.#grow();
    const at = (this.#first + this.#count) & (this.#names.length - 1);
    this.#names[at] = name;
    this.#values[at] = value;
    this.#count++;
    this.#size += size;
  }

  /** Doubles the ring (its length stays a power of two), oldest entry first. */
  #grow(): void {
    const n = this.#names.length;
    const names = new Array<string>(n * 2).fill("");
    const values = new Array<string>(n * 2).fill("");
    for (let i = 0; i < this.#count; i++) {
      names[i] = this.#names[(this.#first + i) & (n - 1)]!;
      values[i] = this.#values[(this.#first + i) & (n - 1)]!;
    }
    this.#names = names;
    this.#values = values;
    this.#first = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Encoder

/** Bytes of a §5.1 integer with an N-bit prefix (`max` = 2^N - 1). */
function intLength(v: number, max: number): number {
  if (v < max) return 1;
  let n = 2;
  for (v -= max; v >= 128; v = Math.floor(v / 128)) n++;
  return n;
}

function putInt(dst: Uint8Array, pos: number, v: number, max: number, flags: number): number {
  if (v < max) {
    dst[pos] = flags | v;
    return pos + 1;
  }
  dst[pos++] = flags | max;
  for (v -= max; v >= 128; v = Math.floor(v / 128)) dst[pos++] = (v & 0x7f) | 0x80;
  dst[pos] = v;
  return pos + 1;
}

/** A raw (H = 0) §5.2 string literal. */
function putString(dst: Uint8Array, pos: number, s: string): number {
  pos = putInt(dst, pos, s.length, 0x7f, 0);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff) throw new HpackError(`header text has a char above 0xFF (${c})`);
    dst[pos++] = c;
  }
  return pos;
}

/**
 * The HPACK encoding of `fields` (pseudo-headers first, names lower-case; latin1 strings): every
 * field as a literal without indexing, the name by its static-table index where one exists, no
 * Huffman (so the encoder never touches its dynamic table, and A's SETTINGS_HEADER_TABLE_SIZE does
 * not matter). Fields whose `sensitive(name)` is true are encoded "never indexed" (RFC 7541 §6.2.3)
 * so no intermediary may index them (authorization, cookies, API keys). Throws HpackError for a char
 * above 0xFF.
 */
export function encodeHeaderBlock(
  fields: ReadonlyArray<readonly [string, string]>,
  sensitive?: (name: string) => boolean,
): Uint8Array {
  // Two passes over the fields, the first for the exact length: one allocation, no copies.
  let length = 0;
  for (let i = 0; i < fields.length; i++) {
    const [name, value] = fields[i]!;
    const index = STATIC_NAME_INDEX.get(name);
    length += index === undefined
      ? 1 + intLength(name.length, 0x7f) + name.length
      : intLength(index, 0x0f);
    length += intLength(value.length, 0x7f) + value.length;
  }
  const dst = new Uint8Array(length);
  let pos = 0;
  for (let i = 0; i < fields.length; i++) {
    const [name, value] = fields[i]!;
    // 0000 without indexing, 0001 never indexed; then a 4-bit name index, 0 for a literal name.
    const flags = sensitive !== undefined && sensitive(name) ? 0x10 : 0x00;
    const index = STATIC_NAME_INDEX.get(name);
    if (index === undefined) {
      dst[pos++] = flags;
      pos = putString(dst, pos, name);
    } else {
      pos = putInt(dst, pos, index, 0x0f, flags);
    }
    pos = putString(dst, pos, value);
  }
  return dst;
}
