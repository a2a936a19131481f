/**
 * lib/upstream/hpack.ts: the Huffman code's facts, RFC 7541 Appendix C, every decoding error, the
 * header list limit (thrown after the table took the whole block), the encoder's bytes, a
 * round-trip property, and two oracles: a node:http2 server (its HPACK encoder indexes and
 * Huffman-codes repeated response headers) whose raw header blocks, read over our own HTTP/2
 * frames, must decode to what it sent; and the same server echoing what its HPACK decoder made of
 * blocks from `encodeHeaderBlock`.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import http2 from "node:http2";
import {
  encodeHeaderBlock,
  HeaderListTooLarge,
  HpackDecoder,
  HpackError,
  HUFFMAN_LENGTHS,
  huffmanCode,
  huffmanDecode,
  STATIC_TABLE,
} from "../lib/upstream/hpack.ts";
import { type TestCert, withCert } from "./tls_fixture.ts";

type Fields = Array<[string, string]>;

const NO_LIMIT = Number.MAX_SAFE_INTEGER;

function hex(s: string): Uint8Array {
  const t = s.replace(/\s+/g, "");
  const out = new Uint8Array(t.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(t.slice(i * 2, i * 2 + 2), 16);
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A §5.1 integer, written independently of the module (for blocks the encoder never makes). */
function int(v: number, prefixBits: number, flags: number): number[] {
  const max = 2 ** prefixBits - 1;
  if (v < max) return [flags | v];
  const out = [flags | max];
  for (v -= max; v >= 128; v = Math.floor(v / 128)) out.push((v % 128) | 0x80);
  out.push(v);
  return out;
}

/** A Huffman encoder built from the module's code table (the decoder is checked against it). */
function huffmanEncode(s: string): Uint8Array {
  let bits = "";
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    bits += huffmanCode(c).toString(2).padStart(HUFFMAN_LENGTHS[c]!, "0");
  }
  bits += "1".repeat((8 - (bits.length % 8)) % 8);
  return Uint8Array.from(bits.match(/.{8}/g) ?? [], (b) => parseInt(b, 2));
}

/** The dynamic table, newest first, read through indexed fields (which never change it). */
function table(d: HpackDecoder): Fields {
  const out: Fields = [];
  for (let i = 62;; i++) {
    try {
      out.push(...d.decode(Uint8Array.from(int(i, 7, 0x80)), NO_LIMIT));
    } catch (err) {
      assert.ok(err instanceof HpackError);
      return out;
    }
  }
}

/** Checks the table's entries and that its reported size is theirs by §4.1. */
function assertTable(d: HpackDecoder, entries: Fields, size: number): void {
  assert.deepEqual(table(d), entries);
  assert.equal(d.tableSize, size);
  assert.equal(entries.reduce((n, [k, v]) => n + k.length + v.length + 32, 0), size);
}

/** Bytes as chars 0..255 (not TextDecoder("latin1"), which is windows-1252). */
const latin1 = (bytes: Uint8Array) => Array.from(bytes, (b) => String.fromCharCode(b)).join("");

const latin1All = Array.from({ length: 256 }, (_, i) => String.fromCharCode(i)).join("");

// ---------------------------------------------------------------------------------------------
// Huffman

Deno.test("Huffman code: complete prefix code with Appendix B's codes", () => {
  assert.equal(HUFFMAN_LENGTHS.length, 257);
  assert.equal(HUFFMAN_LENGTHS.reduce((sum, len) => sum + 2 ** -len, 0), 1);
  const bits = (sym: number) => huffmanCode(sym).toString(2).padStart(HUFFMAN_LENGTHS[sym]!, "0");
  assert.equal(bits(0x30), "00000"); // '0'
  assert.equal(bits(0x61), "00011"); // 'a'
  assert.equal(bits(0x20), "010100"); // ' '
  assert.equal(bits(256), "1".repeat(30)); // EOS
  assert.equal(huffmanCode(0), 0x1ff8);
  assert.equal(huffmanCode(10), 0x3ffffffc);
  assert.equal(huffmanCode(0x7e), 0x1ffd); // '~'
  assert.equal(huffmanCode(128), 0xfffe6);
  assert.equal(huffmanCode(255), 0x3ffffee);
  // No code is a prefix of another.
  const all = Array.from({ length: 257 }, (_, s) => bits(s)).sort();
  for (let i = 1; i < all.length; i++) assert.ok(!all[i]!.startsWith(all[i - 1]!), all[i]);
  // Every byte, in both orders, decodes back.
  const text = latin1All + [...latin1All].reverse().join("");
  assert.equal(huffmanDecode(huffmanEncode(text)), text);
  assert.equal(huffmanDecode(new Uint8Array(0)), "");
  // C.4.1's "www.example.com", in the middle of a larger array.
  const block = hex("00 f1e3 c2e5 f23a 6ba0 ab90 f4ff 00");
  assert.equal(huffmanDecode(block, 1, block.length - 1), "www.example.com");
});

