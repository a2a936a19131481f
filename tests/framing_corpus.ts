/**
 * The HTTP framing corpus: raw request bytes a client may send the relay, and raw response bytes
 * Server A may send back, each with the outcome the relay's framing policy requires. Data only:
 * `framing_corpus_test.ts` runs it against the relay and `bench/framing_compare.ts` against the
 * relay and nginx, with the oracle in `framing_fixture.ts`.
 *
 * Strings are Latin-1: one character is one byte on the wire.
 *
 * The policy, in short: the relay's upstream writer owns framing (a client's Content-Length and
 * Transfer-Encoding are never copied, and no header named in `Connection` can remove them); GET
 * and HEAD with a body are refused with `body_not_allowed`; ambiguous or malformed framing gets a
 * 400; on the response side Transfer-Encoding wins over Content-Length, 1xx answers are skipped,
 * 204/304 carry no body, and a connection to A whose framing went wrong is never reused.
 */

/** A request as its client meant it: what A must run if the proxy forwards it. */
export interface Identity {
  method: string;
  target: string;
  /** The body A must receive (Latin-1), after any chunked framing was removed. */
  body: string;
}

/**
 * What must happen to one request of a vector:
 * - `forward`: A runs it once, as `as`, and the client gets A's answer;
 * - `refuse`: the proxy answers itself with one of `status` (default 400), with the JSON error
 *   `code` when given; A never runs it;
 * - `maybe`: like `forward`, or no answer because the proxy closed the connection before it (after
 *   an earlier refusal, which may close or drain);
 * - `none`: never answered (the connection must be closed before it).
 */
export interface Outcome {
  policy: "forward" | "refuse" | "maybe" | "none";
  /** What the client meant. If A runs it, A must see this (or one of `alt`). */
  as: Identity;
  /** Other readings an ambiguous request allows; running one of them is no desync. */
  alt?: Identity[];
  status?: number[];
  code?: string;
  /** The proxy must close the client connection after this answer. */
  closeAfter?: boolean;
  /**
   * On Deno.serve, closing the connection without an answer also passes: hyper closes it on
   * malformed chunked framing before the handler's response can be written (measured on 2.9.6
   * with a bare `Deno.serve` whose handler returns 400 when reading the body fails).
   */
  denoMayClose?: boolean;
  /** The policy on Deno.serve, where hyper decides before the relay sees the request. */
  onDeno?: Outcome["policy"];
}

/** A request-side vector: bytes one client writes on one connection. */
export interface RequestVector {
  kind: "request";
  name: string;
  /** Bytes written, Latin-1. */
  send: string;
  /** Offsets in `send` where a new write begins (after `pauseMs`). */
  splits?: number[];
  /** Pause between writes, ms (default 5). */
  pauseMs?: number;
  /** One entry per request in `send`, in order. */
  expect: Outcome[];
  /** A victim connection sends `GET /v1/models` this many ms after the first write (default: after the client is done). */
  victimAfterMs?: number;
  /** A answers each request once its head is in, before it has read the body (many servers do). */
  aAnswersEarly?: boolean;
  /**
   * The client's body is malformed or never arrives in full: A may be left with the start of a
   * request that the proxy abandoned (otherwise that means the proxy announced bytes it never sent).
   */
  partialUpstreamOk?: boolean;
}

/** What the client must get for a response-side vector. */
export type ResponseExpect =
  /** Delivered in full: this status and exactly this body; `noLength`: no content-length header. */
  | { status: number; body: string; noLength?: boolean }
  /** The proxy's own 502, or A's head with a body that visibly does not end cleanly. */
  | { broken: true }
  | { oneOf: ResponseExpect[] };

/** A response-side vector: what A writes back for one client request. */
export interface ResponseVector {
  kind: "response";
  name: string;
  /** The client's method (default GET); the target is made from the name. */
  method?: "GET" | "HEAD";
  /** A's answer as segments written `gapMs` apart (default 40); `{seq}` is A's request number. */
  answer: string[];
  gapMs?: number;
  /** A closes the connection after the last segment. */
  aCloses?: boolean;
  /** The proxy must never write to this A connection again, and must close it. */
  noReuse?: boolean;
  expect: ResponseExpect;
}

export type Vector = RequestVector | ResponseVector;

const C = "\r\n";

/** A request's bytes: request line, header lines, blank line, body. */
function msg(line: string, headers: string[], body = ""): string {
  return line + C + headers.map((h) => h + C).join("") + C + body;
}

