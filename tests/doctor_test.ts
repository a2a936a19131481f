/**
 * `deno task doctor`: the checks against fake Server A's on 127.0.0.1, including a dead
 * one, a hanging one, a wrong path prefix and an HTTPS one with a self-signed certificate.
 */

import assert from "node:assert/strict";
import {
  type DoctorReport,
  formatReport,
  parseDoctorArgs,
  runDoctor,
} from "../lib/doctor/doctor.ts";
import { closedPort, deadline, startRawUpstream, startRelay, startUpstream } from "./helpers.ts";
import { withCert } from "./tls_fixture.ts";

const KEY = "sk-doctor-test-key-123";

/** A fake claude-code-hub: /v1/_ping and /v1/models (needs KEY), under an optional prefix. */
function fakeHub(prefix = "") {
  return startUpstream((req) => {
    const path = new URL(req.url).pathname;
    if (path === `${prefix}/v1/_ping`) return Response.json({ status: "pong" });
    if (path === `${prefix}/v1/models`) {
      return req.headers.get("authorization") === `Bearer ${KEY}`
        ? Response.json({ data: [{ id: "m1" }, { id: "m2" }] })
        : Response.json({ error: { type: "authentication_error" } }, { status: 401 });
    }
    return new Response("<html>not here</html>", {
      status: 404,
      headers: { "content-type": "text/html" },
    });
  });
}

function find(report: DoctorReport, name: string, section?: string) {
  const c = report.checks.find((c) =>
    c.name === name && (section === undefined || c.section.includes(section))
  );
  assert.ok(c, `no check ${name} in ${JSON.stringify(report.checks, null, 1)}`);
  return c;
}

const env = (upstream: string, extra: Record<string, string> = {}) => ({
  UPSTREAM_SERVER_A: upstream,
  HOST: "127.0.0.1",
  ...extra,
});

deadline.test("doctor passes every check against a healthy Server A and tries the key on /v1/models", async () => {
  const up = fakeHub();
  try {
    const report = await runDoctor({ env: env(up.url), key: KEY, timeoutMs: 2000 });
    assert.equal(report.ok, true, formatReport(report));
    assert.equal(find(report, "TCP").status, "pass");
    assert.match(find(report, "GET /v1/_ping").detail, /200 pong in [\d.]+ ms/);
    assert.match(find(report, "GET /v1/models").detail, /accepted, 2 model/);
    const text = formatReport(report);
    assert.match(text, /✓ TCP: connected to 127\.0\.0\.1:\d+ in [\d.]+ ms/);
    assert.match(text, /All checks passed/);
    assert.ok(!text.includes(KEY) && !JSON.stringify(report).includes(KEY), "key leaked");
    // The key really went to A.
    assert.ok(up.seen.some((r) => r.headers.get("authorization") === `Bearer ${KEY}`));
  } finally {
    await up.close();
  }
});

deadline.test("doctor explains a refused connection to a dead upstream and fails", async () => {
  const port = closedPort();
  const report = await runDoctor({ env: env(`http://127.0.0.1:${port}`), timeoutMs: 2000 });
  assert.equal(report.ok, false);
  const tcp = find(report, "TCP");
  assert.equal(tcp.status, "fail");
  assert.match(tcp.detail, /connection refused/);
  assert.match(tcp.hint!, /nothing listens on port \d+/);
  assert.ok(!report.checks.some((c) => c.name === "GET /v1/_ping"), "stops after TCP fails");
  assert.match(
    formatReport(report),
    /✗ TCP: .*connection refused\n {6}→ .*Server A is not running/,
  );
});

deadline.test("doctor reports a wrong key with the likely cause", async () => {
  const up = fakeHub();
  try {
    const report = await runDoctor({ env: env(up.url), key: "sk-wrong-key-000", timeoutMs: 2000 });
    assert.equal(report.ok, false);
    const models = find(report, "GET /v1/models");
    assert.match(models.detail, /got 401/);
    assert.match(models.hint!, /rejected the key/);
  } finally {
    await up.close();
  }
});