Deno.test("Huffman errors: EOS in a string, padding longer than 7 bits or not all ones", () => {
  const huffmanError = (bytes: string) =>
    assert.throws(() => huffmanDecode(hex(bytes)), HpackError, bytes);
  huffmanError("ffffffff"); // EOS (30 ones) and 2 bits of padding
  huffmanError("1fffffff ff"); // 'a', then EOS
  huffmanError("1fff"); // 'a' (00011) and 11 bits of padding
  huffmanError("ff"); // 8 bits of padding alone
  huffmanError("18"); // 'a' and 000 as padding
  huffmanError("1e"); // 'a' and 110
  huffmanError("fe"); // a 7-bit padding with a zero in it
  assert.equal(huffmanDecode(hex("1f")), "a"); // 'a' and 111
  assert.equal(huffmanDecode(hex("ff07")), "?a"); // '?' (10 bits), 'a', 1 bit of padding
  assert.equal(huffmanDecode(hex("fe3f")), "!"); // '!' (10 bits) and 6 bits of padding
  assert.equal(huffmanDecode(hex("07")), "0"); // 5 bits and 3 ones
  // A Huffman literal with EOS inside a block is a block error.
  assert.throws(() => new HpackDecoder().decode(hex("00 81 1f 84 ffffffff"), NO_LIMIT), HpackError);
});

// ---------------------------------------------------------------------------------------------
// RFC 7541 Appendix C

Deno.test("RFC 7541 C.1: integers, read as table size updates against the limit", () => {
  // C.1.1: 10 in a 5-bit prefix; C.1.2: 1337 in a 5-bit prefix (a 3-byte encoding).
  for (const [bytes, value] of [["2a", 10], ["3f9a0a", 1337]] as const) {
    new HpackDecoder(value).decode(hex(bytes), NO_LIMIT);
    assert.throws(() => new HpackDecoder(value - 1).decode(hex(bytes), NO_LIMIT), HpackError);
  }
  // The largest integer taken, 2^31, in the longest encoding taken (5 continuation bytes).
  const top = Uint8Array.from(int(2 ** 31, 5, 0x20));
  assert.equal(top.length, 6);
  new HpackDecoder(2 ** 31).decode(top, NO_LIMIT);
});

Deno.test("RFC 7541 C.2: one field of each representation", () => {
  // C.2.1 literal with indexing, new name.
  let d = new HpackDecoder();
  const c21 = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
  assert.deepEqual(d.decode(c21, NO_LIMIT), [["custom-key", "custom-header"]]);
  assertTable(d, [["custom-key", "custom-header"]], 55);
  // C.2.2 literal without indexing, indexed name.
  d = new HpackDecoder();
  assert.deepEqual(d.decode(hex("040c 2f73 616d 706c 652f 7061 7468"), NO_LIMIT), [
    [":path", "/sample/path"],
  ]);
  assertTable(d, [], 0);
  // C.2.3 never indexed, new name.
  d = new HpackDecoder();
  assert.deepEqual(d.decode(hex("1008 7061 7373 776f 7264 0673 6563 7265 74"), NO_LIMIT), [
    ["password", "secret"],
  ]);
  assertTable(d, [], 0);
  // C.2.4 indexed field.
  d = new HpackDecoder();
  assert.deepEqual(d.decode(hex("82"), NO_LIMIT), [[":method", "GET"]]);
  assertTable(d, [], 0);
});

const C3_C4: Array<
  { plain: string; huffman: string; fields: Fields; table: Fields; size: number }
> = [
  {
    plain: "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    huffman: "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    fields: [[":method", "GET"], [":scheme", "http"], [":path", "/"], [
      ":authority",
      "www.example.com",
    ]],
    table: [[":authority", "www.example.com"]],
    size: 57,
  },
  {
    plain: "8286 84be 5808 6e6f 2d63 6163 6865",
    huffman: "8286 84be 5886 a8eb 1064 9cbf",
    fields: [
      [":method", "GET"],
      [":scheme", "http"],
      [":path", "/"],
      [":authority", "www.example.com"],
      ["cache-control", "no-cache"],
    ],
    table: [["cache-control", "no-cache"], [":authority", "www.example.com"]],
    size: 110,
  },
  {
    plain: "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    huffman: "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    fields: [
      [":method", "GET"],
      [":scheme", "https"],
      [":path", "/index.html"],
      [":authority", "www.example.com"],
      ["custom-key", "custom-value"],
    ],
    table: [
      ["custom-key", "custom-value"],
      ["cache-control", "no-cache"],
      [":authority", "www.example.com"],
    ],
    size: 164,
  },
];

