import assert from "node:assert/strict";
import fc from "fast-check";
import {
  type Cidr,
  CidrList,
  clientIpFrom,
  formatCidr,
  formatIp,
  type IpAddr,
  isLoopback,
  isPublicBindAddress,
  parseCidr,
  parseCidrList,
  parseIp,
} from "../lib/config/ip.ts";

// [input, canonical form]
const VALID_IPS: ReadonlyArray<readonly [string, string]> = [
  ["0.0.0.0", "0.0.0.0"],
  ["255.255.255.255", "255.255.255.255"],
  ["192.168.1.1", "192.168.1.1"],
  ["10.0.0.10", "10.0.0.10"],
  ["::", "::"],
  ["::1", "::1"],
  ["1::", "1::"],
  ["1::8", "1::8"],
  ["2001:db8::1", "2001:db8::1"],
  ["2001:DB8:0:0:8:800:200C:417A", "2001:db8::8:800:200c:417a"],
  ["2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
  ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"], // leftmost of two equal runs
  ["1:0:1:1:1:1:1:1", "1:0:1:1:1:1:1:1"], // a single zero group is not shortened
  ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"],
  ["1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"],
  ["::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8"],
  ["1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"],
  ["64:ff9b::192.0.2.33", "64:ff9b::c000:221"], // NAT64, embedded but not mapped
  ["::1.2.3.4", "::102:304"], // deprecated IPv4-compatible form stays IPv6
  ["fe80::1%eth0", "fe80::1"],
  ["fe80::1%25", "fe80::1"],
  ["[::1]", "::1"],
  ["[fe80::1%en0]", "fe80::1"],
  ["::ffff:1.2.3.4", "1.2.3.4"],
  ["::FFFF:1.2.3.4", "1.2.3.4"],
  ["::ffff:102:304", "1.2.3.4"],
  ["0:0:0:0:0:ffff:7f00:1", "127.0.0.1"],
  ["[::ffff:10.0.0.1]", "10.0.0.1"],
];

const INVALID_IPS: readonly string[] = [
  "",
  " ",
  " 1.2.3.4",
  "1.2.3.4 ",
  "1.2.3",
  "1.2.3.4.5",
  "256.1.1.1",
  "1.2.3.256",
  "01.2.3.4",
  "1.2.3.04",
  "1.2.3.00",
  "1.2.3.-1",
  "1..2.3",
  "0x7f.0.0.1",
  "127.1",
  "2130706433",
  "1.2.3.4/24",
  "1.2.3.4:80",
  "1.2.3.4%eth0",
  "[1.2.3.4]",
  "１.2.3.4",
  "localhost",
  "unknown",
  ":",
  ":::",
  "::1::",
  "1:::2",
  ":1::",
  "1::2:",
  ":1:2:3:4:5:6:7",
  "1:2:3:4:5:6:7",
  "1:2:3:4:5:6:7:8:9",
  "1:2:3:4:5:6:7:8::",
  "::1:2:3:4:5:6:7:8",
  "12345::",
  "g::",
  "::1.2.3",
  "::1.2.3.4:1",
  "1.2.3.4::",
  "1:2:3:4:5:6:7:1.2.3.4",
  "::ffff:1.2.3.256",
  "::ffff:01.2.3.4",
  "[::1",
  "::1]",
  "[[::1]]",
  "[::1]:443",
  "fe80::1%",
  "fe80::1%eth 0",
  "fe80::1%a%b",
  "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.2555",
];

Deno.test("parseIp accepts and canonicalises every valid form in the table", () => {
  for (const [input, canonical] of VALID_IPS) {
    const addr = parseIp(input);
    assert.notEqual(addr, null, `expected ${JSON.stringify(input)} to parse`);
    assert.equal(formatIp(addr as IpAddr), canonical, `canonical form of ${input}`);
  }
});

Deno.test("parseIp returns null when the text is not a strict address", () => {
  for (const input of INVALID_IPS) {
    assert.equal(parseIp(input), null, `expected ${JSON.stringify(input)} to be refused`);
  }
});

Deno.test("parseIp normalises IPv4-mapped IPv6 to the same value as plain IPv4", () => {
  assert.deepEqual(parseIp("::ffff:10.0.0.1"), parseIp("10.0.0.1"));
  assert.deepEqual(parseIp("::ffff:a00:1"), { family: 4, value: 0x0a000001n });
  assert.deepEqual(parseIp("[::ffff:192.168.0.1%eth0]"), parseIp("192.168.0.1"));
  // Neighbours of the mapped block are ordinary IPv6.
  assert.equal(parseIp("::fffe:1.2.3.4")?.family, 6);
  assert.equal(parseIp("1::ffff:1.2.3.4")?.family, 6);
});

// [input, canonical]
const VALID_CIDRS: ReadonlyArray<readonly [string, string]> = [
  ["10.0.0.0/8", "10.0.0.0/8"],
  ["10.1.2.3/8", "10.0.0.0/8"], // host bits are masked off
  ["0.0.0.0/0", "0.0.0.0/0"],
  ["255.255.255.255/0", "0.0.0.0/0"],
  ["1.2.3.4", "1.2.3.4/32"],
  ["1.2.3.4/32", "1.2.3.4/32"],
  ["172.31.255.255/12", "172.16.0.0/12"],
  ["::/0", "::/0"],
  ["::1", "::1/128"],
  ["2001:db8::1/32", "2001:db8::/32"],
  ["2001:db8::/128", "2001:db8::/128"],
  ["fe80::%eth0/10", "fe80::/10"],
  ["[2001:db8::]/48", "2001:db8::/48"],
  ["::ffff:10.0.0.0/104", "10.0.0.0/8"],
  ["::ffff:0:0/96", "0.0.0.0/0"],
  ["::ffff:1.2.3.4", "1.2.3.4/32"],
  ["::ffff:0:0/95", "::fffe:0:0/95"],
];

const INVALID_CIDRS: readonly string[] = [
  "",
  "/8",
  "10.0.0.0/",
  "10.0.0.0/33",
  "10.0.0.0/08",
  "10.0.0.0/-1",
  "10.0.0.0/+8",
  "10.0.0.0/8/8",
  "10.0.0.0/ 8",
  "10.0.0.0/8.0",
  "10.0.0.0/1e1",
  "10.0.0/8",
  "::/129",
  "::/1000",
  "2001:db8::/0x20",
  "example.com/24",
];

Deno.test("parseCidr masks host bits and normalises when the range is valid", () => {
  for (const [input, canonical] of VALID_CIDRS) {
    const c = parseCidr(input);
    assert.notEqual(c, null, `expected ${JSON.stringify(input)} to parse`);
    assert.equal(formatCidr(c as Cidr), canonical, `canonical form of ${input}`);
  }
});

Deno.test("parseCidr returns null when the range is malformed", () => {
  for (const input of INVALID_CIDRS) {
    assert.equal(parseCidr(input), null, `expected ${JSON.stringify(input)} to be refused`);
  }
});

Deno.test("parseCidrList splits on commas and any whitespace", () => {
  const list = parseCidrList(" 10.0.0.0/8,192.168.0.0/16\n\t::1 ,, fd00::/8 ", "TRUSTED_PROXIES");
  assert.equal(list.size, 4);
  assert.equal(list.toString(), "10.0.0.0/8,192.168.0.0/16,::1/128,fd00::/8");
  assert.equal(parseCidrList("", "X").size, 0);
  assert.equal(parseCidrList(" , \n", "X").size, 0);
  assert.equal(parseCidrList("", "X").contains("1.2.3.4"), false);
});

Deno.test("parseCidrList throws an Error naming the variable, entry and expected form when an entry is bad", () => {
  assert.throws(
    () => parseCidrList("10.0.0.0/8, 10.0.0.0/33", "ALLOWED_IPS"),
    (err: unknown) => {
      assert.ok(err instanceof Error);
      assert.match(err.message, /^ALLOWED_IPS: /);
      assert.match(err.message, /entry 2 "10\.0\.0\.0\/33"/);
      assert.match(err.message, /prefix length must be a whole number from 0 to 32 for IPv4/);
      assert.match(err.message, /expected IPv4 or IPv6 addresses or CIDR ranges/);
      return true;
    },
  );
  assert.throws(() => parseCidrList("::/129", "V"), /0 to 128 for IPv6/);
  assert.throws(() => parseCidrList("10.0.0.1-10.0.0.9", "V"), /not an IPv4 or IPv6 address/);
  // Long entries are shortened in the message.
  assert.throws(
    () => parseCidrList("x".repeat(5000), "V"),
    (err: unknown) => err instanceof Error && err.message.length < 400 && err.message.includes("…"),
  );
});

// [list, candidate, expected]
const CONTAINS: ReadonlyArray<readonly [string, string, boolean]> = [
  ["10.0.0.0/8", "10.0.0.0", true],
  ["10.0.0.0/8", "10.255.255.255", true],
  ["10.0.0.0/8", "9.255.255.255", false],
  ["10.0.0.0/8", "11.0.0.0", false],
  ["10.0.0.0/8", "::ffff:10.1.2.3", true],
  ["10.0.0.0/8", "::ffff:a01:203", true],
  ["10.0.0.0/8", "::10.1.2.3", false], // IPv4-compatible is not IPv4-mapped
  ["10.0.0.0/8", "garbage", false],
  ["10.0.0.0/8", "", false],
  ["10.0.0.0/8", " 10.0.0.1", false],
  ["0.0.0.0/0", "0.0.0.0", true],
  ["0.0.0.0/0", "255.255.255.255", true],
  ["0.0.0.0/0", "::ffff:8.8.8.8", true],
  ["0.0.0.0/0", "::1", false],
  ["0.0.0.0/0", "2001:db8::1", false],
  ["::/0", "::", true],
  ["::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true],
  ["::/0", "1.2.3.4", true], // one address space: IPv4 is ::ffff:0:0/96
  ["::ffff:0:0/96", "203.0.113.9", true],
  ["::ffff:192.168.0.0/112", "192.168.44.1", true],
  ["::ffff:192.168.0.0/112", "192.169.0.1", false],
  ["2001:db8::/32", "1.2.3.4", false],
  ["1.2.3.4/32", "1.2.3.4", true],
  ["1.2.3.4/32", "1.2.3.5", false],
  ["1.2.3.4/32", "1.2.3.3", false],
  ["1.2.3.4", "::ffff:1.2.3.4", true],
  ["128.0.0.0/1", "127.255.255.255", false],
  ["128.0.0.0/1", "128.0.0.0", true],
  ["255.255.255.255/32", "255.255.255.255", true],
  ["2001:db8::/32", "2001:db8::", true],
  ["2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true],
  ["2001:db8::/32", "2001:db9::", false],
  ["2001:db8::/32", "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", false],
  ["::1/128", "::1", true],
  ["::1/128", "::2", false],
  ["::1/128", "::", false],
  ["::1/128", "127.0.0.1", false],
  ["fe80::/10", "fe80::1%eth0", true],
  ["fe80::/10", "febf:ffff::1", true],
  ["fe80::/10", "fec0::1", false],
  ["10.0.0.0/8, fd00::/8", "fdab::1", true],
  ["10.0.0.0/8, fd00::/8", "10.9.9.9", true],
  ["10.0.0.0/8, fd00::/8", "fe00::1", false],
];

Deno.test("CidrList.contains matches the table of boundaries and families", () => {
  for (const [list, candidate, expected] of CONTAINS) {
    assert.equal(
      parseCidrList(list, "T").contains(candidate),
      expected,
      `${list} contains ${candidate}`,
    );
  }
});

Deno.test("CidrList constructor masks host bits when given hand-built ranges", () => {
  const list = new CidrList([{ family: 4, network: 0x0a0a0a0an, prefix: 8 }]);
  assert.equal(list.contains("10.200.0.1"), true);
  assert.equal(list.contains("11.0.0.1"), false);
});

Deno.test("isLoopback is true only for 127/8, ::1 and localhost", () => {
  for (
    const ip of [
      "127.0.0.1",
      "127.255.255.254",
      "::1",
      "[::1]",
      "::ffff:127.0.0.1",
      "localhost",
      "LOCALHOST",
    ]
  ) {
    assert.equal(isLoopback(ip), true, ip);
  }
  for (
    const ip of [
      "128.0.0.1",
      "126.255.255.255",
      "::",
      "::2",
      "0.0.0.0",
      "10.0.0.1",
      "localhost.example",
      "",
      "::127.0.0.1",
    ]
  ) {
    assert.equal(isLoopback(ip), false, ip);
  }
});

Deno.test("isPublicBindAddress is true for wildcards and public addresses and false for loopback and private", () => {
  const cases: ReadonlyArray<readonly [string, boolean]> = [
    ["0.0.0.0", true],
    ["::", true],
    ["[::]", true],
    ["::ffff:0.0.0.0", true],
    ["8.8.8.8", true],
    ["2001:db8::1", true],
    ["203.0.113.7", true],
    ["my-host.example", true], // unknown name: assume the worst
    ["127.0.0.1", false],
    ["127.1.2.3", false],
    ["::1", false],
    ["[::1]", false],
    ["localhost", false],
    ["Localhost.", false],
    ["10.1.2.3", false],
    ["172.16.0.1", false],
    ["172.31.255.255", false],
    ["172.32.0.1", true],
    ["192.168.1.1", false],
    ["100.100.1.1", false],
    ["169.254.1.1", false],
    ["fd12:3456::1", false],
    ["fe80::1%eth0", false],
  ];
  for (const [host, expected] of cases) {
    assert.equal(isPublicBindAddress(host), expected, host);
  }
});

function headers(init: Record<string, string>): Headers {
  return new Headers(init);
}

const TRUSTED = parseCidrList("10.0.0.0/8, 192.168.0.0/16, fd00::/8", "TRUSTED_PROXIES");

Deno.test("clientIpFrom ignores forwarding headers when the peer is not trusted", () => {
  const h = headers({ "x-forwarded-for": "1.1.1.1", "x-real-ip": "2.2.2.2" });
  assert.equal(clientIpFrom("203.0.113.5", h, TRUSTED), "203.0.113.5");
  assert.equal(clientIpFrom("203.0.113.5", h, null), "203.0.113.5");
  // The headers even claim a trusted address; still ignored.
  assert.equal(
    clientIpFrom("203.0.113.5", headers({ "x-forwarded-for": "10.0.0.1" }), TRUSTED),
    "203.0.113.5",
  );
});

Deno.test("clientIpFrom returns the peer in canonical form when it is IPv4-mapped", () => {
  assert.equal(clientIpFrom("::ffff:203.0.113.5", headers({}), null), "203.0.113.5");
  assert.equal(clientIpFrom("2001:DB8::0001", headers({}), TRUSTED), "2001:db8::1");
});

Deno.test("clientIpFrom returns a non-IP peer unchanged and never trusts it", () => {
  const h = headers({ "x-forwarded-for": "1.1.1.1" });
  assert.equal(clientIpFrom("/run/relay.sock", h, parseCidrList("::/0", "T")), "/run/relay.sock");
  assert.equal(clientIpFrom("", h, TRUSTED), "");
});

Deno.test("clientIpFrom takes the rightmost untrusted hop when the peer is a trusted proxy", () => {
  // client -> evil-claimed-hop -> 198.51.100.7 (real client) -> 10.0.0.2 (lb) -> 10.0.0.1 (peer)
  const h = headers({ "x-forwarded-for": "6.6.6.6, 198.51.100.7, 10.0.0.2" });
  assert.equal(clientIpFrom("10.0.0.1", h, TRUSTED), "198.51.100.7");
  assert.equal(
    clientIpFrom("10.0.0.1", headers({ "x-forwarded-for": "198.51.100.7" }), TRUSTED),
    "198.51.100.7",
  );
  assert.equal(
    clientIpFrom("::ffff:10.0.0.1", headers({ "x-forwarded-for": "::ffff:198.51.100.7" }), TRUSTED),
    "198.51.100.7",
  );
  assert.equal(
    clientIpFrom("fd00::1", headers({ "x-forwarded-for": "2001:db8::7, fd00::2" }), TRUSTED),
    "2001:db8::7",
  );
});

Deno.test("clientIpFrom joins repeated X-Forwarded-For headers in order when walking", () => {
  const h = new Headers();
  h.append("x-forwarded-for", "6.6.6.6, 198.51.100.7");
  h.append("x-forwarded-for", "192.168.1.1");
  assert.equal(clientIpFrom("10.0.0.1", h, TRUSTED), "198.51.100.7");
});

Deno.test("clientIpFrom returns the leftmost hop when every hop is trusted", () => {
  const h = headers({ "x-forwarded-for": "192.168.5.5, 10.0.0.3, 10.0.0.2" });
  assert.equal(clientIpFrom("10.0.0.1", h, TRUSTED), "192.168.5.5");
});

Deno.test("clientIpFrom stops at the last valid hop when an entry does not parse", () => {
  const cases: ReadonlyArray<readonly [string, string]> = [
    ["1.1.1.1, garbage, 10.0.0.2", "10.0.0.2"],
    ["1.1.1.1, 10.0.0.2, unknown", "10.0.0.1"],
    ["1.1.1.1, 198.51.100.7:5555", "10.0.0.1"],
    ["1.1.1.1,, 10.0.0.2", "10.0.0.2"],
    ["1.1.1.1, 10.0.0.2,", "10.0.0.1"],
    ["<script>, 198.51.100.7", "198.51.100.7"],
  ];
  for (const [xff, expected] of cases) {
    assert.equal(
      clientIpFrom("10.0.0.1", headers({ "x-forwarded-for": xff }), TRUSTED),
      expected,
      xff,
    );
  }
});

Deno.test("clientIpFrom falls back to X-Real-IP then the peer when X-Forwarded-For is absent", () => {
  assert.equal(
    clientIpFrom("10.0.0.1", headers({ "x-real-ip": " 198.51.100.7 " }), TRUSTED),
    "198.51.100.7",
  );
  assert.equal(
    clientIpFrom(
      "10.0.0.1",
      headers({ "x-forwarded-for": " ", "x-real-ip": "198.51.100.7" }),
      TRUSTED,
    ),
    "198.51.100.7",
  );
  assert.equal(clientIpFrom("10.0.0.1", headers({ "x-real-ip": "nope" }), TRUSTED), "10.0.0.1");
  assert.equal(clientIpFrom("10.0.0.1", headers({}), TRUSTED), "10.0.0.1");
  // X-Forwarded-For wins over X-Real-IP when both are present.
  assert.equal(
    clientIpFrom(
      "10.0.0.1",
      headers({ "x-forwarded-for": "198.51.100.7", "x-real-ip": "198.51.100.8" }),
      TRUSTED,
    ),
    "198.51.100.7",
  );
});

// ---- properties ---------------------------------------------------------------------------------

const V4_MAPPED = 0xffff_0000_0000n;
const v4Addr = fc.integer({ min: 0, max: 0xffff_ffff }).map((n): IpAddr => ({
  family: 4,
  value: BigInt(n),
}));
// Random 128-bit values, biased toward zero runs so "::" shortening is exercised.
const v6Addr = fc
  .array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })), {
    minLength: 8,
    maxLength: 8,
  })
  .map((groups) => groups.reduce((v, g) => (v << 16n) | BigInt(g), 0n))
  .filter((v) => v >> 32n !== 0xffffn)
  .map((value): IpAddr => ({ family: 6, value }));
