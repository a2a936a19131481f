/**
 * Integration: the real entry point as a process — start-up errors, graceful shutdown with a
 * stream in flight, the second signal.
 */

import assert from "node:assert/strict";
import { deadline, dec, delay, sseResponse, startUpstream, waitFor } from "./helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

function spawnRelay(env: Record<string, string>) {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["run", "--unstable-no-legacy-abort", "--allow-net", "--allow-env", "--allow-read", MAIN],
    env: { HOST: "127.0.0.1", PORT: "0", ...env },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  });
  const child = cmd.spawn();
  let out = "";
  const outDone = child.stdout.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (t) => void (out += t) }),
  );
  const errText = new Response(child.stderr).text();
  return {
    child,
    output: () => out,
    errText,
    outDone,
    async port(): Promise<number> {
      const end = Date.now() + 10_000;
      while (Date.now() < end) {
        const m = /"address":"http:\/\/127\.0\.0\.1:(\d+)"/.exec(out);
        if (m) return Number(m[1]);
        await delay(20);
      }
      throw new Error(`relay did not start: ${out}`);
    },
  };
}

async function startupError(
  env: Record<string, string>,
): Promise<{ code: number; stderr: string }> {
  const r = spawnRelay(env);
  const status = await r.child.status;
  await r.outDone;
  return { code: status.code, stderr: await r.errText };
}

deadline.test("start-up without UPSTREAM_SERVER_A explains how to set it and exits non-zero", async () => {
  const { code, stderr } = await startupError({});
  assert.notEqual(code, 0);
  assert.match(stderr, /UPSTREAM_SERVER_A/);
  assert.match(stderr, /cp \.env\.example \.env/);
  assert.match(stderr, /deno task demo/);
  assert.equal(stderr.trim().split("\n").length, 1, "one line");
});

deadline.test("start-up with bad values names the variable, the value and what is expected", async () => {
  for (
    const [name, value, expected] of [
      ["PORT", "70000", /port/i],
      ["UPSTREAM_SERVER_A", "not a url", /http/],
      ["UPSTREAM_TIMEOUT_SEC", "abc", /seconds/],
    ] as const
  ) {
    const { code, stderr } = await startupError({
      UPSTREAM_SERVER_A: "http://127.0.0.1:9",
      [name]: value,
    });
    assert.notEqual(code, 0, name);
    assert.ok(stderr.includes(name) && stderr.includes(value), stderr);
    assert.match(stderr, expected);
  }
});

deadline.test("SIGTERM lets a stream in flight finish, refuses new connections, then exits 0", async () => {
  const up = startUpstream(() => {
    return sseResponse({ gapMs: 100, count: 8 });
  });
  const r = spawnRelay({ UPSTREAM_SERVER_A: up.url, SHUTDOWN_GRACE_SEC: "10" });
  try {
    const port = await r.port();
    const res = await fetch(`http://127.0.0.1:${port}/v1/messages`, { method: "POST", body: "{}" });
    const reader = res.body!.getReader();
    let text = dec.decode((await reader.read()).value);
    r.child.kill("SIGTERM");
    // The listener closes soon after the signal: new connections are refused from then on.
    const refusedBy = Date.now() + 3000;
    while (true) {
      const refused = await Deno.connect({ hostname: "127.0.0.1", port }).then(
        (c) => (c.close(), false),
        () => true,
      );
      if (refused) break;
      assert.ok(Date.now() < refusedBy, "new connections still accepted 3 s after SIGTERM");
      await delay(20);
    }
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value);
    }
    assert.equal(text.split("\n\n").filter((s) => s).length, 8, "stream was cut");
    const status = await r.child.status;
    assert.equal(status.code, 0);
    await r.outDone;
    assert.match(r.output(), /shutting down/);
    assert.match(r.output(), /"msg":"stopped"/, "the final log line was lost on exit");
  } finally {
    try {
      r.child.kill("SIGKILL");
    } catch { /* exited */ }
    await r.child.status;
    await r.errText;
    await up.close();
  }
});

deadline.test("a stream outlasting SHUTDOWN_GRACE_SEC is cut and the relay still exits 0; a second signal exits at once", async () => {
  const up = startUpstream(() => {
    return sseResponse({ gapMs: 50 });
  });
  for (const secondSignal of [false, true]) {
    const r = spawnRelay({
      UPSTREAM_SERVER_A: up.url,
      SHUTDOWN_GRACE_SEC: secondSignal ? "30" : "0.5",
    });
    try {
      const port = await r.port();
      const res = await fetch(`http://127.0.0.1:${port}/v1/messages`, {
        method: "POST",
        body: "{}",
      });
      const drained = res.body!.pipeTo(new WritableStream()).catch(() => {});
      const t0 = Date.now();
      r.child.kill("SIGTERM");
      if (secondSignal) {
        // The second signal while the first one's shutdown is under way.
        await waitFor(
          () => r.output().includes('"msg":"shutting down"'),
          5000,
          "the relay starting to shut down",
        );
        r.child.kill("SIGINT");
      }
      const status = await r.child.status;
      const took = Date.now() - t0;
      await drained;
      if (secondSignal) {
        assert.notEqual(status.code, 0);
        assert.ok(took < 2000, `second signal took ${took} ms`);
      } else {
        assert.equal(status.code, 0);
        assert.ok(took >= 400 && took < 5000, `grace exit took ${took} ms`);
      }
    } finally {
      try {
        r.child.kill("SIGKILL");
      } catch { /* exited */ }
      await r.child.status;
      await r.outDone;
      await r.errText;
    }
  }
  await up.close();
});

deadline.test("start-up on a port already in use says so in one line and exits non-zero", async () => {
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = String((busy.addr as Deno.NetAddr).port);
    const { code, stderr } = await startupError({
      UPSTREAM_SERVER_A: "http://127.0.0.1:9",
      PORT: port,
    });
    assert.equal(code, 2);
    assert.match(
      stderr,
      new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: the port is already in use`),
    );
  } finally {
    busy.close();
  }
});
