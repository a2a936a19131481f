/**
 * @module ip
 * IP addresses and CIDR ranges for allow-lists, trusted proxies and bind-address checks.
 *
 * Owns: strict parsing of IPv4 and IPv6 text, CIDR lists parsed once at start-up, and deciding which
 * address is the real client behind a chain of proxies.
 * Must never: resolve host names (no DNS, no I/O), accept lenient legacy forms such as `010.1.1.1`
 * or `0x7f.1` (they mean different things to different parsers), or believe forwarding headers
 * sent by a peer that is not a configured trusted proxy.
 *
 * IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are normalised to IPv4 everywhere, so a client
 * seen on a dual-stack socket matches the same IPv4 rules as one seen on an IPv4 socket. For
 * matching, all addresses live in one 128-bit space in which IPv4 is `::ffff:0:0/96`: an IPv6 range
 * that covers that block (such as `::/0`) therefore also contains every IPv4 address.
 */

/** A parsed address. `value` is 32 bits wide for family 4 and 128 bits wide for family 6. */
export interface IpAddr {
  readonly family: 4 | 6;
  readonly value: bigint;
}

/** A parsed CIDR range; `network` has the host bits (those after `prefix`) cleared. */
export interface Cidr {
  readonly family: 4 | 6;
  readonly network: bigint;
  readonly prefix: number;
}