Deno.test("RFC 7541 C.3 and C.4: requests, raw and Huffman-coded, on one connection", () => {
  for (const coding of ["plain", "huffman"] as const) {
    const d = new HpackDecoder();
    for (const step of C3_C4) {
      assert.deepEqual(d.decode(hex(step[coding]), NO_LIMIT), step.fields, coding);
      assertTable(d, step.table, step.size);
    }
  }
});

const DATE1 = "Mon, 21 Oct 2013 20:13:21 GMT";
const DATE2 = "Mon, 21 Oct 2013 20:13:22 GMT";
const LOC = "https://www.example.com";
const COOKIE = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
const C5_C6: Array<
  { plain: string; huffman: string; fields: Fields; table: Fields; size: number }
> = [
  {
    plain: "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230" +
      "3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65" +
      "7861 6d70 6c65 2e63 6f6d",
    huffman: "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0" +
      "82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
    fields: [[":status", "302"], ["cache-control", "private"], ["date", DATE1], [
      "location",
      LOC,
    ]],
    table: [["location", LOC], ["date", DATE1], ["cache-control", "private"], [
      ":status",
      "302",
    ]],
    size: 222,
  },
  {
    plain: "4803 3330 37c1 c0bf",
    huffman: "4883 640e ffc1 c0bf",
    fields: [[":status", "307"], ["cache-control", "private"], ["date", DATE1], [
      "location",
      LOC,
    ]],
    table: [[":status", "307"], ["location", LOC], ["date", DATE1], [
      "cache-control",
      "private",
    ]],
    size: 222,
  },
  {
    plain: "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220" +
      "474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157" +
      "454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076" +
      "6572 7369 6f6e 3d31",
    huffman: "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b" +
      "d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27" +
      "0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    fields: [
      [":status", "200"],
      ["cache-control", "private"],
      ["date", DATE2],
      ["location", LOC],
      ["content-encoding", "gzip"],
      ["set-cookie", COOKIE],
    ],
    table: [["set-cookie", COOKIE], ["content-encoding", "gzip"], ["date", DATE2]],
    size: 215,
  },
];

