/**
 * Integration: a request body over 256 KiB of announced length streams to A through buffers from
 * the own server's pool (lib/server/body_pool.ts). They go back once the body was sent in full and
 * A answered, and never earlier: the upstream client keeps the chunks to send them again when A
 * closed a reused connection without answering (RETRY_BODY_MAX_MB).
 */

import assert from "node:assert/strict";
import { createApp } from "../lib/relay.ts";
import { parseConfig } from "../lib/config/mod.ts";
import { Logger } from "../lib/observe/mod.ts";
import { serveHttp1 } from "../lib/server/server.ts";
import type { BodyPool } from "../lib/server/body_pool.ts";
import {
  deadline,
  delay,
  readRequest,
  sha256,
  startRawUpstream,
  startRelay,
  startUpstream,
  waitFor,
  writeAll,
} from "./helpers.ts";

const OWN_SERVER_ONLY = Deno.env.get("PF_TEST_HTTP_SERVER") === "deno";

/** A body of `size` bytes in a pattern of its own (`seed`). */
function payload(size: number, seed: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(size).map((_, j) => (j * 31 + seed * 17 + (j >> 12)) & 0xff);
}

const OK = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

deadline.test({
  name: "a streamed body's buffers go back to the pool once A answered it, and are used again",
  ignore: OWN_SERVER_ONLY,
}, async () => {
  const up = startUpstream(async (req) => new Response(String((await req.bytes()).byteLength)));
  const config = parseConfig({ HOST: "127.0.0.1", PORT: "0", UPSTREAM_SERVER_A: up.url });
  const app = createApp(config, {
    background: false,
    log: new Logger({ level: "error", sink: () => {} }),
  });
  const server = serveHttp1(
    { hostname: "127.0.0.1", port: 0 },
    (req, info) => app.fetch(req, info),
  );
  const pool = (server as unknown as { bodies: BodyPool }).bodies;
  const url = `http://127.0.0.1:${server.addr.port}/v1/files`;
  try {
    // 1,200,000 bytes: buffers of 64, 128, 256 and 512 KiB, and 256 KiB for the last 240,000.
    const body = payload(1_200_000, 1);
    const res = await fetch(url, { method: "POST", body });
    assert.equal(await res.text(), "1200000");
    // Given back when the upstream client has seen both the write's end and A's answer, which
    // may be a turn after the client has the response.
    await waitFor(() => pool.kept === 5, 3000, () => `every buffer back (kept ${pool.kept})`);
    // The next body takes them again: the pool holds no more than before.
    const again = await fetch(url, { method: "POST", body: payload(1_200_000, 2) });
    assert.equal(await again.text(), "1200000");
    await waitFor(() => pool.kept >= 5, 3000, () => `back again (kept ${pool.kept})`);
    await delay(50); // room for a wrong second give-back to show
    assert.equal(pool.kept, 5, "the second body reused the first one's buffers");
  } finally {
    await server.shutdown();
    app.close();
    await up.close();
  }
});

deadline.test("a body resent after A closed a reused connection is the one the client sent, though another body came meanwhile", async () => {
  // X goes out on a reused connection; A reads all of it and, before answering, waits until Y (as
  // large) was read by the relay in full. Then A closes X's connection, and the relay sends X again
  // on a new one from its kept chunks. Buffers of X given back before A answered would now hold
  // Y's bytes.
  const x = payload(1_200_000, 3), y = payload(1_200_000, 4);
  const want = { x: await sha256(x), y: await sha256(y) };
  const seen: string[] = [];
  const xSent = Promise.withResolvers<void>(), yRead = Promise.withResolvers<void>();
  let xTries = 0;
  const up = startRawUpstream(async (conn) => {
    while (true) {
      const req = await readRequest(conn);
      if (req === null) return;
      const tag = /x-tag: (\w)/i.exec(req.head)?.[1] as "x" | "y" | undefined;
      if (tag === undefined) {
        await writeAll(conn, OK); // the warm-up request
        continue;
      }
      const same = (await sha256(req.body)) === want[tag];
      seen.push(`${tag}: ${same ? "as sent" : "CHANGED"}`);
      if (tag === "x" && xTries++ === 0) {
        xSent.resolve();
        await yRead.promise;
        return; // closed without an answer
      }
      if (tag === "y") yRead.resolve();
      await writeAll(conn, OK);
    }
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    assert.equal(await (await fetch(`${relay.url}/v1/models`)).text(), "ok");
    const xRes = fetch(`${relay.url}/v1/files`, {
      method: "POST",
      body: x,
      headers: { "x-tag": "x" },
    });
    await xSent.promise;
    const yRes = await fetch(`${relay.url}/v1/files`, {
      method: "POST",
      body: y,
      headers: { "x-tag": "y" },
    });
    assert.equal(await yRes.text(), "ok");
    const xAnswer = await xRes;
    assert.equal(await xAnswer.text(), "ok");
    assert.equal(xTries, 2, "X was sent again");
    assert.deepEqual(seen, ["x: as sent", "y: as sent", "x: as sent"]);
  } finally {
    await relay.close();
    up.close();
  }
});