const V4_MAPPED = 0xffff_0000_0000n;
const V4_MAPPED_BLOCK = V4_MAPPED >> 32n; // the upper 96 bits of a mapped address: 0xffff
const ALL_128 = (1n << 128n) - 1n;
// Longest textual IPv6 form: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255". Checked early so an
// absurd header value costs nothing more than a length comparison.
const MAX_V6_TEXT = 45;
const MAX_ZONE = 64;
const OCTET = /^(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$/;
const HEXTET = /^[0-9a-fA-F]{1,4}$/;
const ZONE = /^[0-9A-Za-z_.~-]+$/;
const PREFIX_DIGITS = /^(?:0|[1-9][0-9]{0,2})$/;

function parseV4(s: string): number | null {
  const parts = s.split(".");
  if (parts.length !== 4) return null;
  let v = 0;
  for (const p of parts) {
    if (!OCTET.test(p)) return null;
    v = v * 256 + Number(p);
  }
  return v;
}

/** Parses IPv6 text without brackets or zone; returns the 128-bit value. */
function parseV6(s: string): bigint | null {
  if (s.length < 2 || s.length > MAX_V6_TEXT) return null;
  const gap = s.indexOf("::");
  if (gap !== -1 && s.indexOf("::", gap + 1) !== -1) return null;
  const head = gap === -1 ? s.split(":") : gap === 0 ? [] : s.slice(0, gap).split(":");
  const tail = gap === -1 ? [] : gap + 2 === s.length ? [] : s.slice(gap + 2).split(":");
  const headWords = words(head, gap === -1);
  const tailWords = words(tail, true);
  if (headWords === null || tailWords === null) return null;
  const count = headWords.length + tailWords.length;
  // "::" stands for at least one zero group, so with it at most seven groups may be written.
  if (gap === -1 ? count !== 8 : count > 7) return null;
  let v = 0n;
  for (const w of headWords) v = (v << 16n) | BigInt(w);
  v <<= BigInt(16 * (8 - count));
  for (const w of tailWords) v = (v << 16n) | BigInt(w);
  return v;
}

/** Converts colon-separated groups to 16-bit words; only the address's last group may be IPv4. */
function words(groups: readonly string[], endsAddress: boolean): number[] | null {
  const out: number[] = [];
  for (let i = 0; i < groups.length; i++) {
    const g = groups[i] ?? "";
    if (HEXTET.test(g)) {
      out.push(parseInt(g, 16));
    } else if (endsAddress && i === groups.length - 1 && g.includes(".")) {
      const v4 = parseV4(g);
      if (v4 === null) return null;
      out.push(Math.floor(v4 / 65536), v4 % 65536);
    } else {
      return null;
    }
  }
  return out;
}

/** Parses text into `[value128, writtenAsV6]`, before any IPv4-mapped normalisation. */
function parseRaw(s: string): [bigint, boolean] | null {
  let text = s;
  let bracketed = false;
  if (text.startsWith("[") && text.endsWith("]")) {
    text = text.slice(1, -1);
    bracketed = true;
  }
  const pct = text.indexOf("%");
  if (pct !== -1) {
    const zone = text.slice(pct + 1);
    if (zone.length === 0 || zone.length > MAX_ZONE || !ZONE.test(zone)) return null;
    text = text.slice(0, pct);
    // A zone only qualifies a (link-local) IPv6 address; "1.2.3.4%eth0" is not an address.
    if (!text.includes(":")) return null;
  }
  if (!text.includes(":")) {
    // Brackets are IPv6 literal syntax (RFC 3986); "[1.2.3.4]" is a typo or a trick.
    if (bracketed) return null;
    const v4 = parseV4(text);
    return v4 === null ? null : [V4_MAPPED | BigInt(v4), false];
  }
  const v6 = parseV6(text);
  return v6 === null ? null : [v6, true];
}

function fromValue128(v: bigint): IpAddr {
  return v >> 32n === V4_MAPPED_BLOCK
    ? { family: 4, value: v & 0xffff_ffffn }
    : { family: 6, value: v };
}

function toValue128(addr: IpAddr): bigint {
  return addr.family === 4 ? V4_MAPPED | addr.value : addr.value;
}

/**
 * Parses an IPv4 dotted quad or any textual IPv6 form into an address, or returns null.
 *
 * IPv4 is strict: exactly four decimal octets 0-255 without leading zeros (`01.2.3.4` is refused
 * because some parsers read it as octal). IPv6 accepts full, `::`-compressed and embedded-IPv4
 * forms, an optional zone (`fe80::1%eth0`, dropped) and optional brackets (`[::1]`). IPv4-mapped
 * IPv6 (`::ffff:1.2.3.4`, `::ffff:102:304`) comes back as IPv4. Surrounding whitespace is refused:
 * callers trim header values themselves.
 */
export function parseIp(s: string): IpAddr | null {
  const raw = parseRaw(s);
  return raw === null ? null : fromValue128(raw[0]);
}

/**
 * Formats an address canonically: dotted quad for IPv4, RFC 5952 for IPv6 (lower case, no
 * leading zeros, the longest run of two or more zero groups shortened to `::`, leftmost on a tie).
 */
export function formatIp(addr: IpAddr): string {
  if (addr.family === 4) {
    const v = Number(addr.value & 0xffff_ffffn);
    return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
  }
  const groups: number[] = [];
  for (let shift = 112n; shift >= 0n; shift -= 16n) {
    groups.push(Number((addr.value >> shift) & 0xffffn));
  }
  let bestStart = -1;
  let bestLen = 1; // a single zero group is never shortened (RFC 5952 §4.2.2)
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart === -1) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}

/** Parses a CIDR, returning either the range or why it is not one. */
function parseCidrOrReason(s: string): Cidr | string {
  const slash = s.indexOf("/");
  const addrText = slash === -1 ? s : s.slice(0, slash);
  const raw = parseRaw(addrText);
  if (raw === null) return "not an IPv4 or IPv6 address";
  const [value, writtenAsV6] = raw;
  const maxPrefix = writtenAsV6 ? 128 : 32;
  let prefix = maxPrefix;
  if (slash !== -1) {
    const p = s.slice(slash + 1);
    if (!PREFIX_DIGITS.test(p) || Number(p) > maxPrefix) {
      return `prefix length must be a whole number from 0 to ${maxPrefix} for ${
        writtenAsV6 ? "IPv6" : "IPv4"
      }`;
    }
    prefix = Number(p);
  }
  // Work in the shared 128-bit space, then hand back IPv4 when the range lies inside ::ffff:0:0/96
  // so that "::ffff:10.0.0.0/104" and "10.0.0.0/8" are the same range.
  const prefix128 = writtenAsV6 ? prefix : prefix + 96;
  const network = value & maskOf(prefix128);
  if (prefix128 >= 96 && network >> 32n === V4_MAPPED_BLOCK) {
    return { family: 4, network: network & 0xffff_ffffn, prefix: prefix128 - 96 };
  }
  return { family: 6, network, prefix: prefix128 };
}