Deno.test("RFC 7541 C.5 and C.6: responses with eviction (table of 256), raw and Huffman", () => {
  for (const coding of ["plain", "huffman"] as const) {
    const d = new HpackDecoder(256);
    for (const step of C5_C6) {
      assert.deepEqual(d.decode(hex(step[coding]), NO_LIMIT), step.fields, coding);
      assertTable(d, step.table, step.size);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Decoding errors and the dynamic table

/** C.2.1's block: `custom-key: custom-header` with incremental indexing (55 bytes). */
const CUSTOM = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");

Deno.test("decoder errors: integers, strings, indexes", () => {
  const bad = (block: Uint8Array | string, what: string, d = new HpackDecoder()) =>
    assert.throws(
      () => d.decode(typeof block === "string" ? hex(block) : block, NO_LIMIT),
      (err: unknown) => err instanceof HpackError && !(err instanceof HeaderListTooLarge),
      what,
    );
  bad("80", "indexed field with index 0");
  bad("be", "index 62 with an empty table");
  bad("ff 80 80 80 80 80 00", "index with 6 continuation bytes (longer than any value taken)");
  bad("3f e1 ff ff ff 0f", "integer above 2^31");
  bad(Uint8Array.from(int(2 ** 31 + 1, 5, 0x20)), "integer 2^31 + 1");
  bad("0f", "integer cut at the end of the block");
  bad("0f 80", "integer cut after a continuation byte");
  bad("04", "literal without its value");
  bad("04 05 6162", "string longer than the rest of the block");
  bad("04 7f ff ff ff ff 07", "string length far beyond the block");
  bad("00 03 6162", "literal name cut short");
  bad("4f 30 01 61", "literal name by dynamic index 63 with an empty table");
  bad("1f 2f 00", "never-indexed literal name by index 62 with an empty table");
  const one = new HpackDecoder();
  one.decode(CUSTOM, NO_LIMIT);
  assert.deepEqual(one.decode(hex("be"), NO_LIMIT), [["custom-key", "custom-header"]]);
  bad("bf", "index 63 with one entry", one);
  bad("ff 80 80 80 80 08", "index 2^31 + 127 with one entry", one);
  // The decoder is still usable after errors (the session closes the connection anyway).
  assert.deepEqual(one.decode(hex("be 82"), NO_LIMIT), [
    ["custom-key", "custom-header"],
    [":method", "GET"],
  ]);
});

Deno.test("table size updates: first in the block, at most two, within the advertised size", () => {
  const bad = (block: string, what: string, d = new HpackDecoder()) =>
    assert.throws(() => d.decode(hex(block), NO_LIMIT), HpackError, what);
  bad("82 20", "update after a field");
  bad("20 3f e1 1f 20", "three updates");
  bad("3f e2 1f", "update to 4097 above the advertised 4096");
  bad("21", "update to 1 when 0 was advertised", new HpackDecoder(0));

  const d = new HpackDecoder();
  d.decode(CUSTOM, NO_LIMIT);
  d.decode(hex("40 03 782d61 01 31"), NO_LIMIT); // x-a: 1 (36 bytes)
  assertTable(d, [["x-a", "1"], ["custom-key", "custom-header"]], 91);
  // Down to 40 evicts the older entry; back up to 4096 in the same block (two updates).
  assert.deepEqual(d.decode(hex("3f 09 3f e1 1f be"), NO_LIMIT), [["x-a", "1"]]);
  assertTable(d, [["x-a", "1"]], 36);
  // An update to 0 empties the table; the size stays 0 until raised again.
  assert.deepEqual(d.decode(hex("20 82"), NO_LIMIT), [[":method", "GET"]]);
  assertTable(d, [], 0);
  d.decode(CUSTOM, NO_LIMIT);
  assertTable(d, [], 0);
  // Raised again: entries are indexed again.
  d.decode(concat(hex("3f e1 1f"), CUSTOM), NO_LIMIT);
  assertTable(d, [["custom-key", "custom-header"]], 55);
  // An update alone is a valid block.
  assert.deepEqual(d.decode(hex("3f e1 1f"), NO_LIMIT), []);
  assert.deepEqual(d.decode(new Uint8Array(0), NO_LIMIT), []);
});

Deno.test("dynamic table: eviction, an entry larger than the table, a ring that wraps and grows", () => {
  const d = new HpackDecoder(100);
  d.decode(CUSTOM, NO_LIMIT); // 55
  d.decode(hex("40 03 782d61 01 31"), NO_LIMIT); // x-a: 1 (36): 91
  d.decode(hex("40 03 782d62 01 32"), NO_LIMIT); // x-b: 2 evicts custom-key: 72
  assertTable(d, [["x-b", "2"], ["x-a", "1"]], 72);
  // An entry of 101 bytes (name 3 + value 66 + 32) empties the table and is not added.
  const big = concat(hex("40 03 782d63 42"), new Uint8Array(66).fill(0x7a));
  assert.deepEqual(d.decode(big, NO_LIMIT), [["x-c", "z".repeat(66)]]);
  assertTable(d, [], 0);
  // Exactly the table's size fits.
  const fits = concat(hex("40 03 782d63 41"), new Uint8Array(65).fill(0x7a));
  d.decode(fits, NO_LIMIT);
  assertTable(d, [["x-c", "z".repeat(65)]], 100);

  // Many small entries through a large table: the ring wraps and grows, indexes stay right.
  const many = new HpackDecoder(65536);
  const want: Fields = [];
  for (let i = 0; i < 3000; i++) {
    const name = `n${i % 7}`;
    const value = String(i).padStart(6, "0");
    many.decode(
      concat(
        Uint8Array.from([0x40, name.length]),
        new TextEncoder().encode(name),
        hex("06"),
        new TextEncoder().encode(value),
      ),
      NO_LIMIT,
    );
    want.unshift([name, value]);
  }
  const kept = want.slice(0, Math.floor(65536 / 40));
  assertTable(many, kept, kept.length * 40);
});

Deno.test("HeaderListTooLarge comes after the whole block: the table stays in step", () => {
  const d = new HpackDecoder();
  // custom-key: custom-header (55), then x-a: 1 (36), both indexed: the list is 91 bytes.
  const block = concat(CUSTOM, hex("40 03 782d61 01 31"));
  assert.throws(() => d.decode(block, 90), (err: unknown) => {
    assert.ok(err instanceof HeaderListTooLarge);
    assert.ok(err instanceof HpackError);
    return true;
  });
  // Both entries went in, in order: the next block refers to them.
  assertTable(d, [["x-a", "1"], ["custom-key", "custom-header"]], 91);
  assert.deepEqual(d.decode(hex("bf be"), 91), [["custom-key", "custom-header"], ["x-a", "1"]]);
  // A list of exactly the limit passes; an indexed field past the limit also counts.
  assert.throws(() => d.decode(hex("bf be 82"), 91), HeaderListTooLarge);
  assert.throws(() => d.decode(hex("bf be"), 0), HeaderListTooLarge);
  assert.deepEqual(d.decode(new Uint8Array(0), 0), []);
  // A block error still wins: it is a connection error, the limit only a stream error.
  assert.throws(
    () => d.decode(hex("bf be c0"), 10),
    (err: unknown) => err instanceof HpackError && !(err instanceof HeaderListTooLarge),
  );
});

// ---------------------------------------------------------------------------------------------
// Encoder

Deno.test("encodeHeaderBlock: literals without indexing, static name indexes, never indexed", () => {
  assert.deepEqual(encodeHeaderBlock([]), new Uint8Array(0));
  // :method by static index 2, raw "POST".
  assert.deepEqual(encodeHeaderBlock([[":method", "POST"]]), hex("02 04 504f5354"));
  // A new name: 0x00, the raw name, the raw value.
  assert.deepEqual(encodeHeaderBlock([["x-a", "b"]]), hex("00 03 782d61 01 62"));
  // Index 15 and above in the 4-bit prefix: accept-charset (15), authorization (23).
  assert.deepEqual(encodeHeaderBlock([["accept-charset", ""]]), hex("0f00 00"));
  assert.deepEqual(encodeHeaderBlock([["authorization", "k"]]), hex("0f08 01 6b"));
  // Never indexed: 0001 instead of 0000, the same for a new name.
  const secret = (name: string) => name === "authorization" || name === "x-api-key";
  assert.deepEqual(
    encodeHeaderBlock([["authorization", "k"], ["x-api-key", "s"], ["x-a", "b"]], secret),
    hex("1f08 01 6b  10 09 782d6170692d6b6579 01 73  00 03 782d61 01 62"),
  );
  // The first static index of a name is used (:path is 4 and 5, :status 8 to 14).
  assert.deepEqual(
    encodeHeaderBlock([[":path", "/"], [":status", "200"]]),
    hex("04 01 2f 08 03 323030"),
  );
  // Lengths of 127 and more take continuation bytes; the block is sized exactly.
  const long = "v".repeat(127 + 300);
  const block = encodeHeaderBlock([["x-long", long], ["n".repeat(200), ""]]);
  assert.deepEqual(block.subarray(0, 11), hex("00 06 782d6c6f6e67 7f ac02"));
  assert.equal(block.length, 1 + 1 + 6 + 3 + 427 + 1 + 2 + 200 + 1);
  assert.deepEqual(new HpackDecoder().decode(block, NO_LIMIT), [["x-long", long], [
    "n".repeat(200),
    "",
  ]]);
  // Every latin1 char passes; anything above 0xFF is an error.
  assert.deepEqual(
    new HpackDecoder().decode(encodeHeaderBlock([["x-all", latin1All]]), NO_LIMIT),
    [["x-all", latin1All]],
  );
  assert.throws(() => encodeHeaderBlock([["x-a", "caf\u0100"]]), HpackError);
  assert.throws(() => encodeHeaderBlock([["x-\u{1f600}", "v"]]), HpackError);
});

Deno.test("property: encodeHeaderBlock then decode round-trips latin1 fields, table untouched", () => {
  const text = (max: number) =>
    fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: max })
      .map((codes) => String.fromCharCode(...codes));
  const name = fc.oneof(
    fc.constantFrom(...STATIC_TABLE.slice(1).map(([n]) => n)),
    text(40),
  );
  const field = fc.tuple(name, fc.oneof(text(300), fc.constant("")));
  const d = new HpackDecoder();
  fc.assert(
    fc.property(fc.array(field, { maxLength: 30 }), fc.boolean(), (fields, secret) => {
      const block = encodeHeaderBlock(fields, secret ? (n) => n.length % 2 === 0 : undefined);
      assert.deepEqual(d.decode(block, NO_LIMIT), fields);
      assert.equal(d.tableSize, 0);
    }),
    { numRuns: 300 },
  );
  fc.assert(
    fc.property(text(400), (s) => assert.equal(huffmanDecode(huffmanEncode(s)), s)),
    { numRuns: 300 },
  );
});

// ---------------------------------------------------------------------------------------------
// Oracles: node:http2 (nghttp2's HPACK) over TLS on 127.0.0.1, spoken to in raw HTTP/2 frames.

const FRAME_DATA = 0x0;
const FRAME_HEADERS = 0x1;
const FRAME_RST_STREAM = 0x3;
const FRAME_SETTINGS = 0x4;
const FRAME_PING = 0x6;
const FRAME_GOAWAY = 0x7;
const FRAME_CONTINUATION = 0x9;
const END_STREAM = 0x1;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY = 0x20;

/** A minimal HTTP/2 client: requests in order, one at a time, raw header blocks kept. */
class RawH2 {
  #conn: Deno.TlsConn;
  #buf: Uint8Array = new Uint8Array(0);
  #nextStream = 1;

  private constructor(conn: Deno.TlsConn) {
    this.#conn = conn;
  }

  /** Connects, sends the preface and our SETTINGS (id, value pairs). */
  static async open(
    port: number,
    tls: TestCert,
    settings: Array<[number, number]>,
  ): Promise<RawH2> {
    const conn = await Deno.connectTls({
      hostname: "127.0.0.1",
      port,
      caCerts: [tls.cert],
      alpnProtocols: ["h2"],
    });
    const hs = await conn.handshake();
    assert.equal(hs.alpnProtocol, "h2");
    const c = new RawH2(conn);
    const payload = new Uint8Array(settings.length * 6);
    const view = new DataView(payload.buffer);
    settings.forEach(([id, value], i) => {
      view.setUint16(i * 6, id);
      view.setUint32(i * 6 + 2, value);
    });
    await c.#write(concat(new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")));
    await c.#send(FRAME_SETTINGS, 0, 0, payload);
    return c;
  }

  close(): void {
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }

  async #write(bytes: Uint8Array): Promise<void> {
    for (let o = 0; o < bytes.length;) o += await this.#conn.write(bytes.subarray(o));
  }

  #send(type: number, flags: number, stream: number, payload: Uint8Array): Promise<void> {
    const head = new Uint8Array(9);
    const view = new DataView(head.buffer);
    view.setUint32(0, payload.length << 8);
    head[3] = type;
    head[4] = flags;
    view.setUint32(5, stream);
    return this.#write(concat(head, payload));
  }

  async #frame(): Promise<{ type: number; flags: number; stream: number; payload: Uint8Array }> {
    const chunk = new Uint8Array(65536);
    for (;;) {
      if (this.#buf.length >= 9) {
        const length = (this.#buf[0]! << 16) | (this.#buf[1]! << 8) | this.#buf[2]!;
        if (this.#buf.length >= 9 + length) {
          const view = new DataView(this.#buf.buffer, this.#buf.byteOffset);
          const frame = {
            type: this.#buf[3]!,
            flags: this.#buf[4]!,
            stream: view.getUint32(5) & 0x7fffffff,
            payload: this.#buf.slice(9, 9 + length),
          };
          this.#buf = this.#buf.slice(9 + length);
          return frame;
        }
      }
      const n = await this.#conn.read(chunk);
      if (n === null) throw new Error("connection closed by the server");
      this.#buf = concat(this.#buf, chunk.subarray(0, n));
    }
  }

  /**
   * Sends `block` as a request's HEADERS (CONTINUATION after 16384 bytes, END_STREAM set); returns
   * the response's header blocks (head, and trailers if any) and its body.
   */
  async request(block: Uint8Array): Promise<{ blocks: Uint8Array[]; body: Uint8Array }> {
    const stream = this.#nextStream;
    this.#nextStream += 2;
    const first = block.subarray(0, 16384);
    await this.#send(
      FRAME_HEADERS,
      END_STREAM | (first.length === block.length ? END_HEADERS : 0),
      stream,
      first,
    );
    for (let o = 16384; o < block.length; o += 16384) {
      const part = block.subarray(o, o + 16384);
      const last = o + 16384 >= block.length;
      await this.#send(FRAME_CONTINUATION, last ? END_HEADERS : 0, stream, part);
    }
    const blocks: Uint8Array[] = [];
    let body: Uint8Array = new Uint8Array(0);
    let pending: Uint8Array[] | null = null;
    for (;;) {
      const f = await this.#frame();
      if (f.type === FRAME_SETTINGS && (f.flags & 1) === 0) {
        await this.#send(FRAME_SETTINGS, 1, 0, new Uint8Array(0));
      } else if (f.type === FRAME_PING && (f.flags & 1) === 0) {
        await this.#send(FRAME_PING, 1, 0, f.payload);
      } else if (f.type === FRAME_GOAWAY || (f.type === FRAME_RST_STREAM && f.stream === stream)) {
        throw new Error(`server sent frame type ${f.type}: ${[...f.payload]}`);
      } else if (f.stream !== stream) {
        continue;
      }
      let ends = false;
      if (f.type === FRAME_HEADERS) {
        let p = f.payload;
        const pad = f.flags & PADDED ? p[0]! : 0;
        if (f.flags & PADDED) p = p.subarray(1);
        if (f.flags & PRIORITY) p = p.subarray(5);
        pending = [p.subarray(0, p.length - pad)];
        ends = (f.flags & END_STREAM) !== 0;
        if (f.flags & END_HEADERS) {
          blocks.push(concat(...pending));
          pending = null;
        }
      } else if (f.type === FRAME_CONTINUATION) {
        assert.ok(pending !== null, "CONTINUATION without HEADERS");
        pending.push(f.payload);
        if (f.flags & END_HEADERS) {
          blocks.push(concat(...pending));
          pending = null;
        }
      } else if (f.type === FRAME_DATA) {
        let p = f.payload;
        const pad = f.flags & PADDED ? p[0]! : 0;
        if (f.flags & PADDED) p = p.subarray(1);
        body = concat(body, p.subarray(0, p.length - pad));
        ends = (f.flags & END_STREAM) !== 0;
      }
      if (ends && pending === null) return { blocks, body };
    }
  }
}

