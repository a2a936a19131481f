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
  RELAY_V8_FLAGS,
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

import { FAILED_ARGS, startArgs } from "../scripts/start_args.ts";
import { fdLimitArg } from "../lib/server/conn_limit.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const ROOT = new URL("..", import.meta.url).pathname;

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
    "--no-code-cache",
    "--unstable-no-legacy-abort",
    "--v8-flags=--initial-old-space-size=64,--no-concurrent-recompilation,--expose-gc",
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

Deno.test("start-up warns about an open relay on a public address, broad permissions, missing V8 flags and TLS on Deno.serve", () => {
  const base = { UPSTREAM_SERVER_A: "http://127.0.0.1:9" };
  const open = startupWarnings(parseConfig({ ...base, HOST: "0.0.0.0" }), [], true);
  assert.equal(open.length, 1);
  assert.match(open[0]!.msg, /OPEN RELAY/);
  assert.equal(startupWarnings(parseConfig({ ...base, HOST: "127.0.0.1" }), [], true).length, 0);
  assert.equal(startupWarnings(parseConfig({ ...base, HOST: "192.168.1.5" }), [], true).length, 0);
  assert.equal(
    startupWarnings(parseConfig({ ...base, HOST: "::", ALLOW_IPS: "10.0.0.0/8" }), [], true)
      .length,
    0,
  );
  const keyed = parseConfig({
    ...base,
    HOST: "0.0.0.0",
    ROUTES: JSON.stringify({ "1": { apiKey: "sk-1-secret", accessKey: "access-1-secret" } }),
  });
  assert.equal(startupWarnings(keyed, [], true).length, 0);
  const broad = startupWarnings(parseConfig({ ...base, HOST: "127.0.0.1" }), ["run", "net"], true);
  assert.equal(broad.length, 1);
  assert.match(broad[0]!.msg, /broad permissions/);
  assert.match(String(broad[0]!.fields.narrow), /--allow-net=127\.0\.0\.1:8000,127\.0\.0\.1:9/);
  assert.ok(
    !JSON.stringify([...open, ...broad, startupWarnings(keyed, ["run"], false)]).includes("secret"),
  );
  const noFlags = startupWarnings(parseConfig({ ...base, HOST: "127.0.0.1" }), [], false);
  assert.equal(noFlags.length, 1);
  assert.match(noFlags[0]!.msg, /without the relay's V8 flags/);
  assert.equal(noFlags[0]!.fields.flags, RELAY_V8_FLAGS);
  const tlsEnv = { ...base, HOST: "127.0.0.1", TLS_CERT_FILE: "c.pem", TLS_KEY_FILE: "k.pem" };
  // The own server serves TLS with Nagle off; only Deno.serve keeps it on.
  assert.equal(startupWarnings(parseConfig(tlsEnv), [], true).length, 0);
  const tls = startupWarnings(parseConfig({ ...tlsEnv, HTTP_SERVER: "deno" }), [], true);
  assert.equal(tls.length, 1);
  assert.match(tls[0]!.msg, /TLS on Deno\.serve .* is slower: .*Nagle.*reverse proxy/);
  assert.deepEqual(broadPermissions(() => "prompt"), []);
  assert.deepEqual(broadPermissions((d) => (d.name === "run" ? "granted" : "prompt")), ["run"]);
  // Unscoped net alone is how Docker and systemd run the relay: no warning for it.
  assert.deepEqual(broadPermissions((d) => (d.name === "net" ? "granted" : "prompt")), []);
});

function spawn(args: string[], env: Record<string, string>, cwd?: string) {
  const { child, output, outDone, errText: err } = spawnCaptured(Deno.execPath(), {
    args,
    env,
    clearEnv: true,
    ...(cwd !== undefined ? { cwd } : {}),
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
    async stop(kill = true): Promise<{ code: number; stderr: string }> {
      if (kill) {
        try {
          child.kill("SIGTERM");
        } catch { /* exited */ }
      }
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

deadline.test("with narrow permissions, the dashboard and the WebSocket bridge load when first asked for", async () => {
  // Both are imported on first use (tests/architecture_test.ts): the import must work without
  // read access, as `deno task start`, Docker and systemd run the relay.
  const a = startUpstream((req) =>
    req.headers.get("upgrade") === "websocket"
      ? Response.json({ error: "no websocket here" }, { status: 426 })
      : Response.json({ ok: true })
  );
  const env = { HOST: "127.0.0.1", PORT: String(closedPort()), UPSTREAM_SERVER_A: a.url };
  const relay = spawn(relayDenoArgs(parseConfig(env), {}, MAIN), env);
  try {
    const port = await relay.port();
    const page = await fetch(`http://127.0.0.1:${port}/dashboard`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
    assert.match(await page.text(), /<html/i);
    const ws = await rawRequest(
      port,
      "GET /v1/responses HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n" +
        "sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
      { closeAfterAnswerMs: 200 },
    );
    // A's refusal comes back as A sent it: the bridge ran.
    assert.equal(ws.status, 426);
    assert.match(new TextDecoder().decode(ws.body), /no websocket here/);
    assert.equal(a.seen.at(-1)?.headers.get("upgrade"), "websocket");
    const { code, stderr } = await relay.stop();
    assert.equal(code, 0, stderr);
  } finally {
    await relay.stop();
    await a.close();
  }
});

deadline.test("started with -A, the relay logs one warning naming the narrow command, and one for missing V8 flags", async () => {
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
      /^deno run --no-config --no-code-cache --unstable-no-legacy-abort --v8-flags=\S+ --allow-net=127\.0\.0\.1,/,
    );
    assert.ok(line.broad.includes("run"));
    // Started without the V8 flags, it says so too.
    const flagLines = relay.output().split("\n").filter((l) => l.includes("V8 flags"));
    assert.equal(flagLines.length, 1);
    assert.equal(JSON.parse(flagLines[0]!).flags, RELAY_V8_FLAGS);
  } finally {
    await relay.stop();
  }
  const flagged = spawn(["run", "--unstable-no-legacy-abort", RELAY_V8_FLAGS, "-A", MAIN], env);
  try {
    await flagged.port();
    assert.equal(flagged.output().split("\n").filter((l) => l.includes("V8 flags")).length, 0);
    assert.equal(flagged.output().split("\n").filter((l) => l.includes("broad")).length, 1);
  } finally {
    await flagged.stop();
  }
});

/** Pid and command line of every process whose parent is `parent` (`ps`: Deno denies /proc). */
function childrenOf(parent: number): Array<{ pid: number; cmd: string }> {
  const out = new Deno.Command("ps", {
    args: ["-o", "pid=,args=", "--ppid", String(parent)],
    stdout: "piped",
  }).outputSync();
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) => l.trim() !== "").map(
    (l) => {
      const m = /^\s*(\d+)\s+(.*)$/.exec(l)!;
      return { pid: Number(m[1]), cmd: m[2]! };
    },
  );
}

deadline.test("deno task start runs the relay as its only process, narrow, and passes SIGHUP and SIGTERM on", async () => {
  const a = startUpstream(() => Response.json({ ok: true }));
  const env = {
    HOST: "127.0.0.1",
    PORT: "0",
    UPSTREAM_SERVER_A: a.url,
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
  };
  const task = spawn(["task", "start"], env, ROOT);
  try {
    const port = await task.port();
    // The argument script has ended: the relay is the task's one child, with the flags it printed
    // and the descriptor limit the script read (no launcher stays resident beside it).
    const kids = childrenOf(task.child.pid);
    assert.equal(kids.length, 1, JSON.stringify(kids));
    assert.match(
      kids[0]!.cmd,
      new RegExp(`--no-prompt .*--allow-net=127\\.0\\.0\\.1,127\\.0\\.0\\.1:${a.port} .*main\\.ts`),
    );
    assert.ok(!/--allow-run|--allow-all|-A |start_args/.test(kids[0]!.cmd), kids[0]!.cmd);
    const info = await (await fetch(`http://127.0.0.1:${port}/debug/info`)).json();
    const limit = Number(/--fd-limit=(\d+)/.exec(kids[0]!.cmd)?.[1]);
    assert.ok(limit > 0, kids[0]!.cmd);
    assert.equal(info.limits.maxConnectionsFrom, "descriptor limit");
    const res = await fetch(`http://127.0.0.1:${port}/v1/models`);
    assert.equal(res.status, 200);
    await res.body?.cancel();
    task.child.kill("SIGHUP");
    await waitFor(() => task.output().includes('"msg":"configuration reloaded"'), 10_000, "reload");
    const { code, stderr } = await task.stop();
    assert.equal(code, 0, stderr);
    assert.match(task.output(), /"msg":"shutting down","signal":"SIGTERM"/);
    // The script's log line, on stderr so that stdout carries only the arguments.
    const line = stderr.split("\n").find((l) => l.includes("narrow permissions"))!;
    assert.ok(JSON.parse(line).command.endsWith(kids[0]!.cmd.split(" main.ts")[1]!.trim()));
  } finally {
    await task.stop();
    await a.close();
  }
});

deadline.test("deno task start with a bad configuration says why and exits 2 without a relay", async () => {
  const env = {
    HOST: "127.0.0.1",
    PORT: "0",
    UPSTREAM_SERVER_A: "ftp://hub.example.com",
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
  };
  const task = spawn(["task", "start"], env, ROOT);
  const { code, stderr } = await task.stop(false);
  assert.equal(code, 2, stderr);
  assert.match(stderr, /proxy-forwarder: configuration error: UPSTREAM_SERVER_A="ftp:/);
  assert.doesNotMatch(task.output(), /listening/);
});

Deno.test("start_args: the relay's arguments, the descriptor limit only when MAX_CONNECTIONS is unset", () => {
  const env = { UPSTREAM_SERVER_A: "https://hub.example.com", PORT: "8000" };
  const got = startArgs(env, () => "", 65536);
  assert.ok("args" in got);
  assert.deepEqual(got.args, [
    ...relayDenoArgs(parseConfig(env), env, "main.ts").slice(1),
    "--fd-limit=65536",
  ]);
  const fixed = startArgs({ ...env, MAX_CONNECTIONS: "100" }, () => "", 65536);
  assert.ok("args" in fixed && !fixed.args.some((a) => a.startsWith("--fd-limit")));
  const unknown = startArgs(env, () => "", null);
  assert.ok("args" in unknown && !unknown.args.some((a) => a.startsWith("--fd-limit")));
});

Deno.test("start_args refuses a path Deno or the task shell would split, and reports configuration errors", () => {
  const routes = JSON.stringify({ "1": { upstream: "https://hub.example.com" } });
  const env = { UPSTREAM_SERVER_A: "https://hub.example.com" };
  for (
    const path of [
      "/etc/pf/a,b.json",
      "/etc/pf/my routes.json",
      "/etc/pf/tab\there.json",
      "/etc/pf/*.json",
      "/etc/pf/routes?.json",
      "/etc/pf/routes[1].json",
    ]
  ) {
    const got = startArgs({ ...env, ROUTES_FILE: path }, () => routes, null);
    assert.ok("error" in got, path);
    assert.match(got.error, /a comma, white space, "\*", "\?" or "\[" in it/);
    assert.ok(got.error.includes(JSON.stringify(path)));
  }
  const logFile = startArgs({ ...env, LOG_FILE: "/var/log/pf,x.log" }, () => "", null);
  assert.ok("error" in logFile && logFile.error.includes("pf,x.log"));
  assert.ok(
    "args" in startArgs({ ...env, ROUTES_FILE: "/etc/pf/routes.json" }, () => routes, null),
  );
  const bad = startArgs({ UPSTREAM_SERVER_A: "ftp://x" }, () => "", null);
  assert.ok("error" in bad && bad.error.startsWith("configuration error: UPSTREAM_SERVER_A"));
  assert.deepEqual(FAILED_ARGS, ["--no-config", "scripts/start_failed.ts"]);
});

Deno.test("fdLimitArg reads main.ts's --fd-limit, and nothing else", () => {
  assert.equal(fdLimitArg(["--fd-limit=65536"]), 65536);
  assert.equal(fdLimitArg(["--fd-limit=1", "--fd-limit=2048"]), 2048);
  for (
    const args of [[], ["--fd-limit="], ["--fd-limit=-5"], ["--fd-limit=1e9"], ["--fd-limit=0"], [
      "--fd-limits=9",
    ]]
  ) {
    assert.equal(fdLimitArg(args), null, args.join(" "));
  }
});