const anyAddr = fc.oneof(v4Addr, v6Addr);

Deno.test("parseIp(formatIp(x)) returns x for any IPv4 or non-mapped IPv6 address", () => {
  fc.assert(
    fc.property(anyAddr, (a) => {
      assert.deepEqual(parseIp(formatIp(a)), a);
    }),
    { numRuns: 2000 },
  );
});

Deno.test("parseIp gives back IPv4 when formatting an IPv4-mapped IPv6 value", () => {
  fc.assert(
    fc.property(v4Addr, (a) => {
      const mapped: IpAddr = { family: 6, value: V4_MAPPED | a.value };
      assert.deepEqual(parseIp(formatIp(mapped)), a);
      assert.deepEqual(parseIp(`::ffff:${formatIp(a)}`), a);
    }),
  );
});

Deno.test("parseIp accepts and round-trips the addresses fast-check generates", () => {
  fc.assert(
    fc.property(fc.oneof(fc.ipV4(), fc.ipV6()), (s) => {
      const a = parseIp(s);
      assert.notEqual(a, null, s);
      assert.deepEqual(parseIp(formatIp(a as IpAddr)), a);
    }),
    { numRuns: 2000 },
  );
});

Deno.test("an address is inside its own /n for every n and outside when a prefix bit flips", () => {
  fc.assert(
    fc.property(anyAddr, fc.nat(), (a, seed) => {
      const bits = a.family === 4 ? 32 : 128;
      const text = formatIp(a);
      for (let n = 0; n <= bits; n++) {
        assert.ok(parseCidrList(`${text}/${n}`, "P").contains(text), `${text}/${n}`);
      }
      const n = 1 + (seed % bits);
      const flipped: IpAddr = { family: a.family, value: a.value ^ (1n << BigInt(bits - n)) };
      const list = parseCidrList(`${text}/${n}`, "P");
      // Flipping a bit inside the prefix leaves the range, except where the flip lands in the
      // mapped block (then the IPv6 text covers IPv4 and family changes).
      if (parseIp(formatIp(flipped))?.family === a.family) {
        assert.equal(list.containsAddr(flipped), false, `${formatIp(flipped)} in ${text}/${n}`);
      }
    }),
    { numRuns: 300 },
  );
});