function maskOf(prefix128: number): bigint {
  return (ALL_128 << BigInt(128 - prefix128)) & ALL_128;
}

/**
 * Parses `a.b.c.d/n`, `x::/n` or a bare address (a /32 or /128) into a range, or returns null.
 * Host bits set beyond the prefix are allowed and cleared (`10.1.2.3/8` is `10.0.0.0/8`).
 */
export function parseCidr(s: string): Cidr | null {
  const r = parseCidrOrReason(s);
  return typeof r === "string" ? null : r;
}

/** Formats a range canonically, e.g. `10.0.0.0/8` or `2001:db8::/32`. */
export function formatCidr(cidr: Cidr): string {
  return `${formatIp({ family: cidr.family, value: cidr.network })}/${cidr.prefix}`;
}

/**
 * A set of CIDR ranges, parsed once, answering membership questions for candidate addresses.
 * IPv4 candidates are matched with 32-bit number arithmetic; only IPv6 candidates pay for bigint.
 */
export class CidrList {
  /** The ranges as given (already normalised by {@linkcode parseCidr}). */
  readonly entries: readonly Cidr[];
  readonly #v4Nets: Uint32Array;
  readonly #v4Masks: Uint32Array;
  readonly #v6Nets: bigint[] = [];
  readonly #v6Masks: bigint[] = [];
  // True when some IPv6 range covers all of ::ffff:0:0/96, i.e. every IPv4 address.
  readonly #allV4: boolean;

  /** Builds a list from already-parsed ranges; see {@linkcode parseCidrList} for text. */
  constructor(entries: Iterable<Cidr>) {
    this.entries = Object.freeze([...entries]);
    const v4Nets: number[] = [];
    const v4Masks: number[] = [];
    let allV4 = false;
    for (const c of this.entries) {
      if (c.family === 4) {
        const mask = c.prefix === 0 ? 0 : (0xffff_ffff << (32 - c.prefix)) >>> 0;
        v4Masks.push(mask);
        v4Nets.push((Number(c.network & 0xffff_ffffn) & mask) >>> 0);
      } else {
        const mask = maskOf(c.prefix);
        const net = c.network & mask;
        this.#v6Masks.push(mask);
        this.#v6Nets.push(net);
        if (c.prefix <= 96 && (V4_MAPPED & mask) === net) allV4 = true;
      }
    }
    this.#v4Nets = Uint32Array.from(v4Nets);
    this.#v4Masks = Uint32Array.from(v4Masks);
    this.#allV4 = allV4;
  }

  /** Number of ranges in the list. */
  get size(): number {
    return this.entries.length;
  }

  /** True when `ip` parses (see {@linkcode parseIp}) and lies in some range; false otherwise. */
  contains(ip: string): boolean {
    const addr = parseIp(ip);
    return addr !== null && this.containsAddr(addr);
  }

