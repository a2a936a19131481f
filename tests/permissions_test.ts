/**
 * Unit and integration: least privilege. The relay is started with the
 * exact flags `deno task start` computes; a request trying to reach another host is refused by the
 * relay, and a probe with the same flags shows Deno would have denied the connection anyway.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../lib/config/config.ts";
import {
  broadPermissions,
  netAllowList,
  relayDenoArgs,
  startupWarnings,
} from "../lib/ops/permissions.ts";
import {
  closedPort,
  deadline,
  rawRequest,
  spawnCaptured,
  startRawUpstream,
  startUpstream,
  waitFor,
} from "./helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const START = new URL("../scripts/start.ts", import.meta.url).pathname;

Deno.test("netAllowList holds the listen address and every upstream host:port, nothing else", () => {
  const config = parseConfig({
    HOST: "0.0.0.0",
    PORT: "8000",
    UPSTREAM_SERVER_A: "https://hub.example.com/api,http://10.0.0.5:3000",
    ROUTES: JSON.stringify({
      "1": {
        upstream: "https://[2001:db8::1]:8443",
        apiKey: "sk-secret-1",
        accessKey: "acc-key-1",
      },
      "2": {},
    }),
  });
  assert.deepEqual(netAllowList(config), [
    "0.0.0.0:8000",
    "10.0.0.5:3000",
    "[2001:db8::1]:8443",
    "hub.example.com:443",
  ]);
  const args = relayDenoArgs(config, {}, "main.ts");
  assert.deepEqual(args, [
    "run",
    "--no-config",
    "--unstable-no-legacy-abort",
    "--v8-flags=--initial-old-space-size=64",
    "--allow-net=0.0.0.0:8000,10.0.0.5:3000,[2001:db8::1]:8443,hub.example.com:443",
    "--allow-env",
    "--allow-read=.env",
    "main.ts",
  ]);
  assert.ok(!args.join(" ").includes("sk-secret-1") && !args.join(" ").includes("acc-key-1"));
});

Deno.test("relayDenoArgs adds KV, routes file, TLS and log file access only when configured", () => {
  const config = parseConfig({
    UPSTREAM_SERVER_A: "http://127.0.0.1:9",
    RATE_LIMIT: "10/minute",
    RATE_LIMIT_STORE: "kv",
    RATE_LIMIT_KV_URL: "/var/lib/relay/limits.sqlite",
    LOG_FILE: "/var/log/relay.log",
    TLS_CERT_FILE: "/etc/relay/cert.pem",
    TLS_KEY_FILE: "/etc/relay/key.pem",
  });
  const args = relayDenoArgs(config, { ROUTES_FILE: "routes.json" }, "main.ts");
  assert.ok(args.includes("--unstable-kv"));
  assert.ok(args.includes(
    "--allow-read=.env,routes.json,/etc/relay/cert.pem,/etc/relay/key.pem,/var/lib/relay/limits.sqlite",
  ));
  assert.ok(args.includes("--allow-write=/var/log/relay.log,/var/lib/relay/limits.sqlite"));
  const remote = parseConfig({
    UPSTREAM_SERVER_A: "http://127.0.0.1:9",
    RATE_LIMIT: "10/minute",
    RATE_LIMIT_STORE: "kv",
    RATE_LIMIT_KV_URL: "https://api.deno.com/databases/abc/connect",
  });
  assert.ok(netAllowList(remote).includes("api.deno.com:443"));
});

Deno.test("start-up warns about an open relay on a public address, and about broad permissions", () => {
  const base = { UPSTREAM_SERVER_A: "http://127.0.0.1:9" };
  const open = startupWarnings(parseConfig({ ...base, HOST: "0.0.0.0" }), []);
  assert.equal(open.length, 1);
  assert.match(open[0]!.msg, /OPEN RELAY/);
  assert.equal(startupWarnings(parseConfig({ ...base, HOST: "127.0.0.1" }), []).length, 0);
  assert.equal(startupWarnings(parseConfig({ ...base, HOST: "192.168.1.5" }), []).length, 0);
  assert.equal(
    startupWarnings(parseConfig({ ...base, HOST: "::", ALLOW_IPS: "10.0.0.0/8" }), []).length,
    0,
  );
  const keyed = parseConfig({
    ...base,
    HOST: "0.0.0.0",
    ROUTES: JSON.stringify({ "1": { apiKey: "sk-1-secret", accessKey: "access-1-secret" } }),
  });
  assert.equal(startupWarnings(keyed, []).length, 0);
  const broad = startupWarnings(parseConfig({ ...base, HOST: "127.0.0.1" }), ["run", "net"]);
  assert.equal(broad.length, 1);
  assert.match(broad[0]!.msg, /broad permissions/);
  assert.match(String(broad[0]!.fields.narrow), /--allow-net=127\.0\.0\.1:8000,127\.0\.0\.1:9/);
  assert.ok(
    !JSON.stringify([...open, ...broad, startupWarnings(keyed, ["run"])]).includes("secret"),
  );
  assert.deepEqual(broadPermissions(() => "prompt"), []);
  assert.deepEqual(broadPermissions((d) => (d.name === "run" ? "granted" : "prompt")), ["run"]);
  // Unscoped net alone is how Docker and systemd run the relay: no warning for it.
  assert.deepEqual(broadPermissions((d) => (d.name === "net" ? "granted" : "prompt")), []);
});

function spawn(args: string[], env: Record<string, string>) {
  const { child, output, outDone, errText: err } = spawnCaptured(Deno.execPath(), {
    args,
    env,
    clearEnv: true,
  });
  return {
    child,
    output,
    async port(): Promise<number> {
      await waitFor(
        () => /"address":"http:\/\/127\.0\.0\.1:\d+"/.test(output()),
        10_000,
        "listening",
      );
      return Number(/"address":"http:\/\/127\.0\.0\.1:(\d+)"/.exec(output())![1]);
    },
    async stop(): Promise<{ code: number; stderr: string }> {
      try {
        child.kill("SIGTERM");
      } catch { /* exited */ }
      const st = await child.status;
      await outDone;
      return { code: st.code, stderr: await err };
    },
  };
}

