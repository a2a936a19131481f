/**
 * Property tests (fast-check) over hostile input: request targets and header
 * names/values sent on the wire to a running relay, and IP/CIDR text. No generated input reaches a
 * second listener, escapes the upstream prefix, spoofs the client address or crashes the relay.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  CidrList,
  clientIpFrom,
  formatIp,
  parseCidr,
  parseCidrList,
  parseIp,
} from "../lib/config/ip.ts";
import {
  deadline,
  dec,
  rawRequest,
  readRequestHead,
  startRawUpstream,
  startRelay,
  startUpstream,
  writeAll,
} from "./helpers.ts";

const RUNS = 250;

function decodesToDotSegment(path: string): boolean {
  return path.split("/").some((seg) => {
    let d = seg;
    try {
      d = decodeURIComponent(seg);
    } catch { /* undecodable: compare as written */ }
    return d.split(/[\/\\]/).some((p) => p === "." || p === "..");
  });
}

deadline.test("no generated request target reaches another listener or leaves the upstream prefix", async () => {
  const evil = startRawUpstream(async () => {});
  const targets: string[] = [];
  const a = startRawUpstream(async (conn) => {
    while (true) {
      const req = await readRequestHead(conn);
      if (req === null) return;
      targets.push(req.head.split("\r\n")[0]!.split(" ")[1]!);
      await writeAll(conn, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }
  });
  const relay = startRelay({
    UPSTREAM_SERVER_A: `${a.url}/prefix`,
    ROUTES: JSON.stringify({ "1": {} }),
  });
  const evilHost = `127.0.0.1:${evil.port}`;
  const piece = fc.constantFrom(
    "/",
    "//",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2e%2e",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "%00",
    "%",
    "%zz",
    "v1",
    "v1beta",
    "u1",
    "u2",
    "api",
    "?",
    "#",
    "@",
    ":",
    ";",
    "~",
    "&key=",
    evilHost,
    `http://${evilHost}`,
    "%40",
    "%3a",
    "a",
  );
  const target = fc.tuple(
    fc.constantFrom("/", "/v1/", "/u1/v1/", "/v1beta/", `http://${evilHost}/`, "//", "*", ""),
    fc.array(piece, { maxLength: 10 }),
  ).map(([start, rest]) => start + rest.join(""));
  try {
    // Every check is inside the property, so that fast-check shrinks a failing target and
    // reports it.
    await fc.assert(
      fc.asyncProperty(target, async (t) => {
        const before = targets.length;
        const res = await rawRequest(
          relay.port,
          `GET ${t} HTTP/1.1\r\nhost: ${evilHost}\r\nconnection: close\r\n\r\n`,
        );
        // A status, or a closed connection for what the HTTP parser rejects outright.
        assert.ok(Number.isNaN(res.status) || (res.status >= 200 && res.status < 500), `${t}`);
        assert.equal(evil.connections, 0, "a request reached the other listener");
        // A has recorded what it got before its answer reached the client.
        for (const got of targets.slice(before)) {
          assert.ok(got.startsWith("/prefix/v1"), got);
          const path = got.split("?")[0]!;
          assert.ok(!decodesToDotSegment(path), got);
          assert.ok(!path.includes("\\") && !path.toLowerCase().includes("%5c"), got);
        }
      }),
      { numRuns: RUNS },
    );
    assert.ok(targets.length > 0, "nothing was forwarded at all: the generator is broken");
    const ok = await rawRequest(
      relay.port,
      "GET /v1/models HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
    );
    assert.equal(ok.status, 200);
  } finally {
    await relay.close();
    a.close();
    evil.close();
  }
});

deadline.test("a GET that announces a body it never sends gets 400 body_not_allowed", async () => {
  const a = startUpstream(() => new Response("ok"));
  const relay = startRelay({ UPSTREAM_SERVER_A: a.url });
  try {
    for (const framing of ["content-length: 1", "transfer-encoding: chunked"]) {
      const res = await rawRequest(
        relay.port,
        `GET /v1/models HTTP/1.1\r\nhost: b\r\n${framing}\r\nconnection: close\r\n\r\n`,
        { closeAfterAnswerMs: 1_000 },
      );
      assert.equal(res.status, 400, framing);
      assert.match(dec.decode(res.body), /body_not_allowed/, framing);
      // The own server closes at once; Deno.serve waits for the announced body (known, TLS path).
      if (Deno.env.get("PF_TEST_HTTP_SERVER") !== "deno") assert.equal(res.closedByClient, false);
    }
    assert.equal(a.seen.length, 0, "A saw a request the relay refused");
  } finally {
    await relay.close();
    await a.close();
  }
});

deadline.test("no generated header name or value spoofs the client address, smuggles a request or crashes the relay", async () => {
  const evil = startRawUpstream(async () => {});
  const a = startUpstream(() => new Response("ok"));
  const relay = startRelay({ UPSTREAM_SERVER_A: a.url });
  const nameChar = fc.constantFrom(..."abcxyz-_!#$%&'*+.^`|~019ABZ".split(""));
  const name = fc.oneof(
    fc.string({ unit: nameChar, minLength: 1, maxLength: 12 }),
    fc.constantFrom(
      "x-forwarded-for",
      "x-real-ip",
      "forwarded",
      "host",
      "connection",
      "keep-alive",
      "transfer-encoding",
      "content-length",
      "upgrade",
      "te",
      "proxy-authorization",
      "X-Forwarded-For",
      "x forwarded",
      "x-a:b",
      "",
    ),
  );
  const valueChar = fc.constantFrom(
    ..."abc 019.:,;=/\t\"'<>%".split(""),
    "\r\n",
    "\n",
    "\r",
    "\0",
    "\x7f",
    "\xe9",
    "\xff",
    `\r\n\r\nGET http://127.0.0.1:${evil.port}/ HTTP/1.1\r\nhost: x\r\n\r\n`,
    "203.0.113.7",
    "::1",
    "close",
    "chunked",
    "x-real-ip",
  );
  const value = fc.string({ unit: valueChar, maxLength: 16 });
  const latin1 = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);
  try {
    // Every check is inside the property, so that fast-check shrinks a failing header list and
    // reports it.
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(name, value), { maxLength: 6 }), async (headers) => {
        const before = a.seen.length;
        const lines = headers.map(([n, v]) => `${n}: ${v}\r\n`).join("");
        // A GET that announces a body it never sends gets its 400, but `Deno.serve` then keeps the
        // connection open for that body despite `connection: close` (it has no body timeout): the
        // client gives up on the close a second after the answer, not on the answer.
        const res = await rawRequest(
          relay.port,
          latin1(`GET /v1/models HTTP/1.1\r\nhost: b\r\n${lines}connection: close\r\n\r\n`),
          { closeAfterAnswerMs: 1_000 },
        );
        assert.ok(Number.isNaN(res.status) || res.status < 500, `status ${res.status}`);
        assert.ok(!res.closedByClient || res.status < 500, "no answer and the connection held");
        assert.equal(evil.connections, 0, "a smuggled request reached the other listener");
        // A has recorded what it got before its answer reached the client.
        for (const s of a.seen.slice(before)) {
          assert.equal(s.headers.get("x-real-ip"), "127.0.0.1");
          assert.equal(s.headers.get("x-forwarded-for"), "127.0.0.1");
          assert.equal(s.headers.get("forwarded"), null);
          assert.equal(new URL(s.url).pathname, "/v1/models");
          for (const hop of ["keep-alive", "te", "upgrade", "proxy-authorization"]) {
            assert.equal(s.headers.get(hop), null, `${hop} was forwarded`);
          }
        }
      }),
      { numRuns: RUNS },
    );
    assert.ok(a.seen.length > 0, "nothing was forwarded at all: the generator is broken");
    const ok = await rawRequest(
      relay.port,
      "GET /v1/models HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
    );
    assert.equal(ok.status, 200);
  } finally {
    await relay.close();
    await a.close();
    evil.close();
  }
});

