/**
 * Property (fast-check): on one keep-alive connection, any sequence of 1–6 well-formed requests
 * with random framing (Content-Length, chunked in random pieces with extensions, none), random
 * methods, random extra headers (including `Connection` naming framing and other headers) and a
 * random split of the byte stream into writes reaches A exactly as sent: A runs exactly the
 * requests the relay answered, in order, with the same method, target and body, and a victim on
 * another connection afterwards gets its own answer. Runs through the real entry point on both
 * servers. The check is made inside the property, so a failure shrinks to a small example.
 */

import fc from "fast-check";
import type { Outcome, RequestVector } from "./framing_corpus.ts";
import {
  desyncViolations,
  FakeA,
  policyViolations,
  type ProxyUnderTest,
  runVector,
  type ServerKind,
  spawnRelay,
  trace,
  withDeadline,
} from "./framing_fixture.ts";

const RUNS = 40;
/** Past this, remaining runs pass without sending: only shrinking a failure ever gets here. */
const BUDGET_MS = 22_000;

type Method = "POST" | "PUT" | "PATCH" | "DELETE" | "GET";

interface GenRequest {
  method: Method;
  framing: "length" | "chunked" | "none";
  body: string;
  /** Where the chunked body is cut into chunks (fractions of its length, in thousandths). */
  cuts: number[];
  chunkExt: boolean;
  connection: string[];
  extra: string[];
}

const C = "\r\n";

const bodyArb = fc.array(
  fc.constantFrom("a", "0", " ", "{}", C, "GET /admin/x HTTP/1.1\r\nHost: up\r\n\r\n", "5\r\n"),
  { maxLength: 5 },
).map((parts) => parts.join(""));

const connectionToken = fc.constantFrom(
  "content-length",
  "Content-Length",
  "transfer-encoding",
  "Transfer-Encoding",
  "host",
  "keep-alive",
  "close",
  "x-foo",
);

const requestArb: fc.Arbitrary<GenRequest> = fc.record({
  method: fc.constantFrom<Method>("POST", "PUT", "PATCH", "DELETE", "GET"),
  framing: fc.constantFrom<GenRequest["framing"]>("length", "chunked", "none"),
  body: bodyArb,
  cuts: fc.array(fc.integer({ min: 1, max: 999 }), { maxLength: 3 }),
  chunkExt: fc.boolean(),
  connection: fc.array(connectionToken, { maxLength: 3 }),
  extra: fc.subarray(["X-Foo: bar", "Keep-Alive: timeout=5", "Accept: */*", "session_id: s1"]),
}).map((r) => (r.method === "GET" ? { ...r, framing: "none" as const, body: "" } : r))
  .map((r) => (r.framing === "none" ? { ...r, body: "" } : r));

function chunked(body: string, cuts: number[], ext: boolean): string {
  const at = [...new Set(cuts.map((c) => Math.floor((c / 1000) * body.length)))]
    .filter((p) => p > 0 && p < body.length)
    .sort((x, y) => x - y);
  const pieces: string[] = [];
  let from = 0;
  for (const p of [...at, body.length]) {
    if (p > from) pieces.push(body.slice(from, p));
    from = p;
  }
  return pieces.map((p) => `${p.length.toString(16)}${ext ? ";x=1" : ""}${C}${p}${C}`).join("") +
    `0${C}${C}`;
}

/** The bytes of one generated request and what the relay must do with it. */
function encode(
  r: GenRequest,
  index: number,
): { bytes: string; outcome: Outcome; closes: boolean } {
  const target = `/v1/p/${index}`;
  const headers = ["Host: r", ...r.extra];
  if (r.connection.length > 0) headers.push(`Connection: ${r.connection.join(", ")}`);
  let body = "";
  if (r.framing === "length") {
    headers.push(`Content-Length: ${r.body.length}`);
    body = r.body;
  } else if (r.framing === "chunked") {
    headers.push("Transfer-Encoding: chunked");
    body = chunked(r.body, r.cuts, r.chunkExt);
  }
  const bytes = `${r.method} ${target} HTTP/1.1${C}${
    headers.map((h) => h + C).join("")
  }${C}${body}`;
  const closes = r.connection.some((t) => t.toLowerCase() === "close");
  return {
    bytes,
    outcome: {
      policy: "forward",
      as: { method: r.method, target, body: r.body },
      ...(closes ? { closeAfter: true } : {}),
    },
    closes,
  };
}

function vectorOf(reqs: GenRequest[], splits: number[]): RequestVector {
  let send = "";
  const expect: Outcome[] = [];
  let closed = false;
  reqs.forEach((r, i) => {
    const e = encode(r, i);
    send += e.bytes;
    // After a `Connection: close` request nothing more on this connection is answered.
    expect.push(closed ? { policy: "none", as: e.outcome.as } : e.outcome);
    closed ||= e.closes;
  });
  const at = [...new Set(splits.map((f) => Math.floor((f / 1000) * send.length)))]
    .filter((p) => p > 0 && p < send.length)
    .sort((x, y) => x - y);
  return { kind: "request", name: "generated", send, splits: at, pauseMs: 2, expect };
}

for (const kind of ["relay", "deno"] as const satisfies readonly ServerKind[]) {
  const label = kind === "relay" ? "own server" : "Deno.serve";
  Deno.test(`framing property (${label}): A runs exactly the pipelined requests the relay answers`, async () => {
    const a = new FakeA();
    let relay;
    try {
      relay = await spawnRelay(kind, a.url);
      const proxy: ProxyUnderTest = { port: relay.port, a, server: kind };
      const stopAt = Date.now() + BUDGET_MS;
      let sent = 0;
      let failed = false;
      await fc.assert(
        fc.asyncProperty(
          fc.array(requestArb, { minLength: 1, maxLength: 6 }),
          fc.array(fc.integer({ min: 1, max: 999 }), { maxLength: 5 }),
          async (reqs, splits) => {
            if (Date.now() > stopAt) return;
            sent++;
            const v = vectorOf(reqs, splits);
            const run = await withDeadline(runVector(v, proxy), 15_000, "property run");
            await a.dropUnclean();
            const problems = [
              ...desyncViolations(run).map((x) => `${x.kind}: ${x.text}`),
              ...policyViolations(run),
            ];
            if (problems.length > 0) {
              failed = true;
              throw new Error(
                `${problems.join("\n")}\n--- sent ---\n${JSON.stringify(v.send)} split at ` +
                  `${JSON.stringify(v.splits)}\n--- trace ---\n${trace(run)}`,
              );
            }
          },
        ),
        { numRuns: RUNS },
      );
      if (!failed && sent < RUNS) {
        throw new Error(
          `only ${sent} of ${RUNS} runs fit in ${BUDGET_MS} ms: the machine is too slow`,
        );
      }
    } finally {
      await relay?.stop();
      await a.close();
    }
  });
}
