/**
 * Integration: no request target can make the relay talk to another host or leave the prefix.
 * A second listener stands in for "another host" and must see nothing.
 */

import assert from "node:assert/strict";
import {
  deadline,
  rawRequest,
  readRequestHead,
  startRawUpstream,
  startRelay,
  writeAll,
} from "./helpers.ts";

const HOSTILE = [
  "//127.0.0.1:EVIL/v1/models",
  "/v1/../admin",
  "/v1/%2e%2e/admin",
  "/v1/%2E%2E/%2e%2e/api/users",
  "/v1/..%2f..%2fapi",
  "/v1/.%2e/x",
  "/v1/%2e/x",
  "/v1/a\\..\\..\\api",
  "/v1/%5c..%5capi",
  "/v1/x%00y",
  "/v1beta/../../etc/passwd",
  "/u1/../v1/x",
  "/v1/%zz",
];

deadline.test("hostile request targets never reach another host nor escape the prefix", async () => {
  const evil = startRawUpstream(async () => {});
  const aTargets: string[] = [];
  const a = startRawUpstream(async (conn) => {
    while (true) {
      const req = await readRequestHead(conn);
      if (req === null) return;
      aTargets.push(req.head.split("\r\n")[0]!.split(" ")[1]!);
      await writeAll(conn, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: `${a.url}/prefix` });
  try {
    for (const raw of HOSTILE) {
      const target = raw.replace("EVIL", String(evil.port));
      const res = await rawRequest(
        relay.port,
        `GET ${target} HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n`,
      );
      assert.ok(res.status === 400 || res.status === 404, `${target} → ${res.status}`);
    }
    // Absolute-form and a Host header naming the other listener: the authority is ignored.
    for (const target of [`http://127.0.0.1:${evil.port}/v1/models`, "/v1/models"]) {
      const res = await rawRequest(
        relay.port,
        `GET ${target} HTTP/1.1\r\nhost: 127.0.0.1:${evil.port}\r\nconnection: close\r\n\r\n`,
      );
      assert.equal(res.status, 200);
    }
    assert.equal(evil.connections, 0, "the other host received a connection");
    assert.deepEqual(aTargets, ["/prefix/v1/models", "/prefix/v1/models"]);
  } finally {
    await relay.close();
    a.close();
    evil.close();
  }
});