const ipChar = fc.constantFrom(..."0123456789abcdefABCDEF:.%/[] ,x-".split(""));
const ipish = fc.oneof(
  fc.string({ unit: ipChar, maxLength: 48 }),
  fc.ipV4(),
  fc.ipV6(),
  fc.ipV4Extended(),
  fc.tuple(fc.oneof(fc.ipV4(), fc.ipV6()), fc.integer({ min: -2, max: 140 })).map(([ip, p]) =>
    `${ip}/${p}`
  ),
  fc.string({ maxLength: 64 }),
);

Deno.test("IP and CIDR parsing never throws unexpectedly and round-trips what it accepts", () => {
  fc.assert(
    fc.property(ipish, (s) => {
      const ip = parseIp(s);
      if (ip !== null) {
        const again = parseIp(formatIp(ip));
        assert.deepEqual(again, ip, s);
      }
      const cidr = parseCidr(s);
      if (cidr !== null) {
        assert.ok(cidr.prefix >= 0 && cidr.prefix <= (cidr.family === 4 ? 32 : 128), s);
        assert.ok(new CidrList([cidr]).containsAddr({ family: cidr.family, value: cidr.network }));
      }
      try {
        parseCidrList(s, "ALLOW_IPS");
      } catch (err) {
        assert.ok(err instanceof Error && err.message.startsWith("ALLOW_IPS:"), String(err));
      }
    }),
    { numRuns: 3000 },
  );
});

Deno.test("clientIpFrom believes forwarding headers only from trusted peers, whatever they contain", () => {
  const trustedList = fc.array(fc.oneof(fc.ipV4(), fc.ipV6()).map((ip) => `${ip}/16`), {
    maxLength: 3,
  }).map((l) => new CidrList(l.map((c) => parseCidr(c)).filter((c) => c !== null)));
  fc.assert(
    fc.property(
      fc.oneof(fc.ipV4(), fc.ipV6(), ipish),
      ipish,
      ipish,
      fc.option(trustedList, { nil: null }),
      (peer, xff, realIp, trusted) => {
        const headers = new Headers();
        try {
          headers.set("x-forwarded-for", xff);
          headers.set("x-real-ip", realIp);
        } catch { /* not a valid header value: skip it */ }
        const got = clientIpFrom(peer, headers, trusted);
        const peerAddr = parseIp(peer);
        if (peerAddr === null) {
          assert.equal(got, peer);
          return;
        }
        if (trusted === null || !trusted.containsAddr(peerAddr)) {
          assert.equal(got, formatIp(peerAddr));
          return;
        }
        // From a trusted peer: always a canonical address, never arbitrary header text.
        const addr = parseIp(got);
        assert.ok(addr !== null && formatIp(addr) === got, got);
      },
    ),
    { numRuns: 3000 },
  );
});
