/**
 * HTTPS at the relay: TLS_CERT_FILE/TLS_KEY_FILE make main.ts serve HTTPS, on the relay's own
 * server (HTTP/1.1, Nagle off) or, with HTTP_SERVER=deno, on Deno.serve (HTTP/2 offered by ALPN);
 * unreadable or non-PEM files stop start-up with a clear message.
 */

import assert from "node:assert/strict";
import { ConfigError } from "../lib/config/config.ts";
import { loadTlsFiles } from "../lib/config/tls.ts";
import { findCommand, spawnCaptured, startUpstream, waitFor } from "./helpers.ts";
import { withCert } from "./tls_fixture.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

function spawnMain(env: Record<string, string>) {
  return spawnCaptured(Deno.execPath(), {
    args: ["run", "--unstable-no-legacy-abort", "--allow-net", "--allow-env", "--allow-read", MAIN],
    env: { HOST: "127.0.0.1", PORT: "0", UPSTREAM_KEEPWARM_SEC: "0", ...env },
    clearEnv: true,
  });
}

/** Starts main.ts with TLS; resolves with the process and the port it logged. */
async function startTlsMain(upstream: string, certFile: string, keyFile: string, extra = {}) {
  const r = spawnMain({
    UPSTREAM_SERVER_A: upstream,
    TLS_CERT_FILE: certFile,
    TLS_KEY_FILE: keyFile,
    ...extra,
  });
  await waitFor(() => /"address":"https:\/\/127\.0\.0\.1:\d+"/.test(r.output()), 10_000, "start");
  const port = Number(/"address":"https:\/\/127\.0\.0\.1:(\d+)"/.exec(r.output())![1]);
  return { r, port };
}

async function stop(r: ReturnType<typeof spawnMain>): Promise<void> {
  r.child.kill("SIGTERM");
  await r.child.status;
  await r.outDone;
  await r.errText;
}

/** The protocol the relay picks by ALPN for each offer. */
async function alpnChoices(port: number, cert: string): Promise<string[]> {
  const out: string[] = [];
  for (const offer of [["h2", "http/1.1"], ["http/1.1"]]) {
    const conn = await Deno.connectTls({
      hostname: "127.0.0.1",
      port,
      caCerts: [cert],
      alpnProtocols: offer,
    });
    const { alpnProtocol } = await conn.handshake();
    conn.close();
    out.push(String(alpnProtocol));
  }
  return out;
}

/** Kept-alive POSTs on one HTTP/1.1 connection with Nagle off (as Node's and curl's): ms each. */
async function keptAliveTimes(port: number, cert: string, n: number): Promise<number[]> {
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port });
  tcp.setNoDelay(true);
  const conn = await Deno.startTls(tcp, { hostname: "127.0.0.1", caCerts: [cert] });
  const req = new TextEncoder().encode(
    "POST /v1/messages HTTP/1.1\r\nhost: b\r\ncontent-type: application/json\r\n" +
      "content-length: 2\r\n\r\n{}",
  );
  const buf = new Uint8Array(65536);
  const out: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      await conn.write(req);
      let text = "";
      while (true) {
        const got = await conn.read(buf);
        if (got === null) throw new Error("closed");
        text += new TextDecoder().decode(buf.subarray(0, got));
        const h = text.indexOf("\r\n\r\n");
        const m = h < 0 ? null : /content-length: (\d+)/i.exec(text.slice(0, h));
        if (m !== null && text.length - h - 4 >= Number(m[1])) break;
      }
      out.push(performance.now() - t0);
    }
  } finally {
    conn.close();
  }
  return out;
}

