/**
 * HTTPS at the relay: TLS_CERT_FILE/TLS_KEY_FILE make main.ts serve HTTPS with HTTP/2
 * offered by ALPN; unreadable or non-PEM files stop start-up with a clear message.
 */

import assert from "node:assert/strict";
import { ConfigError } from "../lib/config/config.ts";
import { loadTlsFiles } from "../lib/config/tls.ts";
import { spawnCaptured, startUpstream, waitFor } from "./helpers.ts";
import { withCert } from "./tls_fixture.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

function spawnMain(env: Record<string, string>) {
  return spawnCaptured(Deno.execPath(), {
    args: ["run", "--unstable-no-legacy-abort", "--allow-net", "--allow-env", "--allow-read", MAIN],
    env: { HOST: "127.0.0.1", PORT: "0", UPSTREAM_KEEPWARM_SEC: "0", ...env },
    clearEnv: true,
  });
}

withCert.test("TLS_CERT_FILE/TLS_KEY_FILE serve HTTPS with HTTP/2 by ALPN, streaming included", async ({ tls }) => {
  const { cert, certFile, keyFile } = tls;
  const up = startUpstream((req) =>
    new URL(req.url).pathname === "/v1/messages"
      ? new Response("data: a\n\ndata: b\n\n", { headers: { "content-type": "text/event-stream" } })
      : Response.json({ data: [] })
  );
  const r = spawnMain({
    UPSTREAM_SERVER_A: up.url,
    TLS_CERT_FILE: certFile,
    TLS_KEY_FILE: keyFile,
  });
  const client = Deno.createHttpClient({ caCerts: [cert] });
  try {
    await waitFor(() => /"address":"https:\/\/127\.0\.0\.1:\d+"/.test(r.output()), 10_000, "start");
    const port = Number(/"address":"https:\/\/127\.0\.0\.1:(\d+)"/.exec(r.output())![1]);
    const home = await fetch(`https://127.0.0.1:${port}/`, { client });
    assert.equal((await home.json()).ok, true);
    const sse = await fetch(`https://127.0.0.1:${port}/v1/messages`, {
      method: "POST",
      body: "{}",
      client,
    });
    assert.equal(await sse.text(), "data: a\n\ndata: b\n\n");

    for (const [offer, expected] of [[["h2", "http/1.1"], "h2"], [["http/1.1"], "http/1.1"]]) {
      const conn = await Deno.connectTls({
        hostname: "127.0.0.1",
        port,
        caCerts: [cert],
        alpnProtocols: offer as string[],
      });
      const { alpnProtocol } = await conn.handshake();
      conn.close();
      assert.equal(alpnProtocol, expected);
    }
    // Plain HTTP to the HTTPS port gets nowhere.
    await assert.rejects(() => fetch(`http://127.0.0.1:${port}/`).then((res) => res.text()));
  } finally {
    client.close();
    r.child.kill("SIGTERM");
    await r.child.status;
    await r.outDone;
    await r.errText;
    await up.close();
  }
});

withCert.test("a missing or non-PEM TLS file stops start-up with the variable and the fix", async ({ tls }) => {
  const { certFile, keyFile } = tls;
  const r = spawnMain({
    UPSTREAM_SERVER_A: "http://127.0.0.1:9",
    TLS_CERT_FILE: `${certFile}.missing`,
    TLS_KEY_FILE: keyFile,
  });
  const status = await r.child.status;
  await r.outDone;
  const stderr = await r.errText;
  assert.equal(status.code, 2);
  assert.match(stderr, /TLS_CERT_FILE=".*missing" cannot be read \(NotFound\)/);

  const files: Record<string, string> = { c: "-----BEGIN CERTIFICATE-----\n", k: "not a key" };
  assert.throws(
    () => loadTlsFiles({ tlsCertFile: "c", tlsKeyFile: "k" }, (p) => files[p]!),
    (e) => e instanceof ConfigError && /TLS_KEY_FILE="k" is not a PEM private key/.test(e.message),
  );
  assert.equal(
    loadTlsFiles({ tlsCertFile: undefined, tlsKeyFile: undefined }, () => ""),
    undefined,
  );
});