deadline.test("doctor times out on an upstream that accepts but never answers", async () => {
  const raw = startRawUpstream(async (conn) => {
    // Read and hold: never answer.
    const buf = new Uint8Array(1024);
    while ((await conn.read(buf)) !== null) { /* hold */ }
  });
  try {
    const t0 = Date.now();
    const report = await runDoctor({ env: env(raw.url), timeoutMs: 300 });
    assert.ok(Date.now() - t0 < 3000);
    const ping = find(report, "GET /v1/_ping");
    assert.equal(ping.status, "fail");
    assert.match(ping.detail, /no answer within 0\.3 s/);
    assert.match(ping.hint!, /did not answer/);
  } finally {
    raw.close();
  }
});

deadline.test("doctor finds a wrong path prefix and says which URL works", async () => {
  const up = fakeHub();
  try {
    const report = await runDoctor({ env: env(`${up.url}/api`), timeoutMs: 2000 });
    const ping = find(report, "GET /v1/_ping");
    assert.equal(ping.status, "fail");
    assert.match(ping.detail, /answered 404 with a web page/);
    assert.match(ping.hint!, /remove "\/api"/);
    // A base URL ending in /v1 is flagged before any request.
    const v1 = await runDoctor({ env: env(`${up.url}/v1`), timeoutMs: 2000 });
    assert.equal(find(v1, "upstream path").status, "warn");
    assert.match(find(v1, "GET /v1/_ping").hint!, /\/v1\/v1/);
  } finally {
    await up.close();
  }
});

withCert.test("doctor checks an HTTPS upstream: trusted CA passes with ALPN, untrusted explains DENO_CERT", async ({ tls }) => {
  const { cert, key } = tls;
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert, key, onListen() {} },
    (req) =>
      new URL(req.url).pathname === "/v1/_ping"
        ? Response.json({ status: "pong" })
        : new Response("no", { status: 404 }),
  );
  const url = `https://127.0.0.1:${server.addr.port}`;
  try {
    const ok = await runDoctor({ env: env(url), caCerts: [cert], timeoutMs: 2000 });
    assert.equal(ok.ok, true, formatReport(ok));
    assert.match(find(ok, "TLS").detail, /ALPN h2 \(the relay speaks HTTP\/2 to it\)/);
    const off = await runDoctor({
      env: { ...env(url), UPSTREAM_HTTP2: "off" },
      caCerts: [cert],
      timeoutMs: 2000,
    });
    assert.match(find(off, "TLS").detail, /UPSTREAM_HTTP2=off keeps the relay on HTTP\/1\.1/);
    assert.equal(find(ok, "GET /v1/_ping").status, "pass");

    const bad = await runDoctor({ env: env(url), timeoutMs: 2000 });
    assert.equal(bad.ok, false);
    const tls = find(bad, "TLS");
    assert.equal(tls.status, "fail");
    assert.match(tls.detail, /UnknownIssuer/);
    assert.match(tls.hint!, /DENO_CERT/);
  } finally {
    await server.shutdown();
  }
});

deadline.test("doctor says https:// was used on a plain HTTP port", async () => {
  const up = fakeHub();
  try {
    const report = await runDoctor({ env: env(`https://127.0.0.1:${up.port}`), timeoutMs: 2000 });
    assert.match(find(report, "TLS").hint!, /plain HTTP/);
  } finally {
    await up.close();
  }
});

deadline.test("doctor reports a configuration error and checks nothing else", async () => {
  const report = await runDoctor({ env: { UPSTREAM_SERVER_A: "hub.example.com" } });
  assert.equal(report.ok, false);
  assert.equal(report.checks.length, 1);
  assert.match(report.checks[0]!.detail, /UPSTREAM_SERVER_A="hub\.example\.com" is invalid/);
});