  /** True when an already-parsed address lies in some range. */
  containsAddr(addr: IpAddr): boolean {
    if (addr.family === 4) {
      if (this.#allV4) return true;
      const v = Number(addr.value & 0xffff_ffffn);
      for (let i = 0; i < this.#v4Nets.length; i++) {
        if (((v & (this.#v4Masks[i] ?? 0)) >>> 0) === this.#v4Nets[i]) return true;
      }
      return false;
    }
    const v = toValue128(addr);
    for (let i = 0; i < this.#v6Nets.length; i++) {
      if ((v & (this.#v6Masks[i] ?? 0n)) === this.#v6Nets[i]) return true;
    }
    return false;
  }

  /** The ranges in canonical form, comma-separated (safe to log: addresses are not secrets). */
  toString(): string {
    return this.entries.map(formatCidr).join(",");
  }
}

// Entries are echoed into start-up errors; cap them so a pasted blob doesn't flood the log.
const MAX_ECHO = 80;

/**
 * Parses a comma- and/or whitespace-separated list of addresses and CIDRs from configuration.
 * An empty or blank text gives an empty list (which contains nothing).
 *
 * @throws {Error} naming `varName`, the offending entry and what was expected.
 */
export function parseCidrList(text: string, varName: string): CidrList {
  const out: Cidr[] = [];
  const items = text.split(/[\s,]+/).filter((t) => t !== "");
  for (const [i, item] of items.entries()) {
    const r = parseCidrOrReason(item);
    if (typeof r === "string") {
      const shown = item.length > MAX_ECHO ? `${item.slice(0, MAX_ECHO)}\u2026` : item;
      throw new Error(
        `${varName}: entry ${i + 1} ${JSON.stringify(shown)} is invalid (${r}); expected ` +
          `IPv4 or IPv6 addresses or CIDR ranges separated by commas or spaces, ` +
          `e.g. "10.0.0.0/8, 192.168.1.10, fd00::/8"`,
      );
    }
    out.push(r);
  }
  return new CidrList(out);
}

const PRIVATE = new CidrList(
  [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10", // carrier-grade NAT; also what Tailscale hands out
    "169.254.0.0/16", // link-local
    "fc00::/7", // unique local
    "fe80::/10", // link-local
  ].map((s) => parseCidr(s) as Cidr),
);

function isLocalhostName(host: string): boolean {
  const h = host.toLowerCase();
  return h === "localhost" || h === "localhost.";
}

/**
 * True for loopback addresses: `127.0.0.0/8`, `::1` (and `::ffff:127.x.y.z`), and the name
 * `localhost`. Anything unparseable is not loopback.
 */
export function isLoopback(ip: string): boolean {
  if (isLocalhostName(ip)) return true;
  const addr = parseIp(ip);
  if (addr === null) return false;
  return addr.family === 4 ? addr.value >> 24n === 127n : addr.value === 1n;
}

/**
 * True when binding to `host` may expose the relay beyond this machine and its private network:
 * the wildcards `0.0.0.0` and `::`, and any address that is neither loopback nor private
 * (RFC 1918, CGNAT `100.64.0.0/10`, link-local, `fc00::/7`). False for loopback and `localhost`.
 * Other host names are treated as public, because without DNS we cannot know where they point.
 */
export function isPublicBindAddress(host: string): boolean {
  if (isLocalhostName(host)) return false;
  const addr = parseIp(host);
  if (addr === null) return true;
  if (addr.value === 0n) return true; // 0.0.0.0 or ::, every interface
  if (isLoopback(host)) return false;
  return !PRIVATE.containsAddr(addr);
}

/**
 * The real client address for a request, in canonical form.
 *
 * When the direct peer (`remoteAddr`) is in `trusted`, walks `X-Forwarded-For` from right to left,
 * skipping hops that are themselves trusted, and returns the first untrusted one; if every hop is
 * trusted, the leftmost. An entry that does not parse stops the walk and the last valid hop seen is
 * returned (anything left of garbage cannot be attributed to a trusted proxy). Without
 * `X-Forwarded-For` a valid `X-Real-IP` is used, and failing that the peer.
 *
 * Security: when the peer is not trusted (or `trusted` is null) both headers are ignored and the
 * peer is returned, since any client can send them. A `remoteAddr` that is not an IP address (e.g. a
 * Unix socket path) is returned unchanged and is never trusted.
 */
export function clientIpFrom(
  remoteAddr: string,
  headers: Headers,
  trusted: CidrList | null,
): string {
  const peer = parseIp(remoteAddr);
  if (peer === null) return remoteAddr;
  const peerText = formatIp(peer);
  if (trusted === null || !trusted.containsAddr(peer)) return peerText;

  const xff = headers.get("x-forwarded-for");
  if (xff !== null && xff.trim() !== "") {
    const hops = xff.split(",");
    let last = peerText;
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = parseIp((hops[i] ?? "").trim());
      if (hop === null) return last;
      last = formatIp(hop);
      if (!trusted.containsAddr(hop)) return last;
    }
    return last;
  }
  const realIp = headers.get("x-real-ip");
  if (realIp !== null) {
    const addr = parseIp(realIp.trim());
    if (addr !== null) return formatIp(addr);
  }
  return peerText;
}
