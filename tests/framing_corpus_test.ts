/**
 * HTTP framing corpus on the wire: every vector of `framing_corpus.ts` goes through the relay's
 * real entry point (`deno run main.ts`), once on its own HTTP/1.1 server and once on Deno.serve,
 * in front of a raw-TCP fake A that logs every byte. Each vector must pass the desync oracle and
 * the relay's framing policy (`framing_fixture.ts`). One relay process per server kind: starting
 * one per vector would cost more than the vectors. Under `deno task test`, each pass runs its own
 * server's half (`serversOfThisPass`).
 */

import { REQUEST_VECTORS, RESPONSE_VECTORS, type Vector } from "./framing_corpus.ts";
import { serversOfThisPass } from "./helpers.ts";
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

/** The two desyncs found by hand run first, under their own names. */
const REGRESSIONS = REQUEST_VECTORS.filter((v) => v.name.startsWith("desync "));

/** Per vector: responses within 4.5 s, closes within 1 s, plus set-up and settling. */
const VECTOR_DEADLINE_MS = 12_000;

async function check(v: Vector, proxy: ProxyUnderTest): Promise<void> {
  const run = await withDeadline(runVector(v, proxy), VECTOR_DEADLINE_MS, v.name);
  const a = proxy.a;
  const problems = [
    ...desyncViolations(run).map((x) => `${x.kind}: ${x.text}`),
    ...policyViolations(run),
  ];
  await a.dropUnclean();
  if (problems.length > 0) {
    throw new Error(`${v.name}:\n- ${problems.join("\n- ")}\n--- trace ---\n${trace(run)}`);
  }
}

for (const kind of serversOfThisPass() satisfies readonly ServerKind[]) {
  const label = kind === "relay" ? "own server" : "Deno.serve";
  Deno.test({
    name: `framing corpus (${label}): A runs exactly the requests the relay answers, as sent`,
    // Relay start-up plus ~90 vectors; failing vectors wait for the relay's 3 s upstream timeout.
    sanitizeOps: true,
    sanitizeResources: true,
    async fn(t) {
      const a = new FakeA();
      let relay;
      try {
        relay = await spawnRelay(kind, a.url);
        // The relay's start-up health probe may still be on its way: let it land first.
        const until = Date.now() + 3000;
        while (a.requests.length === 0 && Date.now() < until) {
          await new Promise((r) => setTimeout(r, 20));
        }
        const proxy = { port: relay.port, a, server: kind };
        for (const v of REGRESSIONS) {
          await t.step(`regression: ${v.name}`, () => check(v, proxy));
        }
        for (const v of [...REQUEST_VECTORS, ...RESPONSE_VECTORS]) {
          if (REGRESSIONS.includes(v as (typeof REGRESSIONS)[number])) continue;
          await t.step(`${v.kind}: ${v.name}`, () => check(v, proxy));
        }
      } finally {
        await relay?.stop();
        await a.close();
      }
    },
  });
}