function id(method: string, target: string, body = ""): Identity {
  return { method, target, body };
}

const fwd = (as: Identity, more: Partial<Outcome> = {}): Outcome => ({
  policy: "forward",
  as,
  ...more,
});
const refuse = (as: Identity, more: Partial<Outcome> = {}): Outcome => ({
  policy: "refuse",
  as,
  ...more,
});
const maybe = (as: Identity): Outcome => ({ policy: "maybe", as });

/** A pipelined request after a refusal: answered correctly, or not at all. */
const NEXT = msg("GET /v1/next HTTP/1.1", ["Host: r"]);
const NEXT_ID = id("GET", "/v1/next");
const CHAT = "/v1/chat/completions";

/** A chunked body of `text` in one chunk. */
function chunk1(text: string): string {
  return `${text.length.toString(16)}${C}${text}${C}0${C}${C}`;
}

/** `send` and `splits` for a request written as these pieces. */
function pieces(...parts: string[]): { send: string; splits: number[] } {
  const splits: number[] = [];
  let at = 0;
  for (const p of parts) {
    if (at > 0) splits.push(at);
    at += p.length;
  }
  return { send: parts.join(""), splits };
}

const SMUGGLED = msg("GET /admin/secret HTTP/1.1", ["Host: up"]);

export const REQUEST_VECTORS: RequestVector[] = [
  // The two desyncs found by hand, with their exact bytes.
  {
    kind: "request",
    name: "desync 1: Connection: content-length strips the framing of a POST",
    send: "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nConnection: content-length\r\n" +
      "Content-Length: 38\r\n\r\nGET /admin/slow HTTP/1.1\r\nHost: up\r\n\r\n",
    expect: [fwd(id("POST", CHAT, "GET /admin/slow HTTP/1.1\r\nHost: up\r\n\r\n"))],
    victimAfterMs: 300,
  },
  {
    kind: "request",
    name: "desync 2: GET with Content-Length: 5 and a body, then a pipelined GET",
    send:
      "GET /v1/models HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\n\r\nhelloGET /v1/next HTTP/1.1\r\nHost: r\r\n\r\n",
    expect: [
      refuse(id("GET", "/v1/models", "hello"), { code: "body_not_allowed" }),
      maybe(NEXT_ID),
    ],
  },
  {
    kind: "request",
    name: "desync 2 on a pooled connection: GET body, then another client's POST (A answers early)",
    send: msg("GET /v1/models HTTP/1.1", ["Host: r", "Content-Length: 5"], "hello"),
    expect: [refuse(id("GET", "/v1/models", "hello"), { code: "body_not_allowed" })],
    aAnswersEarly: true,
  },

  // Framing headers named in Connection.
  ...[
    ["Connection: close, Content-Length", true],
    ["Connection: keep-alive, content-length", false],
    ["Connection: Content-Length", false],
    ["Connection: content-length, host, x-foo", false],
  ].map(([conn, close]): RequestVector => ({
    kind: "request",
    name: `"${conn}" keeps the body framed`,
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", conn as string, "Content-Length: 38"]) +
      SMUGGLED.replace("secret", "slow") + (close ? "" : NEXT),
    expect: close
      ? [fwd(id("POST", CHAT, SMUGGLED.replace("secret", "slow")), { closeAfter: true })]
      : [fwd(id("POST", CHAT, SMUGGLED.replace("secret", "slow"))), fwd(NEXT_ID)],
    victimAfterMs: 300,
  })),
  {
    kind: "request",
    name: "a second Connection line naming content-length keeps the body framed",
    send: msg(`POST ${CHAT} HTTP/1.1`, [
      "Host: r",
      "Connection: keep-alive",
      "Connection: content-length",
      "Content-Length: 38",
    ]) + SMUGGLED.replace("secret", "slow"),
    expect: [fwd(id("POST", CHAT, SMUGGLED.replace("secret", "slow")))],
    victimAfterMs: 300,
  },
  {
    kind: "request",
    name: "Connection: transfer-encoding keeps a chunked body framed",
    send: msg(`POST ${CHAT} HTTP/1.1`, [
      "Host: r",
      "Connection: transfer-encoding",
      "Transfer-Encoding: chunked",
    ], chunk1(SMUGGLED)) + NEXT,
    expect: [fwd(id("POST", CHAT, SMUGGLED)), fwd(NEXT_ID)],
  },
  {
    kind: "request",
    name: "Connection: content-length, transfer-encoding on a chunked PUT",
    send: msg("PUT /v1/files/x HTTP/1.1", [
      "Host: r",
      "Connection: content-length, transfer-encoding",
      "Transfer-Encoding: chunked",
    ], chunk1("abc")),
    expect: [fwd(id("PUT", "/v1/files/x", "abc"))],
  },

  // CL.TE and TE.CL.
  {
    kind: "request",
    name: "CL.TE: Content-Length then Transfer-Encoding is refused",
    send: msg(`POST ${CHAT} HTTP/1.1`, [
      "Host: r",
      "Content-Length: 6",
      "Transfer-Encoding: chunked",
    ], "0\r\n\r\nG"),
    expect: [refuse(id("POST", CHAT, ""), { alt: [id("POST", CHAT, "0\r\n\r\nG")] })],
  },
  {
    kind: "request",
    name: "TE.CL: Transfer-Encoding then Content-Length is refused",
    send: msg(`POST ${CHAT} HTTP/1.1`, [
      "Host: r",
      "Transfer-Encoding: chunked",
      "Content-Length: 4",
    ], chunk1(SMUGGLED)),
    expect: [
      refuse(id("POST", CHAT, SMUGGLED), { alt: [id("POST", CHAT, chunk1(SMUGGLED).slice(0, 4))] }),
    ],
  },
  {
    kind: "request",
    name: "TE.CL with a smuggled request after the length is refused",
    send: msg(`POST ${CHAT} HTTP/1.1`, [
      "Host: r",
      "Content-Length: 3",
      "Transfer-Encoding: chunked",
    ], `8${C}SMUGGLED${C}0${C}${C}`),
    expect: [refuse(id("POST", CHAT, "SMUGGLED"), { alt: [id("POST", CHAT, `8${C}S`)] })],
  },

  // Transfer-Encoding obfuscations.
  ...([
    ["xchunked", "Transfer-Encoding: xchunked", true],
    ["chunked, identity", "Transfer-Encoding: chunked, identity", true],
    [
      "chunked then identity lines",
      "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
      true,
    ],
    ["space before the colon", "Transfer-Encoding : chunked", true],
    ["chunked\\xa0", "Transfer-Encoding: chunked\xa0", false],
    ["chunked\\x0b", "Transfer-Encoding: chunked\x0b", false],
    ["folded onto a second line", "Transfer-Encoding:\r\n chunked", false],
    ["quoted", 'Transfer-Encoding: "chunked"', false],
    ["chunked;q=1", "Transfer-Encoding: chunked;q=1", false],
  ] as const).map(([label, header, withLength]): RequestVector => ({
    kind: "request",
    name: `Transfer-Encoding ${label}${withLength ? " with Content-Length" : ""} is refused`,
    send: msg(
      `POST ${CHAT} HTTP/1.1`,
      ["Host: r", ...(withLength ? ["Content-Length: 10"] : []), header],
      chunk1("hello"),
    ),
    expect: [refuse(id("POST", CHAT, "hello"), {
      alt: withLength ? [id("POST", CHAT, chunk1("hello").slice(0, 10))] : [],
    })],
  })),
  {
    kind: "request",
    name: "Transfer-Encoding with leading space and Content-Length is refused",
    send: msg(`POST ${CHAT} HTTP/1.1`, [
      "Host: r",
      "Content-Length: 4",
      "Transfer-Encoding:  chunked",
    ], chunk1("hello")),
    expect: [refuse(id("POST", CHAT, "hello"), { alt: [id("POST", CHAT, "5\r\nh")] })],
  },
  ...([
    ["tab before chunked", "Transfer-Encoding:\tchunked"],
    ["two spaces and a trailing tab", "Transfer-Encoding:  chunked\t"],
    ["upper case CHUNKED", "Transfer-Encoding: CHUNKED"],
  ] as const).map(([label, header]): RequestVector => ({
    kind: "request",
    name: `Transfer-Encoding with ${label} is plain chunked and forwarded`,
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", header], chunk1("hello")) + NEXT,
    expect: [fwd(id("POST", CHAT, "hello")), fwd(NEXT_ID)],
  })),
  {
    kind: "request",
    name: "Transfer-Encoding on an HTTP/1.0 request is refused",
    send: msg(`POST ${CHAT} HTTP/1.0`, ["Host: r", "Transfer-Encoding: chunked"], chunk1("hello")),
    expect: [refuse(id("POST", CHAT, "hello"), { alt: [id("POST", CHAT, "")] })],
  },

  // Content-Length oddities.
  ...([
    ["+5", "Content-Length: +5"],
    ["-5", "Content-Length: -5"],
    ["0x5", "Content-Length: 0x5"],
    ["5,5", "Content-Length: 5,5"],
    ["5, 5", "Content-Length: 5, 5"],
    ["empty", "Content-Length: "],
    ["5 and 6 on two lines", "Content-Length: 5\r\nContent-Length: 6"],
    ["5\\xa0", "Content-Length: 5\xa0"],
  ] as const).map(([label, header]): RequestVector => ({
    kind: "request",
    name: `Content-Length ${label} is refused`,
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", header], "hello!"),
    expect: [refuse(id("POST", CHAT, "hello"), { alt: [id("POST", CHAT, "hello!")] })],
  })),
  {
    kind: "request",
    name: "Content-Length of 20 digits is refused",
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", "Content-Length: 99999999999999999999"], "hi"),
    expect: [refuse(id("POST", CHAT, "hi"), { status: [400, 413] })],
    partialUpstreamOk: true,
  },
  {
    kind: "request",
    name: "Content-Length above MAX_BODY_MB is refused before the body",
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", "Content-Length: 900000000000"], "hi"),
    expect: [refuse(id("POST", CHAT, "hi"), { status: [400, 413] })],
    partialUpstreamOk: true,
  },
  ...([
    ["05", "Content-Length: 05"],
    ["5 with trailing space", "Content-Length: 5 "],
    ["5 with a tab before it", "Content-Length:\t5"],
    ["5 on two identical lines", "Content-Length: 5\r\nContent-Length: 5"],
  ] as const).map(([label, header]): RequestVector => ({
    kind: "request",
    name: `Content-Length ${label} is forwarded as one length`,
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", header], "hello") + NEXT,
    expect: [fwd(id("POST", CHAT, "hello")), fwd(NEXT_ID)],
  })),

  // Bodies on methods that usually have none.
  {
    kind: "request",
    name: "GET with a chunked body is refused",
    send:
      msg("GET /v1/models HTTP/1.1", ["Host: r", "Transfer-Encoding: chunked"], chunk1("hello")) +
      NEXT,
    expect: [
      refuse(id("GET", "/v1/models", "hello"), { code: "body_not_allowed" }),
      maybe(NEXT_ID),
    ],
  },
  {
    kind: "request",
    name: "HEAD with a body is refused",
    send: msg("HEAD /v1/models HTTP/1.1", ["Host: r", "Content-Length: 5"], "hello") + NEXT,
    // The answer to a HEAD has no body to carry the JSON error code: the status says it.
    expect: [refuse(id("HEAD", "/v1/models", "hello")), maybe(NEXT_ID)],
  },
  {
    kind: "request",
    name: "GET with a body that holds a request is refused",
    send: msg("GET /v1/models HTTP/1.1", ["Host: r", `Content-Length: ${SMUGGLED.length}`]) +
      SMUGGLED,
    expect: [refuse(id("GET", "/v1/models", SMUGGLED), { code: "body_not_allowed" })],
    victimAfterMs: 100,
  },
  {
    kind: "request",
    name: "GET with Content-Length: 0 is forwarded without a body",
    send: msg("GET /v1/models HTTP/1.1", ["Host: r", "Content-Length: 0"]) + NEXT,
    expect: [fwd(id("GET", "/v1/models")), fwd(NEXT_ID)],
  },
  {
    kind: "request",
    name: "DELETE with a body is forwarded with its body",
    send: msg("DELETE /v1/files/f1 HTTP/1.1", ["Host: r", "Content-Length: 7"], '{"a":1}') + NEXT,
    expect: [fwd(id("DELETE", "/v1/files/f1", '{"a":1}')), fwd(NEXT_ID)],
  },
  {
    kind: "request",
    name: "DELETE with a chunked body is forwarded with its body",
    send: msg(
      "DELETE /v1/files/f2 HTTP/1.1",
      ["Host: r", "Transfer-Encoding: chunked"],
      chunk1("xyz"),
    ),
    expect: [fwd(id("DELETE", "/v1/files/f2", "xyz"))],
  },
  {
    kind: "request",
    name: "OPTIONS with a body is forwarded with its body",
    send: msg("OPTIONS /v1/models HTTP/1.1", ["Host: r", "Content-Length: 3"], "abc") + NEXT,
    expect: [fwd(id("OPTIONS", "/v1/models", "abc")), fwd(NEXT_ID)],
  },

  // Pipelining and splits.
  {
    kind: "request",
    name: "three pipelined requests in one write are answered in order",
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", "Content-Length: 2"], "{}") +
      msg("GET /v1/models HTTP/1.1", ["Host: r"]) +
      msg("PATCH /v1/x HTTP/1.1", ["Host: r", "Transfer-Encoding: chunked"], chunk1("p")),
    expect: [
      fwd(id("POST", CHAT, "{}")),
      fwd(id("GET", "/v1/models")),
      fwd(id("PATCH", "/v1/x", "p")),
    ],
  },
  {
    kind: "request",
    name: "a chunked body split inside sizes, data and CRLFs arrives whole",
    ...pieces(
      msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", "Transfer-Encoding: chunked"]).slice(0, 30),
      msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", "Transfer-Encoding: chunked"]).slice(30),
      "3\r",
      "\nab",
      "c\r\n",
      "a",
      "\r\n01234",
      "56789\r\n0\r\n",
      "\r",
      "\n" + NEXT.slice(0, 12),
      NEXT.slice(12),
    ),
    pauseMs: 3,
    expect: [fwd(id("POST", CHAT, "abc0123456789")), fwd(NEXT_ID)],
  },
  {
    kind: "request",
    name: "a request split into one-byte-apart writes at the head's end is parsed once",
    ...pieces(
      msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", "Content-Length: 4"]).slice(0, -3),
      "\n",
      "\r",
      "\n",
      "bo",
      "dy" + NEXT.slice(0, 1),
      NEXT.slice(1),
    ),
    pauseMs: 3,
    expect: [fwd(id("POST", CHAT, "body")), fwd(NEXT_ID)],
  },

  {
    kind: "request",
    name: "a pipelined chunked body whose last CRLF comes in the next write ends cleanly",
    ...pieces(
      msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", "Content-Length: 2"], "{}") +
        msg("PATCH /v1/x HTTP/1.1", ["Host: r", "Transfer-Encoding: chunked"]) +
        `2${C}ab${C}0${C}\r`,
      "\n" + NEXT,
    ),
    pauseMs: 20,
    expect: [fwd(id("POST", CHAT, "{}")), fwd(id("PATCH", "/v1/x", "ab")), fwd(NEXT_ID)],
  },

  {
    kind: "request",
    name: "a pipelined request whose body comes in the next write gets its own body",
    ...pieces(
      msg("POST /v1/p/0 HTTP/1.1", ["Host: r", "Content-Length: 0"]) +
        msg("POST /v1/p/1 HTTP/1.1", ["Host: r", "Content-Length: 5"]),
      "hello",
    ),
    pauseMs: 20,
    expect: [fwd(id("POST", "/v1/p/0")), fwd(id("POST", "/v1/p/1", "hello"))],
  },

  // Expect: 100-continue.
  {
    kind: "request",
    name: "Expect: 100-continue with Content-Length forwards the body sent later",
    ...pieces(
      msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", "Expect: 100-continue", "Content-Length: 5"]),
      "hello",
    ),
    pauseMs: 150,
    expect: [fwd(id("POST", CHAT, "hello"))],
  },
  {
    kind: "request",
    name: "Expect: 100-continue with a chunked body forwards it",
    ...pieces(
      msg(`POST ${CHAT} HTTP/1.1`, [
        "Host: r",
        "Expect: 100-continue",
        "Transfer-Encoding: chunked",
      ]),
      chunk1("hello") + NEXT,
    ),
    pauseMs: 150,
    // hyper closes the connection instead: that refuses it, which is no desync either.
    expect: [
      fwd(id("POST", CHAT, "hello"), { onDeno: "maybe" }),
      fwd(NEXT_ID, { onDeno: "maybe" }),
    ],
  },

  // HTTP/1.0.
  {
    kind: "request",
    name: "HTTP/1.0 POST without keep-alive is answered and closed",
    send: msg(`POST ${CHAT} HTTP/1.0`, ["Host: r", "Content-Length: 2"], "{}") +
      msg("GET /v1/after-close HTTP/1.0", ["Host: r"]),
    expect: [fwd(id("POST", CHAT, "{}"), { closeAfter: true }), {
      policy: "none",
      as: id("GET", "/v1/after-close"),
    }],
  },
  {
    kind: "request",
    name: "HTTP/1.0 with Connection: keep-alive serves two requests",
    send: msg(
      `POST ${CHAT} HTTP/1.0`,
      ["Host: r", "Connection: keep-alive", "Content-Length: 2"],
      "{}",
    ) +
      msg("GET /v1/models HTTP/1.0", ["Host: r", "Connection: keep-alive"]),
    expect: [fwd(id("POST", CHAT, "{}")), fwd(id("GET", "/v1/models"))],
  },
  {
    kind: "request",
    name: "HTTP/1.0 without Host is forwarded",
    send: msg("GET /v1/models HTTP/1.0", []),
    expect: [fwd(id("GET", "/v1/models"), { closeAfter: true })],
  },

  // Host.
  {
    kind: "request",
    name: "HTTP/1.1 without Host is refused",
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Content-Length: 2"], "{}"),
    // hyper accepts it; the relay then sends A its own Host, so there is nothing to confuse.
    expect: [refuse(id("POST", CHAT, "{}"), { onDeno: "forward" })],
  },
  {
    kind: "request",
    name: "two Host lines are refused",
    send: msg("GET /v1/models HTTP/1.1", ["Host: r", "Host: s"]),
    expect: [refuse(id("GET", "/v1/models"))],
  },

  // Chunked framing from the client.
  ...([
    ["a non-hex size", `zz${C}hello${C}0${C}${C}`],
    ["a size of 20 hex digits", `fffffffffffffffffffff${C}hello${C}0${C}${C}`],
    ["a negative size", `-5${C}hello${C}0${C}${C}`],
    ["data longer than its size", `3${C}hello${C}0${C}${C}`],
    ["a 0x size prefix", `0x5${C}hello${C}0${C}${C}`],
  ] as const).map(([label, body]): RequestVector => ({
    kind: "request",
    name: `a chunked body with ${label} is refused`,
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", "Transfer-Encoding: chunked"], body) + NEXT,
    expect: [refuse(id("POST", CHAT, "hello"), { denoMayClose: true }), {
      policy: "none",
      as: NEXT_ID,
    }],
    partialUpstreamOk: true,
  })),
  {
    kind: "request",
    // RFC 9112 §2.2 lets a recipient take a bare LF as a line end (hyper and nginx do). A sees
    // the relay's own chunked framing, so the two cannot read the body differently.
    name: "a chunked body with a bare LF after the size is forwarded re-framed",
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", "Transfer-Encoding: chunked"]) +
      `5\nhello${C}0${C}${C}` + NEXT,
    // hyper closes the connection instead: that refuses it, which is no desync either.
    expect: [
      fwd(id("POST", CHAT, "hello"), { onDeno: "maybe" }),
      fwd(NEXT_ID, { onDeno: "maybe" }),
    ],
  },
  {
    kind: "request",
    name: "chunk extensions are accepted and not forwarded as data",
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", "Transfer-Encoding: chunked"]) +
      `5;name=value${C}hello${C}1;a="q;x"${C}!${C}0;end${C}${C}` + NEXT,
    expect: [fwd(id("POST", CHAT, "hello!")), fwd(NEXT_ID)],
  },
  {
    kind: "request",
    name: "trailers after the last chunk end the body and the next request follows",
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", "Transfer-Encoding: chunked"]) +
      `5${C}hello${C}0${C}X-Trailer: 1${C}X-Other: 2${C}${C}` + NEXT,
    // hyper closes the connection instead: that refuses it, which is no desync either.
    expect: [
      fwd(id("POST", CHAT, "hello"), { onDeno: "maybe" }),
      fwd(NEXT_ID, { onDeno: "maybe" }),
    ],
  },

  // Head bytes that must not pass.
  ...([
    ["an obs-fold line", "X-Note: a\r\n folded"],
    ["a bare CR", "X-Note: a\rb"],
    ["a control character", "X-Note: a\x01b"],
    ["a NUL", "X-Note: a\x00b"],
    ["a space before a colon", "X-Note : b"],
  ] as const).map(([label, header]): RequestVector => ({
    kind: "request",
    name: `a header with ${label} is refused`,
    send: msg(`POST ${CHAT} HTTP/1.1`, ["Host: r", header, "Content-Length: 2"], "{}"),
    expect: [refuse(id("POST", CHAT, "{}"))],
  })),
];

