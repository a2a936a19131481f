/**
 * Integration: an HTTPS Server A with a self-signed certificate (made here with openssl), streamed
 * and pooled like plain HTTP; gzip still passes through byte for byte.
 */

import assert from "node:assert/strict";
import { rawRequest, startRelay } from "./helpers.ts";
import { withCert } from "./tls_fixture.ts";

withCert.test("an HTTPS upstream is relayed over a pooled TLS connection, SSE and gzip intact", async ({ tls }) => {
  const gz = new Uint8Array(
    await new Response(
      new Blob(["compressed payload ".repeat(50)]).stream().pipeThrough(
        new CompressionStream("gzip"),
      ),
    ).arrayBuffer(),
  );
  let connections = 0;
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: tls.cert,
    key: tls.key,
    onListen() {},
  }, (req, info) => {
    void info;
    const path = new URL(req.url).pathname;
    if (path === "/v1/gz") {
      return new Response(gz, {
        headers: { "content-encoding": "gzip", "content-length": String(gz.length) },
      });
    }
    return new Response("data: one\n\ndata: two\n\n", {
      headers: { "content-type": "text/event-stream" },
    });
  });
  const counting = async (ep: { hostname: string; port: number }) => {
    connections++;
    const tcp = await Deno.connect({ hostname: ep.hostname, port: ep.port });
    tcp.setNoDelay(true);
    const conn = await Deno.startTls(tcp, {
      hostname: ep.hostname,
      caCerts: [tls.cert],
      alpnProtocols: ["http/1.1"],
    });
    await conn.handshake();
    return conn;
  };
  const relay = startRelay({ UPSTREAM_SERVER_A: `https://127.0.0.1:${server.addr.port}` }, {
    connector: counting,
  });
  try {
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
      assert.equal(await res.text(), "data: one\n\ndata: two\n\n");
    }
    assert.equal(connections, 1, "TLS connection was not reused");
    const raw = await rawRequest(
      relay.port,
      "GET /v1/gz HTTP/1.1\r\nhost: b\r\naccept-encoding: gzip\r\nconnection: close\r\n\r\n",
    );
    assert.deepEqual(raw.body, gz);
    assert.equal(raw.headers.get("content-encoding"), "gzip");
  } finally {
    await relay.close();
    await server.shutdown();
  }
});

withCert.test("the default connector verifies the upstream certificate with the given CA", async ({ tls }) => {
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: tls.cert,
    key: tls.key,
    onListen() {},
  }, () => new Response("secure"));
  const trusted = startRelay({ UPSTREAM_SERVER_A: `https://127.0.0.1:${server.addr.port}` }, {
    caCerts: [tls.cert],
  });
  const untrusted = startRelay({ UPSTREAM_SERVER_A: `https://127.0.0.1:${server.addr.port}` });
  try {
    assert.equal(await (await fetch(`${trusted.url}/v1/models`)).text(), "secure");
    const res = await fetch(`${untrusted.url}/v1/models`);
    assert.equal(res.status, 502, "an unknown certificate must not be accepted");
    await res.body?.cancel();
  } finally {
    await trusted.close();
    await untrusted.close();
    await server.shutdown();
  }
});
