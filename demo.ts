/**
 * `deno task demo`: the relay in front of a built-in mock Server A, both on loopback, so a newcomer
 * can see it work without a Server A. Not for production.
 */

import { createRelay, serveRelay } from "./lib/relay.ts";
import { parseConfig } from "./lib/config/mod.ts";
import { mockHandler } from "./dev/mock_upstream.ts";

const mock = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, mockHandler());
const port = Deno.env.get("PORT") ?? "8000";
const config = parseConfig({
  UPSTREAM_SERVER_A: `http://127.0.0.1:${mock.addr.port}`,
  HOST: "127.0.0.1",
  PORT: port,
  DEBUG_LOG: Deno.env.get("DEBUG_LOG"),
  LOG_FORMAT: "pretty",
});
// LOG_FORMAT=pretty: one readable access-log line per request, so a first look shows what the
// relay saw and measured.
const relay = createRelay(config);
try {
  serve();
} catch (err) {
  if (!(err instanceof Deno.errors.AddrInUse)) throw err;
  // deno-lint-ignore no-console
  console.error(
    `proxy-forwarder demo: port ${config.port} is already in use (another relay or demo?). ` +
      `Stop it, or pick another port: PORT=8001 deno task demo`,
  );
  Deno.exit(2);
}

function serve(): void {
  // The same server main.ts runs (listen.ts): the relay's own HTTP/1.1 server on plain HTTP.
  serveRelay(relay, config, {
    onListen: ({ port }) => {
      const base = `http://127.0.0.1:${port}`;
      // deno-lint-ignore no-console
      console.log(`
proxy-forwarder demo: relay ${base} \u2192 mock Server A http://127.0.0.1:${mock.addr.port}

Try it in another terminal:
  curl ${base}/
  curl ${base}/v1/models
  curl ${base}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model":"mock-gpt","messages":[{"role":"user","content":"hi"}]}'
  curl -N ${base}/v1/messages -H 'content-type: application/json' \\
    -d '{"model":"mock-claude","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}'

With a real Server A: cp .env.example .env, set UPSTREAM_SERVER_A, then deno task start.
Ctrl+C stops the demo.
`);
    },
  });
}
