/**
 * On the own server, forwarding a request makes no `Headers` object for the client's Request or
 * for the Response (`handoff.ts`: ~1 µs and ~1 KB per side per request): the pipeline reads the
 * field lines and the server writes them. A `req.headers` or `res.headers` read added to the
 * forwarding path fails here. `Deno.serve` reads a Response's own header list, so there the
 * Response is filled as before and this test does not apply.
 */

import assert from "node:assert/strict";
import { createApp } from "../lib/relay.ts";
import { parseConfig } from "../lib/config/mod.ts";
import { listen } from "../lib/server/mod.ts";
import { Logger } from "../lib/observe/mod.ts";
import { deadline, enc, sseResponse, startUpstream } from "./helpers.ts";

/** Whether `obj.headers` is still the stand-in accessor (never read). */
function unread(obj: Request | Response): boolean {
  return typeof Object.getOwnPropertyDescriptor(obj, "headers")?.get === "function";
}

deadline.test({
  name: "forwarding makes no Headers for the client's Request or the Response (own server)",
  ignore: Deno.env.get("PF_TEST_HTTP_SERVER") === "deno",
}, async (signal) => {
  const up = startUpstream(async (req) => {
    const body = await req.text();
    if (req.url.endsWith("/stream")) return sseResponse({ gapMs: 1, count: 3 });
    return new Response(JSON.stringify({ got: body.length, usage: { total_tokens: 3 } }), {
      headers: { "content-type": "application/json", "x-request-id": "a-1" },
    });
  });
  const config = parseConfig({ HOST: "127.0.0.1", PORT: "0", UPSTREAM_SERVER_A: up.url });
  const log = new Logger({ level: "error", sink: () => {} });
  const app = createApp(config, { background: false, log });
  const seen: Array<{ req: Request; res: Response }> = [];
  const listener = listen(config, {
    hostname: "127.0.0.1",
    port: 0,
    handler: async (req, info) => {
      const res = await app.fetch(req, info);
      seen.push({ req, res });
      return res;
    },
    log,
    maxConnections: app.maxConnections,
    onDrop: (reason) => app.clientDropped(reason),
  });
  app.attachServer(listener);
  const base = `http://127.0.0.1:${listener.addr.port}`;
  try {
    const asks: Array<[string, RequestInit]> = [
      ["/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Request-Id": "c-1" },
        body: JSON.stringify({ model: "m" }),
      }],
      ["/v1/models", { headers: { "Upgrade": "h2c", "Connection": "upgrade" } }],
      ["/v1/stream", { method: "POST", body: '{"stream":true}' }],
      // No length: a chunked request body.
      ["/v1/chat/completions", {
        method: "POST",
        body: new ReadableStream({
          start(c) {
            c.enqueue(enc.encode("{}"));
            c.close();
          },
        }),
      }],
    ];
    for (const [path, init] of asks) {
      const res = await fetch(`${base}${path}`, { ...init, signal });
      assert.equal(res.status, 200, path);
      await res.arrayBuffer();
    }
    assert.equal(seen.length, asks.length);
    for (const [i, { req, res }] of seen.entries()) {
      assert.ok(unread(req), `${asks[i]![0]}: the forwarding path read req.headers`);
      assert.ok(unread(res), `${asks[i]![0]}: something read the Response's headers`);
    }
    // Still there for whoever reads them.
    assert.equal(seen[0]!.req.headers.get("x-request-id"), "c-1");
    assert.equal(seen[0]!.res.headers.get("x-request-id"), "a-1");
    assert.equal(seen[0]!.res.headers.get("content-type"), "application/json");
  } finally {
    await listener.shutdown();
    app.close();
    await up.close();
  }
});
