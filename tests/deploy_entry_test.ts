/**
 * The Deno Deploy entry: `deploy.ts` exports `{ fetch }`, builds the relay from the
 * environment alone (no main.ts, no HOST/PORT, no files written), and runs under `deno serve`.
 */

import assert from "node:assert/strict";
import { deployEnv, IGNORED_ON_DEPLOY } from "../deploy.ts";
import {
  closedPort,
  deadline,
  delay,
  spawnCaptured,
  sseResponse,
  startUpstream,
} from "./helpers.ts";

function withEnv(vars: Record<string, string>): () => void {
  const saved = new Map<string, string | undefined>();
  for (const [k, v] of Object.entries(vars)) {
    saved.set(k, Deno.env.get(k));
    Deno.env.set(k, v);
  }
  return () => {
    for (const [k, v] of saved) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
  };
}

const info = {
  remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 50000 },
  completed: Promise.resolve(),
} as Deno.ServeHandlerInfo<Deno.NetAddr>;

Deno.test("deployEnv drops HOST, PORT, TLS and LOG_FILE and keeps rate-limit buckets in KV", () => {
  const env = deployEnv({
    UPSTREAM_SERVER_A: "https://hub.example.com",
    HOST: "0.0.0.0",
    PORT: "8000",
    LOG_FILE: "/var/log/x.log",
    TLS_CERT_FILE: "c.pem",
    TLS_KEY_FILE: "k.pem",
    RATE_LIMIT: "60/minute",
  });
  assert.deepEqual(env, {
    UPSTREAM_SERVER_A: "https://hub.example.com",
    RATE_LIMIT: "60/minute",
    RATE_LIMIT_STORE: "kv",
  });
  assert.equal(
    deployEnv({ RATE_LIMIT: "10/s", RATE_LIMIT_STORE: "memory" }).RATE_LIMIT_STORE,
    "memory",
  );
  assert.equal(deployEnv({ RATE_LIMIT: "off" }).RATE_LIMIT_STORE, undefined);
  assert.ok(IGNORED_ON_DEPLOY.includes("PORT"));
});

deadline.test("deploy.ts default export relays requests, streams included, with env set before import", async () => {
  const up = startUpstream((req) => {
    const path = new URL(req.url).pathname;
    if (path === "/v1/messages") {
      return sseResponse({ gapMs: 20, count: 3 });
    }
    return Response.json({ path, ip: req.headers.get("x-real-ip") });
  });
  const restore = withEnv({
    UPSTREAM_SERVER_A: up.url,
    // Values that would stop main.ts: ignored here.
    PORT: "not-a-port",
    HOST: "",
    LOG_FILE: "/nonexistent/dir/relay.log",
    ROUTES: JSON.stringify({ "3": {} }),
    UPSTREAM_KEEPWARM_SEC: "0",
    ACCESS_LOG: "0",
  });
  const mod = await import("../deploy.ts");
  try {
    assert.equal(typeof mod.default.fetch, "function");
    const home = await mod.default.fetch(new Request("https://relay.deno.dev/"), info);
    assert.equal((await home.json()).ok, true);
    const models = await mod.default.fetch(
      new Request("https://relay.deno.dev/u3/v1/models"),
      info,
    );
    assert.deepEqual(await models.json(), { path: "/v1/models", ip: "127.0.0.1" });
    const sse = await mod.default.fetch(
      new Request("https://relay.deno.dev/v1/messages", { method: "POST", body: "{}" }),
      info,
    );
    assert.equal(sse.headers.get("content-type"), "text/event-stream");
    assert.equal(await sse.text(), "data: 0\n\ndata: 1\n\ndata: 2\n\n");
  } finally {
    await mod.resetForTests();
    restore();
    await up.close();
  }
});

deadline.test("deploy.ts keeps RATE_LIMIT buckets in Deno KV by default", async () => {
  const up = startUpstream(() => Response.json({}));
  const restore = withEnv({
    UPSTREAM_SERVER_A: up.url,
    RATE_LIMIT: "2/minute",
    // An in-memory KV database: same store code, no file left behind by the test.
    RATE_LIMIT_KV_URL: ":memory:",
    UPSTREAM_KEEPWARM_SEC: "0",
    ACCESS_LOG: "0",
  });
  const mod = await import("../deploy.ts");
  try {
    await mod.resetForTests();
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await mod.default.fetch(new Request("https://relay.deno.dev/v1/models"), info);
      statuses.push(res.status);
      await res.body?.cancel();
    }
    assert.deepEqual(statuses, [200, 200, 429]);
    const debug = await mod.default.fetch(new Request("https://relay.deno.dev/debug/info"), info);
    const limits = (await debug.json()).limits as Record<string, unknown>;
    assert.equal(limits.rateLimitStore, "kv");
  } finally {
    await mod.resetForTests();
    restore();
    await up.close();
  }
});

deadline.test("deploy.ts answers 503 without details when the environment is not configured", async () => {
  const restore = withEnv({ UPSTREAM_SERVER_A: "not a url", ACCESS_LOG: "0" });
  const mod = await import("../deploy.ts");
  try {
    await mod.resetForTests();
    const res = await mod.default.fetch(new Request("https://relay.deno.dev/v1/models"), info);
    assert.equal(res.status, 503);
    const text = await res.text();
    assert.match(text, /not_configured/);
    assert.ok(!text.includes("not a url"), "config details stay in the log");
  } finally {
    await mod.resetForTests();
    restore();
  }
});

deadline.test("deploy.ts runs under `deno serve` with no write or read permission and never loads main.ts", async () => {
  const up = startUpstream(() => Response.json({ ok: "upstream" }));
  const entry = new URL("../deploy.ts", import.meta.url).pathname;
  const port = closedPort();
  const { child, output, outDone, errText } = spawnCaptured(Deno.execPath(), {
    args: [
      "serve",
      "--unstable-no-legacy-abort",
      "--allow-net",
      "--allow-env",
      "--deny-write",
      "--deny-read",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      entry,
    ],
    env: { UPSTREAM_SERVER_A: up.url, UPSTREAM_KEEPWARM_SEC: "0", PORT: "1" },
    clearEnv: true,
  });
  try {
    let res: Response | null = null;
    const end = Date.now() + 10_000;
    while (res === null && Date.now() < end) {
      res = await fetch(`http://127.0.0.1:${port}/v1/models`).catch(() => null);
      if (res === null) await delay(30);
    }
    assert.ok(res, `deno serve did not start: ${output()}`);
    assert.deepEqual(await res.json(), { ok: "upstream" });
  } finally {
    // `deno serve` waits for idle keep-alive connections on SIGTERM: no need here.
    child.kill("SIGKILL");
    await child.status;
    await outDone;
    await errText;
    await up.close();
  }
  // The module graph of the entry has no main.ts and no scripts.
  const info = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", entry],
    stdout: "piped",
    stderr: "null",
  }).output();
  const graph = JSON.parse(new TextDecoder().decode(info.stdout)) as {
    modules: Array<{ specifier: string }>;
  };
  const files = graph.modules.map((m) => m.specifier);
  assert.ok(files.some((f) => f.endsWith("/lib/relay.ts")));
  assert.ok(!files.some((f) => f.endsWith("/main.ts") || f.includes("/scripts/")), files.join());
});