/** A node:http2 TLS server on 127.0.0.1 with `onStream`; closed (sessions and all) by close(). */
async function nodeServer(
  tls: TestCert,
  onStream: (
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    rawHeaders: string[],
  ) => void,
) {
  const server = http2.createSecureServer({ key: tls.key, cert: tls.cert });
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  server.on("stream", (
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    _flags: number,
    rawHeaders: string[],
  ) => {
    stream.on("error", () => {});
    onStream(stream, headers, rawHeaders);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  return {
    port: (server.address() as { port: number }).port,
    close: async () => {
      for (const s of sessions) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function request(path: string, extra: Fields = []): Fields {
  return [[":method", "GET"], [":scheme", "https"], [":path", path], [
    ":authority",
    "127.0.0.1",
  ], ...extra];
}

/** Response headers the oracle server sends on every response: nghttp2 indexes these. */
const REPEATED: Fields = [
  ["content-type", "application/json"],
  ["x-request-id", "req_0123456789abcdefABCDEF"],
  ["x-ratelimit-remaining-requests", "9999"],
  ["openai-processing-ms", "123"],
  // Chars of many Huffman code lengths, control and latin1 bytes among them.
  ["x-odd", "a~b|c{d}e^f`g\\h<i>j[k]l@m$n#o\x7f\u0080\u00a0\u00e9\u00ff\t!"],
  ["cache-control", "no-cache, must-revalidate"],
  // Every byte node lets into a value (HTAB, 0x20-0x7E, 0x80-0xFF), each among enough 'e's (5
  // bits) that Huffman is the shorter coding and nghttp2 uses it: each code is checked against it.
  ...Array.from({ length: 14 }, (_, i): [string, string] => {
    const chars = [];
    for (let c = 0x20 + i * 16; c < 0x30 + i * 16; c++) {
      if (c !== 0x7f) chars.push("eeeeeeeeee" + String.fromCharCode(c));
    }
    return [`x-chars-${i}`, (i === 0 ? "e\t" : "") + chars.join("")];
  }),
];

/** What the oracle sends for request `n`, in order (node puts `:status` first). */
function responseFields(n: number): Fields {
  const fields: Fields = [[":status", n % 7 === 3 ? "201" : "200"], ...REPEATED];
  fields.push(["x-per-response", `value-${n}-${"v".repeat(n * 13)}`]);
  fields.push(["set-cookie", `a=${n}`], ["set-cookie", "b=2"]);
  fields.push(["date", "Tue, 03 Jun 2025 10:00:00 GMT"]);
  if (n === 5) fields.push(["x-big", "Z".repeat(20000)]); // past 16 KB: HEADERS + CONTINUATION
  return fields;
}

withCert.test("oracle: nghttp2's Huffman-coded, indexed response headers decode as sent", async ({ tls }) => {
  const server = await nodeServer(tls, (stream, headers) => {
    const n = Number(String(headers[":path"]).slice(1));
    const fields = responseFields(n);
    const out: Record<string, string | string[]> = {};
    for (const [k, v] of fields) {
      const had = out[k];
      out[k] = had === undefined ? v : [...(Array.isArray(had) ? had : [had]), v];
    }
    stream.respond(out);
    stream.end(`body ${n}`);
  });
  // Our decoder's table size is advertised (1 = SETTINGS_HEADER_TABLE_SIZE): 4096 is the
  // default; 256 makes nghttp2 send a size update and evict on nearly every response; 0 leaves
  // it no table at all.
  const tableSizes = [4096, 256, 0];
  const conns: RawH2[] = [];
  try {
    for (const size of tableSizes) {
      const c = await RawH2.open(server.port, tls, size === 4096 ? [] : [[1, size]]);
      conns.push(c);
      const d = new HpackDecoder(size);
      const lengths: number[] = [];
      let huffman = 0;
      for (let n = 0; n < 12; n++) {
        const res = await c.request(encodeHeaderBlock(request(`/${n}`)));
        assert.equal(res.blocks.length, 1);
        const block = res.blocks[0]!;
        lengths.push(block.length);
        if (n === 0) {
          for (const [name, value] of REPEATED) {
            if (name.startsWith("x-chars-")) {
              assert.ok(!latin1(block).includes(value), `${name} was sent Huffman-coded`);
            }
          }
        }
        // Our SETTINGS changed the size: the first block must start with a size update (§4.2).
        if (n === 0 && size !== 4096) assert.equal(block[0]! & 0xe0, 0x20);
        const want = responseFields(n);
        assert.deepEqual(d.decode(block, NO_LIMIT), want, `table ${size}, response ${n}`);
        assert.equal(new TextDecoder().decode(res.body), `body ${n}`);
        assert.ok(d.tableSize <= size);
        // Raw string literals show their bytes; Huffman-coded ones do not.
        if (!latin1(block).includes("req_0123456789abcdefABCDEF")) {
          huffman++;
        }
      }
      assert.ok(huffman > 0, "nghttp2 Huffman-coded the repeated values");
      if (size === 4096) {
        // Later responses refer to the table: far shorter than the first.
        assert.ok(d.tableSize > 0);
        assert.ok(lengths[1]! * 3 < lengths[0]!, `block lengths ${lengths}`);
      } else if (size === 0) {
        assert.equal(d.tableSize, 0);
      }
    }
    // A limit below the first response: HeaderListTooLarge, yet the next responses, which refer
    // to the entries that one added, decode.
    const c = await RawH2.open(server.port, tls, []);
    conns.push(c);
    const d = new HpackDecoder();
    const first = await c.request(encodeHeaderBlock(request("/1")));
    assert.throws(() => d.decode(first.blocks[0]!, 200), HeaderListTooLarge);
    for (let n = 2; n < 5; n++) {
      const res = await c.request(encodeHeaderBlock(request(`/${n}`)));
      assert.deepEqual(d.decode(res.blocks[0]!, 4096), responseFields(n));
    }
  } finally {
    for (const c of conns) c.close();
    await server.close();
  }
});

withCert.test("oracle: nghttp2 decodes encodeHeaderBlock's blocks to what was sent", async ({ tls }) => {
  const server = await nodeServer(tls, (stream, headers, rawHeaders) => {
    const sensitive = (headers as Record<symbol, unknown>)[http2.sensitiveHeaders] ?? [];
    stream.respond({ ":status": 200 });
    // The echo as latin1 bytes, so that every char comes back as sent.
    stream.end(Buffer.from(JSON.stringify({ rawHeaders, sensitive }), "latin1"));
  });
  const c = await RawH2.open(server.port, tls, []);
  const echo = async (fields: Fields, secret?: (name: string) => boolean) => {
    const res = await c.request(encodeHeaderBlock(fields, secret));
    const got = JSON.parse(latin1(res.body)) as {
      rawHeaders: string[];
      sensitive: string[];
    };
    const pairs: Fields = [];
    for (let i = 0; i < got.rawHeaders.length; i += 2) {
      pairs.push([got.rawHeaders[i]!, got.rawHeaders[i + 1]!]);
    }
    return { fields: pairs, sensitive: got.sensitive };
  };
  try {
    const secret = (name: string) =>
      name === "authorization" || name === "cookie" || name.endsWith("key");
    const sent = request("/v1/chat/completions?q=1", [
      ["content-type", "application/json"],
      ["authorization", "Bearer sk-" + "k".repeat(200)],
      ["x-api-key", "secret-key"],
      ["cookie", "a=1"],
      ["cookie", "b=2"],
      ["user-agent", "OpenAI/JS 4.77.0"],
      ["accept", "application/json"],
      ["x-latin1", "caf\u00e9 \u0080\u00ff"],
      ["x-long-name-" + "n".repeat(150), "v"],
      ["x-empty", ""],
      ["x-huge", "h".repeat(20000)], // a block past 16 KB: our HEADERS + CONTINUATION
    ]);
    const got = await echo(sent, secret);
    assert.deepEqual(got.fields, sent);
    assert.deepEqual(got.sensitive.sort(), ["authorization", "cookie", "cookie", "x-api-key"]);
    // Without `sensitive`, nothing is never-indexed.
    assert.deepEqual((await echo(request("/", [["authorization", "k"]]))).sensitive, []);

    // Random fields nghttp2 accepts (token names, values without edge whitespace or CR LF NUL).
    const tchar = fc.constantFrom(..."abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~");
    const vchar = fc.integer({ min: 0x21, max: 0xff }).filter((c) => c !== 0x7f);
    const value = fc.oneof(
      fc.constant(""),
      fc.tuple(
        vchar,
        fc.array(fc.oneof(vchar, fc.constantFrom(0x20, 0x09)), { maxLength: 200 }),
        vchar,
      )
        .map(([a, mid, b]) => String.fromCharCode(a, ...mid, b)),
    );
    const name = fc.oneof(
      fc.constantFrom("accept", "content-type", "user-agent", "authorization", "cookie", "x-key"),
      fc.array(tchar, { minLength: 1, maxLength: 30 }).map((cs) => "x-" + cs.join("")),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(name, value), { maxLength: 20 }), async (extra) => {
        const fields = request("/p", extra);
        const got = await echo(fields, secret);
        assert.deepEqual(got.fields, fields);
        assert.deepEqual(
          got.sensitive.sort(),
          extra.map(([n]) => n).filter(secret).sort(),
        );
      }),
      { numRuns: 40 },
    );
  } finally {
    c.close();
    await server.close();
  }
});