deadline.test("with narrow permissions the relay refuses other hosts, and Deno would deny them anyway", async () => {
  const evil = startRawUpstream(async () => {});
  const a = startUpstream(() => Response.json({ ok: true }));
  // A fixed port, as in production: the grant is then exactly host:port.
  const listenPort = closedPort();
  const env = { HOST: "127.0.0.1", PORT: String(listenPort), UPSTREAM_SERVER_A: `${a.url}/prefix` };
  const args = relayDenoArgs(parseConfig(env), {}, MAIN);
  assert.ok(
    args.some((x) =>
      x === `--allow-net=127.0.0.1:${a.port},127.0.0.1:${listenPort}` ||
      x === `--allow-net=127.0.0.1:${listenPort},127.0.0.1:${a.port}`
    ),
    args.join(" "),
  );
  const relay = spawn(args, env);
  const dir = await Deno.makeTempDir();
  try {
    const port = await relay.port();
    const evilHost = `127.0.0.1:${evil.port}`;
    for (
      const target of [
        `http://${evilHost}/v1/models`,
        `//${evilHost}/v1/models`,
        `/v1/../../${evilHost}/`,
        `/v1/%2e%2e/%2e%2e/${evilHost}`,
        `/u1/v1/models`,
      ]
    ) {
      const res = await rawRequest(
        port,
        `GET ${target} HTTP/1.1\r\nhost: ${evilHost}\r\nconnection: close\r\n\r\n`,
      );
      assert.ok([200, 400, 404].includes(res.status), `${target} → ${res.status}`);
    }
    assert.equal(evil.connections, 0, "the relay connected to another host");
    // Some targets (e.g. /u1/v1/models) do reach A: the prefix check below is not vacuous.
    assert.ok(a.seen.length > 0, "no request reached A");
    assert.ok(a.seen.every((s) => new URL(s.url).pathname.startsWith("/prefix/v1/")));
    // The same flags, applied to code that tries to connect to the other host itself.
    const probe = `${dir}/probe.ts`;
    await Deno.writeTextFile(
      probe,
      `try { await Deno.connect({ hostname: "127.0.0.1", port: ${evil.port} }); console.log("CONNECTED"); }
       catch (e) { console.log(e instanceof Error ? e.name + ": " + e.message : String(e)); }`,
    );
    const probeArgs = args.slice(0, -1).concat("--no-prompt", probe);
    const out = await new Deno.Command(Deno.execPath(), { args: probeArgs, stdout: "piped" })
      .output();
    const text = new TextDecoder().decode(out.stdout);
    assert.match(text, /NotCapable: Requires net access to "127\.0\.0\.1:\d+"/);
    assert.equal(evil.connections, 0);
    const { code, stderr } = await relay.stop();
    assert.equal(code, 0, stderr);
    assert.ok(!relay.output().includes("broad permissions"), "warned although narrow");
  } finally {
    await relay.stop();
    await Deno.remove(dir, { recursive: true });
    await a.close();
    evil.close();
  }
});

deadline.test("started with -A, the relay logs one warning naming the narrow command", async () => {
  const env = { HOST: "127.0.0.1", PORT: "0", UPSTREAM_SERVER_A: "http://127.0.0.1:9" };
  const relay = spawn(["run", "--unstable-no-legacy-abort", "-A", MAIN], env);
  try {
    // Start-up warnings come before the "listening" line that gave the port.
    await relay.port();
    const lines = relay.output().split("\n").filter((l) => l.includes("broad permissions"));
    assert.equal(lines.length, 1);
    const line = JSON.parse(lines[0]!);
    assert.equal(line.level, "warn");
    assert.match(
      line.narrow,
      /^deno run --no-config --unstable-no-legacy-abort --v8-flags=\S+ --allow-net=127\.0\.0\.1,/,
    );
    assert.ok(line.broad.includes("run"));
  } finally {
    await relay.stop();
  }
});

deadline.test("deno task start's launcher runs the relay with narrow flags and passes SIGTERM on", async () => {
  const a = startUpstream(() => Response.json({ ok: true }));
  const env = {
    HOST: "127.0.0.1",
    PORT: "0",
    UPSTREAM_SERVER_A: a.url,
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
  };
  const launcher = spawn(
    ["run", "--unstable-no-legacy-abort", "--allow-env", "--allow-read", "--allow-run", START],
    env,
  );
  try {
    const port = await launcher.port();
    const start = launcher.output().split("\n").find((l) => l.includes("narrow permissions"))!;
    const fields = JSON.parse(start);
    assert.match(
      fields.command,
      new RegExp(`--allow-net=127\\.0\\.0\\.1,127\\.0\\.0\\.1:${a.port} `),
    );
    assert.ok(!/--allow-run|--allow-all|-A /.test(fields.command));
    assert.ok(fields.maxConnections > 0);
    const res = await fetch(`http://127.0.0.1:${port}/v1/models`);
    assert.equal(res.status, 200);
    await res.body?.cancel();
    const { code, stderr } = await launcher.stop();
    assert.equal(code, 0, stderr);
    assert.match(launcher.output(), /"msg":"shutting down","signal":"SIGTERM"/);
  } finally {
    await launcher.stop();
    await a.close();
  }
});