deadline.test("doctor refuses a key file that is not a PEM key as the relay's loader would", async () => {
  const up = fakeHub();
  const CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  let pairChecked = false;
  try {
    const report = await runDoctor(
      {
        env: env(up.url, {
          TLS_CERT_FILE: "/etc/relay/cert.pem",
          TLS_KEY_FILE: "/etc/relay/cert.pem",
        }),
        timeoutMs: 2000,
      },
      { readFile: () => CERT, checkTlsPair: () => void (pairChecked = true) },
    );
    const tls = find(report, "TLS files");
    assert.equal(tls.status, "fail");
    assert.match(tls.detail, /TLS_KEY_FILE="\/etc\/relay\/cert\.pem" is not a PEM private key/);
    assert.equal(pairChecked, false);
  } finally {
    await up.close();
  }
});

withCert.test("doctor checks TLS_CERT_FILE/TLS_KEY_FILE and warns about an open plain-HTTP listener", async ({ tls }) => {
  const { certFile, keyFile } = tls;
  const up = fakeHub();
  try {
    const wrongKey = await runDoctor({
      env: env(up.url, { TLS_CERT_FILE: certFile, TLS_KEY_FILE: certFile }),
      timeoutMs: 2000,
    });
    assert.equal(find(wrongKey, "TLS files").status, "fail");
    const paired = await runDoctor({
      env: env(up.url, { TLS_CERT_FILE: certFile, TLS_KEY_FILE: keyFile }),
      timeoutMs: 2000,
    });
    assert.equal(find(paired, "TLS files").status, "pass");
    const open = await runDoctor({ env: env(up.url, { HOST: "0.0.0.0" }), timeoutMs: 2000 });
    assert.equal(find(open, "listen").status, "warn");
    assert.match(find(open, "listen").hint!, /ALLOW_IPS/);
  } finally {
    await up.close();
  }
});

deadline.test("doctor --relay compares time to first byte direct and through a running relay", async () => {
  const up = fakeHub();
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  try {
    const report = await runDoctor({
      env: env(up.url),
      relay: relay.url,
      samples: 3,
      timeoutMs: 2000,
    });
    assert.equal(report.ok, true, formatReport(report));
    assert.match(find(report, "GET /", "Relay").detail, /proxy-forwarder [\d.]+ answers/);
    assert.match(
      find(report, "time to first byte").detail,
      /direct [\d.]+ ms, through the relay [\d.]+ ms \([+-][\d.]+ ms; median of 3/,
    );
    const dead = await runDoctor({ env: env(up.url), relay: `http://127.0.0.1:${closedPort()}` });
    assert.match(find(dead, "GET /", "Relay").hint!, /is the relay running/);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("doctor command line: options, --json output and exit status", async () => {
  assert.deepEqual(
    parseDoctorArgs(["--json", "--key=k", "--relay", "http://x", "--timeout", "2"]),
    {
      json: true,
      help: false,
      key: "k",
      relay: "http://x",
      caFile: undefined,
      timeoutMs: 2000,
    },
  );
  assert.throws(() => parseDoctorArgs(["--bogus"]), /unknown option/);
  const up = fakeHub();
  try {
    const script = new URL("../scripts/doctor.ts", import.meta.url).pathname;
    const run = (upstream: string) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-net", "--allow-env", "--allow-read", script, "--json"],
        env: { UPSTREAM_SERVER_A: upstream, HOST: "127.0.0.1" },
        clearEnv: true,
        stdout: "piped",
        stderr: "piped",
      }).output();
    const [good, bad] = await Promise.all([run(up.url), run(`http://127.0.0.1:${closedPort()}`)]);
    assert.equal(good.code, 0, new TextDecoder().decode(good.stderr));
    const json = JSON.parse(new TextDecoder().decode(good.stdout)) as DoctorReport;
    assert.equal(json.ok, true);
    assert.equal(bad.code, 1);
  } finally {
    await up.close();
  }
});
