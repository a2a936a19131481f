/**
 * A response that streams for minutes must not keep its request alive: the client's `Request`
 * (headers, URL, body source) and A's `Response` object are garbage while the body still flows
 * through the relay's own server. Needs `--v8-flags=--expose-gc` (`deno task test` passes it);
 * on `Deno.serve` the server itself holds both, so the test is for the own server only.
 */

import assert from "node:assert/strict";
import { createApp } from "../lib/relay.ts";
import { parseConfig } from "../lib/config/mod.ts";
import { listen } from "../lib/server/mod.ts";
import { Logger } from "../lib/observe/mod.ts";
import { dec, delay, enc, startUpstream } from "./helpers.ts";

const gc = (globalThis as { gc?: () => void }).gc;

Deno.test({
  name: "a streaming response keeps neither the client's Request nor the Response alive",
  ignore: gc === undefined || Deno.env.get("PF_TEST_HTTP_SERVER") === "deno",
  async fn() {
    let finish: () => void = () => {};
    const finished = new Promise<void>((r) => (finish = r));
    const up = startUpstream(() =>
      new Response(
        new ReadableStream<Uint8Array>({
          async start(c) {
            c.enqueue(enc.encode('data: {"i":0}\n\n'));
            await finished;
            c.enqueue(enc.encode("data: [DONE]\n\n"));
            c.close();
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      )
    );
    const config = parseConfig({ HOST: "127.0.0.1", PORT: "0", UPSTREAM_SERVER_A: up.url });
    const log = new Logger({ level: "error", sink: () => {} });
    const app = createApp(config, { background: false, log });
    let reqRef: WeakRef<Request> | null = null;
    let resRef: WeakRef<Response> | null = null;
    const listener = listen(config, {
      hostname: "127.0.0.1",
      port: 0,
      handler: async (req, info) => {
        reqRef = new WeakRef(req);
        const res = await app.fetch(req, info);
        resRef = new WeakRef(res);
        return res;
      },
      log,
      maxConnections: app.maxConnections,
      onDrop: (reason) => app.clientDropped(reason),
    });
    app.attachServer(listener);
    try {
      const res = await fetch(`http://127.0.0.1:${listener.addr.port}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-long-header": "x".repeat(2000) },
        body: JSON.stringify({ model: "m", stream: true }),
      });
      const reader = res.body!.getReader();
      const first = await reader.read();
      assert.match(dec.decode(first.value), /"i":0/);
      // The stream is open: nothing of the request should be reachable any more.
      for (
        let i = 0;
        i < 5 && (reqRef!.deref() !== undefined || resRef!.deref() !== undefined);
        i++
      ) {
        await delay(20);
        gc!();
      }
      assert.equal(
        reqRef!.deref(),
        undefined,
        "the client's Request is kept while the body streams",
      );
      assert.equal(resRef!.deref(), undefined, "the Response is kept while its body streams");
      finish();
      let rest = "";
      while (true) {
        const { value, done } = await reader.read();
        if (done) break;
        rest += dec.decode(value, { stream: true });
      }
      assert.match(rest, /\[DONE\]/);
    } finally {
      finish();
      await listener.shutdown();
      app.close();
      await up.close();
    }
  },
});
