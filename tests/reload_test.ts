/**
 * Configuration reload on SIGHUP: `.env` parsing like `--env-file`, the merge with the
 * start environment, live vs restart settings, the in-memory swap, and the real process.
 */

import assert from "node:assert/strict";
import { createApp } from "../lib/relay.ts";
import { parseConfig } from "../lib/config/config.ts";
import { parseDotenv } from "../lib/config/dotenv.ts";
import { Logger } from "../lib/observe/log.ts";
import { createReloader, envForReload, planReload, sameValue } from "../lib/config/reload.ts";
import { deadline, dec, delay, enc, spawnCaptured, startUpstream, waitFor } from "./helpers.ts";

const SAMPLE = `# comment
A=plain
B = spaced  
export C=exported
D="double quoted # not comment"
E='single $A quoted'
F=unquoted # trailing comment
G="line1\\nline2"
H={"1":{"upstream":"https://a.example.com","apiKey":"sk-x"}}
I=
J="multi
line"
K=with$A
L="sub \${A} x"
M=a#b
O=x=y
P=$FROM_ENV
`;

deadline.test("parseDotenv reads .env text the way deno --env-file does", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/sample.env`, SAMPLE);
    const keys = "ABCDEFGHIJKLMOP".split("");
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `--env-file=${dir}/sample.env`,
        `console.log(JSON.stringify(Object.fromEntries(${
          JSON.stringify(keys)
        }.map((k) => [k, Deno.env.get(k)]))))`,
      ],
      env: { FROM_ENV: "env-value" },
      clearEnv: true,
      stdout: "piped",
    }).output();
    const deno = JSON.parse(dec.decode(out.stdout));
    const ours = parseDotenv(SAMPLE, (k) => k === "FROM_ENV" ? "env-value" : undefined);
    assert.deepEqual(ours, deno);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("envForReload follows the new .env but never overrides the real environment", () => {
  const startFile = { ROUTES_FILE: "a.json", DEBUG_LOG: "0", PORT: "8000" };
  // PORT was set in the real environment (differs from the file); the rest came from the file.
  const startEnv = { ...startFile, PORT: "9000", PATH: "/bin" };
  const next = envForReload(startEnv, startFile, { ROUTES_FILE: "b.json", PORT: "7000", NEW: "1" });
  assert.deepEqual(next, { ROUTES_FILE: "b.json", PORT: "9000", PATH: "/bin", NEW: "1" });
  // No .env now: the file's variables go, the real environment stays.
  assert.deepEqual(envForReload(startEnv, startFile, null), { PORT: "9000", PATH: "/bin" });
  // No .env at start either: nothing changes.
  assert.deepEqual(envForReload({ X: "1" }, null, null), { X: "1" });
});

Deno.test("planReload applies routes and upstreams, keeps settings that need a restart", () => {
  const base = { UPSTREAM_SERVER_A: "http://127.0.0.1:1", HOST: "127.0.0.1" };
  const current = parseConfig({ ...base, ROUTES: '{"1":{}}' });
  const next = parseConfig({
    ...base,
    UPSTREAM_SERVER_A: "http://127.0.0.1:2",
    ROUTES: '{"1":{},"2":{"upstream":"http://127.0.0.1:3"}}',
    PORT: "9999",
  });
  const plan = planReload(current, next);
  assert.deepEqual(plan.applied.sort(), ["ROUTES/ROUTES_FILE", "UPSTREAM_SERVER_A"]);
  assert.deepEqual(plan.needsRestart, ["PORT"]);
  assert.equal(plan.config.port, current.port);
  assert.equal(plan.config.routes.size, 2);
  assert.equal(plan.config.upstreams[0]!.url, "http://127.0.0.1:2");
  assert.ok(sameValue(parseConfig(base), parseConfig(base)), "equal configs compare equal");
  assert.deepEqual(planReload(current, current).applied, []);
});

deadline.test("app.reload sends new requests by the new routes while a stream in flight finishes", async () => {
  const slow = startUpstream(() => {
    const body = new ReadableStream<Uint8Array>({
      async start(c) {
        for (let i = 0; i < 5; i++) {
          c.enqueue(enc.encode(`data: old ${i}\n\n`));
          await delay(40);
        }
        c.close();
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  });
  const fresh = startUpstream(() => Response.json({ from: "new" }));
  const env = { UPSTREAM_SERVER_A: slow.url, UPSTREAM_KEEPWARM_SEC: "0" };
  const app = createApp(parseConfig({ ...env, ROUTES: "{}" }), {
    log: new Logger({ sink: () => {} }),
    background: false,
  });
  const info = { remoteAddr: { hostname: "127.0.0.1" } };
  try {
    const inFlight = await app.fetch(
      new Request("http://relay/v1/messages", { method: "POST" }),
      info,
    );
    const before = await app.fetch(new Request("http://relay/u7/v1/models"), info);
    assert.equal(before.status, 404);
    await before.body?.cancel();
    const plan = app.reload(parseConfig({ ...env, ROUTES: `{"7":{"upstream":"${fresh.url}"}}` }));
    assert.deepEqual(plan.applied, ["ROUTES/ROUTES_FILE"]);
    const after = await app.fetch(new Request("http://relay/u7/v1/models"), info);
    assert.deepEqual(await after.json(), { from: "new" });
    const text = await inFlight.text();
    assert.equal(text.split("\n\n").filter((s) => s).length, 5, "stream was cut");
  } finally {
    app.close();
    await slow.close();
    await fresh.close();
  }
});

deadline.test("app.reload applies ALLOW_IPS and MAX_BODY_MB to the next request", async () => {
  const up = startUpstream(() => Response.json({ ok: true }));
  const env = { UPSTREAM_SERVER_A: up.url, UPSTREAM_KEEPWARM_SEC: "0" };
  const app = createApp(parseConfig(env), {
    log: new Logger({ sink: () => {} }),
    background: false,
  });
  const info = { remoteAddr: { hostname: "127.0.0.1" } };
  const post = () =>
    app.fetch(
      new Request("http://relay/v1/messages", {
        method: "POST",
        body: "x".repeat(2 * 1024 * 1024),
        headers: { "content-length": String(2 * 1024 * 1024) },
      }),
      info,
    );
  try {
    const before = await post();
    assert.equal(before.status, 200);
    await before.body?.cancel();
    const plan = app.reload(parseConfig({ ...env, ALLOW_IPS: "10.0.0.0/8", MAX_BODY_MB: "1" }));
    assert.deepEqual(plan.applied.sort(), ["ALLOW_IPS", "MAX_BODY_MB"]);
    const denied = await app.fetch(new Request("http://relay/v1/models"), info);
    assert.equal(denied.status, 403);
    await denied.body?.cancel();
    // Diagnostics show the allow-list in force, not the one at start.
    assert.equal((app.debugInfo().limits as { allowIps: number | null }).allowIps, 1);
    app.reload(parseConfig({ ...env, MAX_BODY_MB: "1" }));
    const tooLarge = await post();
    assert.equal(tooLarge.status, 413);
    await tooLarge.body?.cancel();
  } finally {
    app.close();
    await up.close();
  }
});

deadline.test("app.reload with a new access key for a route rate-limits that key on its own", async () => {
  const up = startUpstream(() => Response.json({ ok: true }));
  const routes = (key: string) =>
    JSON.stringify({ "1": { apiKey: "sk-real-key-000000", accessKey: key } });
  const env = { UPSTREAM_SERVER_A: up.url, UPSTREAM_KEEPWARM_SEC: "0", RATE_LIMIT: "1/minute" };
  const app = createApp(parseConfig({ ...env, ROUTES: routes("access-key-old-0000") }), {
    log: new Logger({ sink: () => {} }),
    background: false,
  });
  const info = { remoteAddr: { hostname: "127.0.0.1" } };
  const get = async (key: string) => {
    const res = await app.fetch(
      new Request("http://relay/u1/v1/models", { headers: { authorization: `Bearer ${key}` } }),
      info,
    );
    await res.body?.cancel();
    return res.status;
  };
  try {
    assert.equal(await get("access-key-old-0000"), 200);
    assert.equal(await get("access-key-old-0000"), 429);
    app.reload(parseConfig({ ...env, ROUTES: routes("access-key-new-0000") }));
    // A new key is a new client: its bucket is full, not the old key's empty one.
    assert.equal(await get("access-key-new-0000"), 200);
  } finally {
    app.close();
    await up.close();
  }
});

Deno.test("createReloader keeps the old configuration when the new one is invalid", () => {
  const files: Record<string, string> = { "routes.json": '{"1":{}}' };
  const lines: string[] = [];
  const applied: number[] = [];
  const reload = createReloader({
    startEnv: { UPSTREAM_SERVER_A: "http://127.0.0.1:1", ROUTES_FILE: "routes.json" },
    envFile: ".env",
    readFile: (p) => {
      const t = files[p];
      if (t === undefined) throw new Deno.errors.NotFound(p);
      return t;
    },
    apply: (next) => {
      applied.push(next.routes.size);
      return { config: next, applied: ["ROUTES/ROUTES_FILE"], needsRestart: [] };
    },
    log: new Logger({ sink: (t) => lines.push(t) }),
  });
  files["routes.json"] = '{"1":{},"2":{}}';
  assert.equal(reload().ok, true);
  files["routes.json"] = '{"1":{'; // half-written file
  const bad = reload();
  assert.equal(bad.ok, false);
  assert.match(!bad.ok ? bad.reason : "", /ROUTES_FILE \(routes\.json\) is not valid JSON/);
  assert.deepEqual(applied, [2]);
});

Deno.test("createReloader refuses a new upstream host the process may not connect to", () => {
  const files: Record<string, string> = {
    "routes.json": JSON.stringify({ "1": { upstream: "http://127.0.0.1:1" } }),
  };
  const lines: string[] = [];
  const applied: string[][] = [];
  const log = new Logger({ sink: (t) => lines.push(t) });
  const reload = createReloader({
    startEnv: { UPSTREAM_SERVER_A: "http://127.0.0.1:1", ROUTES_FILE: "routes.json" },
    envFile: null,
    readFile: (p) => files[p]!,
    apply: (next) => {
      applied.push([...next.routes.values()].map((r) => r.upstreams[0]!.url));
      return { config: next, applied: ["ROUTES/ROUTES_FILE"], needsRestart: [] };
    },
    log,
    // As under `deno task start`: --allow-net lists only the upstreams configured at start.
    canConnect: (host, port) => host === "127.0.0.1" && port === 1,
  });
  files["routes.json"] = JSON.stringify({ "1": { upstream: "https://new-hub.example.com" } });
  const refused = reload();
  assert.equal(refused.ok, false);
  assert.match(!refused.ok ? refused.reason : "", /new-hub\.example\.com.*restart the relay/);
  assert.deepEqual(applied, [], "the old configuration must stay");
  log.flush();
  assert.ok(lines.join("").includes("reload failed"));
});

// ---------------------------------------------------------------------------------------------
// The real process

const MAIN = new URL("../main.ts", import.meta.url).pathname;

deadline.test("SIGHUP reloads ROUTES_FILE and .env in the running relay; a stream in flight survives; a bad file keeps the old routes", async () => {
  // A's stream sends half its events, then holds until the reload is done: it is surely in
  // flight across the SIGHUP, however slow the machine.
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const a1 = startUpstream((req) => {
    if (new URL(req.url).pathname !== "/v1/messages") return Response.json({ from: "a1" });
    const event = (i: number) => new TextEncoder().encode(`data: ${i}\n\n`);
    return new Response(
      new ReadableStream<Uint8Array>({
        async start(ctrl) {
          for (let i = 0; i < 4; i++) ctrl.enqueue(event(i));
          await released;
          for (let i = 4; i < 8; i++) ctrl.enqueue(event(i));
          ctrl.close();
        },
      }),
      { headers: { "content-type": "text/event-stream" } },
    );
  });
  const a2 = startUpstream(() => Response.json({ from: "a2" }));
  const dir = await Deno.makeTempDir({ prefix: "pf-reload-" });
  await Deno.writeTextFile(`${dir}/routes.json`, JSON.stringify({ "1": { upstream: a1.url } }));
  await Deno.writeTextFile(`${dir}/.env`, `UPSTREAM_SERVER_A=${a1.url}\nROUTES_FILE=routes.json\n`);
  const { child, output, outDone, errText } = spawnCaptured(Deno.execPath(), {
    args: [
      "run",
      "--unstable-no-legacy-abort",
      "--allow-net",
      "--allow-env",
      `--allow-read=${dir}`,
      "--env-file=.env",
      MAIN,
    ],
    cwd: dir,
    env: { HOST: "127.0.0.1", PORT: "0", UPSTREAM_KEEPWARM_SEC: "0" },
    clearEnv: true,
  });
  const get = async (port: number, path: string) => {
    const res = await fetch(`http://127.0.0.1:${port}${path}`);
    return { status: res.status, body: await res.text() };
  };
  try {
    await waitFor(
      () => /"address":"http:\/\/127\.0\.0\.1:\d+"/.test(output()),
      10_000,
      "relay start",
    );
    const port = Number(/"address":"http:\/\/127\.0\.0\.1:(\d+)"/.exec(output())![1]);
    assert.match((await get(port, "/u1/v1/models")).body, /a1/);
    assert.equal((await get(port, "/u2/v1/models")).status, 404);

    // A stream on route 1 is in flight while the routes change.
    const stream = await fetch(`http://127.0.0.1:${port}/u1/v1/messages`, {
      method: "POST",
      body: "{}",
    });
    const streamText = stream.text();
    await Deno.writeTextFile(
      `${dir}/routes2.json`,
      JSON.stringify({ "1": { upstream: a2.url }, "2": { upstream: a2.url } }),
    );
    await Deno.writeTextFile(
      `${dir}/.env`,
      `UPSTREAM_SERVER_A=${a1.url}\nROUTES_FILE=routes2.json\n`,
    );
    child.kill("SIGHUP");
    await waitFor(() => output().includes("configuration reloaded"), 5000, "reload log");
    assert.match((await get(port, "/u2/v1/models")).body, /a2/);
    assert.match((await get(port, "/u1/v1/models")).body, /a2/);
    release();
    assert.equal((await streamText).split("\n\n").filter((s) => s).length, 8, "stream was cut");

    // A broken file: the relay says why and keeps serving the routes it has.
    await Deno.writeTextFile(`${dir}/routes2.json`, '{"2": {"upstream": ');
    child.kill("SIGHUP");
    await waitFor(() => output().includes("reload failed"), 5000, "reload failure log");
    assert.match(output(), /reload failed: keeping the current configuration.*not valid JSON/);
    assert.match((await get(port, "/u2/v1/models")).body, /a2/);
  } finally {
    release();
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    await outDone;
    await errText;
    await a1.close();
    await a2.close();
    await Deno.remove(dir, { recursive: true });
  }
});