withCert.test("TLS_CERT_FILE/TLS_KEY_FILE serve HTTPS on the relay's own server: HTTP/1.1, streaming, no Nagle delay", async ({ tls }) => {
  const { cert, certFile, keyFile } = tls;
  const up = startUpstream((req) =>
    new URL(req.url).pathname === "/v1/messages" &&
      req.headers.get("accept") === "text/event-stream"
      ? new Response("data: a\n\ndata: b\n\n", { headers: { "content-type": "text/event-stream" } })
      : Response.json({ data: [] })
  );
  const { r, port } = await startTlsMain(up.url, certFile, keyFile);
  const client = Deno.createHttpClient({ caCerts: [cert] });
  try {
    assert.match(r.output(), /"server":"relay"/);
    const home = await fetch(`https://127.0.0.1:${port}/`, { client });
    assert.equal((await home.json()).ok, true);
    const sse = await fetch(`https://127.0.0.1:${port}/v1/messages`, {
      method: "POST",
      headers: { accept: "text/event-stream" },
      body: "{}",
      client,
    });
    assert.equal(await sse.text(), "data: a\n\ndata: b\n\n");
    assert.deepEqual(await alpnChoices(port, cert), ["http/1.1", "http/1.1"]);
    // Deno.serve kept Nagle on: each kept-alive answer waited ~44 ms for the client's ACK.
    const times = (await keptAliveTimes(port, cert, 11)).sort((a, b) => a - b);
    assert.ok(times[5]! < 20, `median kept-alive answer over TLS took ${times[5]} ms`);
    // Plain HTTP to the HTTPS port gets nowhere.
    await assert.rejects(() => fetch(`http://127.0.0.1:${port}/`).then((res) => res.text()));
    assert.doesNotMatch(r.output(), /Nagle/);
  } finally {
    client.close();
    await stop(r);
    await up.close();
  }
});

/**
 * Why the TCP_NODELAY check cannot run here, or null: it borrows another process's sockets, which
 * Linux allows root or CAP_SYS_PTRACE, and runs python3. Under `CI=true` always null (it fails).
 */
function nodelaySkipReason(): string | null {
  if (Deno.env.get("CI") === "true") return null;
  if (Deno.build.os !== "linux") return "Linux only";
  if (findCommand("python3") === null) return "python3 is not installed";
  try {
    if (Deno.uid() === 0) return null;
  } catch { /* not allowed to ask: look at the capabilities */ }
  let capEff = 0n;
  try {
    const m = /CapEff:\s*([0-9a-f]+)/.exec(Deno.readTextFileSync("/proc/self/status"));
    capEff = m ? BigInt(`0x${m[1]}`) : 0n;
  } catch { /* unknown: treated as none */ }
  return (capEff >> 19n) & 1n ? null : "needs root or CAP_SYS_PTRACE";
}

withCert.test(
  "HTTPS on the own server: accepted sockets have Nagle off (TCP_NODELAY), as on plain HTTP",
  async ({ tls }) => {
    // Deno.listenTls leaves it off, and nothing in Deno can set it on such a socket: asked from
    // outside, by borrowing the relay's sockets (tcp_nodelay.py). Timing would show it only
    // sometimes (with Nagle on, 7–9 of 300 events 2 ms apart waited over 10 ms).
    const { cert, certFile, keyFile } = tls;
    const up = startUpstream(() => Response.json({ data: [] }));
    const { r, port } = await startTlsMain(up.url, certFile, keyFile);
    const tcp = await Deno.connect({ hostname: "127.0.0.1", port });
    const conn = await Deno.startTls(tcp, { hostname: "127.0.0.1", caCerts: [cert] });
    try {
      await conn.write(new TextEncoder().encode("GET / HTTP/1.1\r\nhost: b\r\n\r\n"));
      await conn.read(new Uint8Array(4096));
      const out = await new Deno.Command("python3", {
        args: [
          new URL("./tcp_nodelay.py", import.meta.url).pathname,
          String(r.child.pid),
          String(port),
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(out.success, new TextDecoder().decode(out.stderr));
      assert.deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), [1]);
    } finally {
      conn.close();
      await stop(r);
      await up.close();
    }
  },
  nodelaySkipReason(),
);

withCert.test("with HTTP_SERVER=deno, HTTPS is Deno.serve's: HTTP/2 by ALPN, and a warning about Nagle", async ({ tls }) => {
  const { cert, certFile, keyFile } = tls;
  const up = startUpstream(() => Response.json({ data: [] }));
  const { r, port } = await startTlsMain(up.url, certFile, keyFile, { HTTP_SERVER: "deno" });
  const client = Deno.createHttpClient({ caCerts: [cert] });
  try {
    assert.match(r.output(), /"server":"Deno\.serve"/);
    assert.match(r.output(), /Nagle/);
    const res = await fetch(`https://127.0.0.1:${port}/v1/models`, { client });
    assert.deepEqual(await res.json(), { data: [] });
    assert.deepEqual(await alpnChoices(port, cert), ["h2", "http/1.1"]);
  } finally {
    client.close();
    await stop(r);
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
