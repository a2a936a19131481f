/**
 * What writing one request head to A costs, in this process (no sockets): the head of a typical
 * SDK request with a 70-byte JSON body, built the way the upstream client did before 4cf57ec (a
 * fresh buffer for the head, joined with the body in a second one) and the way it does now
 * (sized and checked first, then written with the body into a region of a shared write slab).
 * Alternating rounds; µs per head.
 *
 *   deno run -A bench/head_write.ts [--n=200000] [--rounds=4]
 */
import { numFlag, parseFlags } from "./common.ts";
import { concat, WriteSlabs } from "../lib/http/mod.ts";
import {
  BodySource,
  type ExchangeRequest,
  planHead,
  putHead,
  requestHead,
} from "../lib/upstream/http1.ts";

const flags = parseFlags(Deno.args);
const n = numFlag(flags, "n", 200_000), rounds = numFlag(flags, "rounds", 4);
const body = new TextEncoder().encode(
  JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi there" }] }).padEnd(70),
);
const req: ExchangeRequest = {
  method: "POST",
  target: "/v1/chat/completions",
  headers: [
    ["content-type", "application/json"],
    ["authorization", "Bearer sk-0123456789abcdef0123456789abcdef"],
    ["user-agent", "OpenAI/Python 1.40.0"],
    ["accept", "application/json"],
    ["x-stainless-lang", "python"],
    ["x-request-id", "0f8e2c1a-77d3-4c1e-9a51-3d2f4b6c8e90"],
  ],
  body: new BodySource(new ReadableStream({ start: (c) => c.close() }), body.byteLength, 0),
};
const host = "127.0.0.1:9000";
const slabs = new WriteSlabs();
let sink = 0;

const ways: Record<string, () => void> = {
  "fresh buffers (before)": () => {
    const out = concat([requestHead(req, host), body]);
    sink += out[out.byteLength - 1]!;
  },
  "write slab (now)": () => {
    const plan = planHead(req, host);
    const slab = slabs.reserve(plan.size + body.byteLength);
    const off = putHead(slab.view, req, host, plan.framing);
    slab.view.set(body, off);
    sink += slab.view[off]!;
    slabs.release(slab); // the socket write would complete here
  },
};
const results: Record<string, number[]> = {};
for (let r = 0; r <= rounds; r++) {
  for (const [name, fn] of Object.entries(ways)) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) fn();
    const us = (performance.now() - t0) * 1000 / n;
    if (r > 0) (results[name] ??= []).push(us); // round 0 warms the JIT up
  }
}
for (const [name, xs] of Object.entries(results)) {
  xs.sort((a, b) => a - b);
  // deno-lint-ignore no-console
  console.log(
    `${name}: median ${xs[xs.length >> 1]!.toFixed(3)} µs per head (${
      xs.map((x) => x.toFixed(3)).join(", ")
    })`,
  );
}
if (sink === 0.5) throw new Error("unreachable: keeps the results alive");