deadline.test("a request keeps the configuration it started with when a reload lands during one of its awaits", async () => {
  const up = startUpstream(async (req) => {
    await req.arrayBuffer();
    return new Response("ok");
  });
  // A rate limit makes the request await its admission before the body limit is checked.
  const env = { UPSTREAM_SERVER_A: up.url, RATE_LIMIT: "1000/minute", MAX_BODY_MB: "1" };
  const app = createApp(parseConfig(env), {
    background: false,
    log: new Logger({ sink: () => {} }),
  });
  try {
    const body = new Uint8Array(2 * 1024 * 1024);
    const pending = app.fetch(
      new Request("http://relay/v1/messages", {
        method: "POST",
        body,
        headers: { "content-length": String(body.byteLength) },
      }),
      { remoteAddr: { hostname: "127.0.0.1" } },
    );
    // The request is now waiting on its admission: the reload comes in between.
    app.reload(parseConfig({ ...env, MAX_BODY_MB: "100" }));
    const res = await pending;
    await res.body?.cancel();
    assert.equal(res.status, 413, "the 1 MB limit in force when the request arrived applies");
    const after = await app.fetch(
      new Request("http://relay/v1/messages", {
        method: "POST",
        body,
        headers: { "content-length": String(body.byteLength) },
      }),
      { remoteAddr: { hostname: "127.0.0.1" } },
    );
    assert.equal(after.status, 200, "the next request sees the reloaded 100 MB limit");
    await after.body?.cancel();
  } finally {
    app.close();
    await up.close();
  }
});