Deno.test("parseCidrList returns or throws an Error naming the variable on arbitrary text", () => {
  const cidrish = fc.string({
    unit: fc.constantFrom(..."0123456789abcdefABCDEF:./%[], \n\t-xg".split("")),
    maxLength: 60,
  });
  fc.assert(
    fc.property(fc.oneof(fc.string(), fc.string({ unit: "grapheme" }), cidrish), (text) => {
      try {
        const list = parseCidrList(text, "MY_VAR");
        assert.ok(list instanceof CidrList);
        // Whatever parsed must survive a round trip through its canonical text.
        assert.equal(parseCidrList(list.toString(), "MY_VAR").toString(), list.toString());
      } catch (err) {
        assert.ok(err instanceof Error, "thrown value must be an Error");
        assert.equal(err.constructor, Error);
        assert.ok(err.message.startsWith("MY_VAR: "), err.message);
      }
    }),
    { numRuns: 3000 },
  );
});

Deno.test("clientIpFrom never returns a header value when the peer is untrusted", () => {
  const printable = fc.string({
    unit: fc.constantFrom(..." ,.:0123456789abcdef[]%".split("")),
    maxLength: 80,
  });
  const headerValue = fc.oneof(
    printable,
    fc.array(fc.oneof(fc.ipV4(), fc.ipV6()), { maxLength: 5 }).map((a) => a.join(", ")),
  );
  // Untrusted peers: anything outside 10.0.0.0/8 and fd00::/8.
  const peer = fc
    .oneof(fc.ipV4(), fc.ipV6())
    .filter((p) => !parseCidrList("10.0.0.0/8, fd00::/8", "T").contains(p));
  const trusted = parseCidrList("10.0.0.0/8, fd00::/8", "T");
  fc.assert(
    fc.property(peer, headerValue, headerValue, fc.boolean(), (p, xff, real, useNull) => {
      const h = headers({ "x-forwarded-for": xff, "x-real-ip": real });
      const expected = formatIp(parseIp(p) as IpAddr);
      assert.equal(clientIpFrom(p, h, useNull ? null : trusted), expected);
    }),
    { numRuns: 2000 },
  );
});

Deno.test("clientIpFrom returns a hop from the header or the peer when the peer is trusted", () => {
  const hop = fc.oneof(fc.ipV4(), fc.ipV6(), fc.constantFrom("10.1.1.1", "fd00::9", "junk", ""));
  fc.assert(
    fc.property(fc.array(hop, { maxLength: 6 }), (hops) => {
      const xff = hops.join(", ");
      const got = clientIpFrom("10.0.0.1", headers({ "x-forwarded-for": xff }), TRUSTED);
      const candidates = new Set(
        ["10.0.0.1", ...hops].map((s) => parseIp(s.trim())).filter((a) => a !== null).map((a) =>
          formatIp(a as IpAddr)
        ),
      );
      assert.ok(candidates.has(got), `${got} from ${xff}`);
    }),
  );
});
