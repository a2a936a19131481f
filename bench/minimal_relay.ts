/**
 * Calibration row, not a product: the smallest useful Deno relay (`Deno.serve` + `fetch`, request
 * headers and body passed as they are, no rules, no observers). It shows what Deno's own HTTP
 * stack costs on this machine, so the relay's numbers can be read against the runtime's floor.
 *
 *   UPSTREAM=http://127.0.0.1:9000 PORT=8001 deno run -A bench/minimal_relay.ts
 */

const upstream = Deno.env.get("UPSTREAM") ?? "http://127.0.0.1:9000";
const port = Number(Deno.env.get("PORT") ?? "8001");

Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, (req) => {
  const url = new URL(req.url);
  return fetch(upstream + url.pathname + url.search, {
    method: req.method,
    headers: req.headers,
    body: req.body,
  });
});