/** A's answer bits. */
const SEQ = "x-a-seq: {seq}";
/** Bytes a broken A sends after a complete answer; no client may ever see them. */
const INJECTED = "HTTP/1.1 200 OK\r\nx-a-seq: injected\r\nContent-Length: 8\r\n\r\ninjected";

function answer(status: string, headers: string[], body = ""): string {
  return `HTTP/1.1 ${status}${C}${[SEQ, ...headers].map((h) => h + C).join("")}${C}${body}`;
}

const HELLO = { status: 200, body: "hello" };

export const RESPONSE_VECTORS: ResponseVector[] = [
  {
    kind: "response",
    name: "Transfer-Encoding wins over a shorter Content-Length",
    answer: [
      answer("200 OK", ["Content-Length: 3", "Transfer-Encoding: chunked"], chunk1("hello")),
    ],
    expect: HELLO,
  },
  {
    kind: "response",
    name: "Transfer-Encoding wins over a longer Content-Length",
    answer: [
      answer("200 OK", ["Transfer-Encoding: chunked", "Content-Length: 50"], chunk1("hello")),
    ],
    expect: HELLO,
  },
  {
    kind: "response",
    name: "Transfer-Encoding wins over Content-Length when the body comes in a later segment",
    answer: [
      answer("200 OK", ["Content-Length: 3", "Transfer-Encoding: chunked"]),
      chunk1("hello"),
    ],
    expect: HELLO,
  },
  {
    kind: "response",
    name: "a chunked body in several segments with Content-Length passes in full",
    answer: [
      answer("200 OK", ["Transfer-Encoding: chunked", "Content-Length: 2"], `2${C}he${C}`),
      `3${C}llo${C}`,
      `0${C}${C}`,
    ],
    expect: HELLO,
  },
  {
    kind: "response",
    name: "two equal Content-Length lines pass as one",
    answer: [answer("200 OK", ["Content-Length: 5", "Content-Length: 5"], "hello")],
    expect: HELLO,
  },
  {
    kind: "response",
    name: "two different Content-Length lines are an upstream error",
    answer: [answer("200 OK", ["Content-Length: 5", "Content-Length: 3"], "hello")],
    noReuse: true,
    expect: { broken: true },
  },
  {
    kind: "response",
    name: "Content-Length 5, 5 is one length or an upstream error",
    answer: [answer("200 OK", ["Content-Length: 5, 5"], "hello")],
    expect: { oneOf: [HELLO, { broken: true }] },
  },
  {
    kind: "response",
    name: "100 Continue in the same segment as the answer is skipped",
    answer: ["HTTP/1.1 100 Continue\r\n\r\n" + answer("200 OK", ["Content-Length: 5"], "hello")],
    expect: HELLO,
  },
  {
    kind: "response",
    name: "100 Continue in an earlier segment is skipped",
    answer: ["HTTP/1.1 100 Continue\r\n\r\n", answer("200 OK", ["Content-Length: 5"], "hello")],
    expect: HELLO,
  },
  {
    kind: "response",
    name: "103 Early Hints then 200 in one segment is skipped",
    answer: [
      "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" +
      answer("200 OK", ["Content-Length: 5"], "hello"),
    ],
    expect: HELLO,
  },
  {
    kind: "response",
    name: "103 Early Hints in an earlier segment is skipped",
    answer: [
      "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
      answer("200 OK", ["Transfer-Encoding: chunked"], chunk1("hello")),
    ],
    expect: HELLO,
  },
  {
    kind: "response",
    name: "100 and 103 before a chunked answer in one segment are skipped",
    answer: [
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" +
      answer("200 OK", ["Transfer-Encoding: chunked"], chunk1("hello")),
    ],
    expect: HELLO,
  },
  {
    kind: "response",
    name: "204 with body bytes delivers no body and drops the connection",
    answer: [answer("204 No Content", [], "hello")],
    noReuse: true,
    expect: { status: 204, body: "", noLength: true },
  },
  {
    kind: "response",
    name: "204 with Content-Length: 5 delivers no length and no body",
    answer: [answer("204 No Content", ["Content-Length: 5"])],
    expect: { status: 204, body: "", noLength: true },
  },
  {
    kind: "response",
    name: "204 with Content-Length and body bytes never passes the bytes on",
    answer: [answer("204 No Content", ["Content-Length: 8"], INJECTED)],
    noReuse: true,
    expect: { status: 204, body: "", noLength: true },
  },
  {
    kind: "response",
    name: "304 with body bytes delivers no body and drops the connection",
    answer: [answer("304 Not Modified", ['ETag: "x"'], "hello")],
    noReuse: true,
    expect: { status: 304, body: "", noLength: true },
  },
  {
    kind: "response",
    name: "304 with a Content-Length delivers no length and no body",
    answer: [answer("304 Not Modified", ["Content-Length: 100"])],
    expect: { status: 304, body: "", noLength: true },
  },
  {
    kind: "response",
    name: "extra bytes after a Content-Length body reach no client",
    answer: [answer("200 OK", ["Content-Length: 5"], "hello" + INJECTED)],
    noReuse: true,
    expect: HELLO,
  },
  {
    kind: "response",
    name: "extra bytes after a chunked body reach no client",
    answer: [answer("200 OK", ["Transfer-Encoding: chunked"], chunk1("hello") + INJECTED)],
    noReuse: true,
    expect: HELLO,
  },
  {
    kind: "response",
    name: "extra bytes after a Content-Length body in the next segment reach no client",
    answer: [answer("200 OK", ["Content-Length: 5"], "hel"), "lo" + INJECTED],
    noReuse: true,
    expect: HELLO,
  },
  {
    kind: "response",
    name: "a close-delimited body passes in full",
    answer: [answer("200 OK", ["Content-Type: text/plain"], "hello")],
    aCloses: true,
    expect: HELLO,
  },
  {
    kind: "response",
    name: "a close-delimited body in three segments passes in full",
    answer: [answer("200 OK", [], "he"), "l", "lo"],
    aCloses: true,
    expect: HELLO,
  },
  {
    kind: "response",
    name: "an HTTP/1.0 answer with keep-alive is never reused",
    answer: [
      "HTTP/1.0 200 OK\r\nx-a-seq: {seq}\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
    ],
    noReuse: true,
    expect: HELLO,
  },
  {
    kind: "response",
    name: "an HTTP/1.0 answer without a length ends at close",
    answer: ["HTTP/1.0 200 OK\r\nx-a-seq: {seq}\r\n\r\nhello"],
    aCloses: true,
    expect: HELLO,
  },
  {
    kind: "response",
    name: "Connection: close from A is never reused even if A keeps the socket",
    answer: [answer("200 OK", ["Connection: close", "Content-Length: 5"], "hello")],
    noReuse: true,
    expect: HELLO,
  },
  {
    kind: "response",
    name: "a bad chunk size from A ends that response with an error",
    answer: [answer("200 OK", ["Transfer-Encoding: chunked"], `zz${C}hello${C}0${C}${C}`)],
    noReuse: true,
    expect: { broken: true },
  },
  {
    kind: "response",
    name: "a bad chunk size in a later segment ends that response with an error",
    answer: [
      answer("200 OK", ["Transfer-Encoding: chunked"], `5${C}hello${C}`),
      `zz${C}${INJECTED}${C}0${C}${C}`,
    ],
    noReuse: true,
    expect: { broken: true },
  },
  {
    kind: "response",
    name: "chunk data longer than its size ends that response with an error",
    answer: [answer("200 OK", ["Transfer-Encoding: chunked"], `3${C}hello${C}0${C}${C}`)],
    noReuse: true,
    expect: { broken: true },
  },
  {
    kind: "response",
    name: "a body cut short of its Content-Length does not end cleanly",
    answer: [answer("200 OK", ["Content-Length: 10"], "hello")],
    aCloses: true,
    expect: { broken: true },
  },
  {
    kind: "response",
    name: "a chunked body without its last chunk does not end cleanly",
    answer: [answer("200 OK", ["Transfer-Encoding: chunked"], `5${C}hello${C}`)],
    aCloses: true,
    expect: { broken: true },
  },
  {
    kind: "response",
    name: "chunk extensions and trailers from A are framed correctly",
    answer: [
      answer("200 OK", ["Transfer-Encoding: chunked"], `5;x=y${C}hello${C}0${C}X-T: 1${C}${C}`),
    ],
    expect: HELLO,
  },
  {
    kind: "response",
    name: "a HEAD answer with Content-Length has no body",
    method: "HEAD",
    answer: [answer("200 OK", ["Content-Length: 5"])],
    expect: { status: 200, body: "" },
  },
  {
    kind: "response",
    name: "body bytes after a HEAD answer reach no client",
    method: "HEAD",
    answer: [answer("200 OK", ["Content-Length: 5"], "hello" + INJECTED)],
    noReuse: true,
    expect: { status: 200, body: "" },
  },
];

export const VECTORS: Vector[] = [...REQUEST_VECTORS, ...RESPONSE_VECTORS];

/** The path a response-side vector's client asks for (A picks its scripted answer by it). */
export function responseTarget(v: ResponseVector): string {
  return `/v1/r/${v.name.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "")}`;
}
