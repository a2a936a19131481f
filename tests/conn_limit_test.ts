/**
 * Unit and integration: MAX_CONNECTIONS and surviving descriptor exhaustion.
 * The exhaustion test runs the real entry point under a lowered `ulimit -n` in a subprocess.
 */

import assert from "node:assert/strict";
import {
  connectionCap,
  defaultMaxConnections,
  FALLBACK_MAX_CONNECTIONS,
  isOutOfDescriptors,
  parseFdLimit,
  parseUlimit,
  readFdLimit,
} from "../lib/server/conn_limit.ts";
import {
  deadline,
  delay,
  enc,
  serversOfThisPass,
  spawnCaptured,
  startRelay,
  startUpstream,
  waitFor,
} from "./helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

Deno.test("readFdLimit takes ulimit's number when /proc/self/limits cannot be read", () => {
  const noProc = (): string => {
    throw new Deno.errors.NotFound("no /proc");
  };
  assert.equal(readFdLimit(noProc, () => "4096\n"), 4096);
  assert.equal(readFdLimit(noProc, () => "unlimited\n"), null);
  assert.equal(readFdLimit(noProc), null);
  assert.equal(parseUlimit(" 1024 "), 1024);
  assert.equal(parseUlimit("0"), null);
  assert.equal(parseUlimit(""), null);
});

Deno.test("parseFdLimit reads the hard open-files limit from /proc/<pid>/limits text", () => {
  const text = "Limit                     Soft Limit           Hard Limit           Units\n" +
    "Max cpu time              unlimited            unlimited            seconds\n" +
    "Max open files            1024                 524288               files\n";
  assert.equal(parseFdLimit(text), 524288);
  assert.equal(parseFdLimit("Max open files  256  256  files"), 256);
  assert.equal(parseFdLimit("nothing here"), null);
  assert.equal(parseFdLimit("Max open files unlimited unlimited files"), null);
});

Deno.test("the default MAX_CONNECTIONS leaves one upstream socket per client and a reserve", () => {
  assert.equal(defaultMaxConnections(20_000), 9_500);
  assert.equal(defaultMaxConnections(1_024), 480);
  assert.equal(defaultMaxConnections(256), 96);
  assert.equal(defaultMaxConnections(10), 1);
  for (const limit of [64, 100, 256, 1024, 4096, 20_000, 1_048_576]) {
    const max = defaultMaxConnections(limit);
    assert.ok(2 * max + 64 <= limit || max === 1, `${limit} → ${max}`);
  }
  assert.deepEqual(connectionCap(50, 20_000), {
    max: 50,
    source: "MAX_CONNECTIONS",
    fdLimit: 20_000,
  });
  assert.equal(connectionCap(0, 20_000).source, "descriptor limit");
  assert.equal(connectionCap(0, null).max, FALLBACK_MAX_CONNECTIONS);
});

Deno.test("isOutOfDescriptors finds EMFILE anywhere in a cause chain, and nothing else", () => {
  const emfile = new Error("Too many open files (os error 24)");
  const wrapped = new Error("connect failed", { cause: new Error("x", { cause: emfile }) });
  assert.ok(isOutOfDescriptors(emfile));
  assert.ok(isOutOfDescriptors(wrapped));
  assert.ok(!isOutOfDescriptors(new Error("Connection refused (os error 111)")));
  assert.ok(!isOutOfDescriptors("Too many open files"));
  const loop: Error & { cause?: unknown } = new Error("a");
  loop.cause = loop;
  assert.ok(!isOutOfDescriptors(loop));
});

deadline.test("MAX_CONNECTIONS sheds requests beyond the cap with 503 and keeps serving those in flight", async () => {
  const closers: Array<() => void> = [];
  const up = startUpstream(() => {
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(enc.encode("data: first\n\n"));
        closers.push(() => {
          c.enqueue(enc.encode("data: last\n\n"));
          c.close();
        });
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  });
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url, MAX_CONNECTIONS: "2" });
  try {
    const a = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    const b = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    const shed = await fetch(`${relay.url}/v1/messages`, { method: "POST", body: "{}" });
    assert.equal(shed.status, 503);
    assert.equal(shed.headers.get("retry-after"), "1");
    const err = await shed.json();
    assert.equal(err.error.type, "service_unavailable_error");
    assert.equal(err.error.code, "overloaded");
    assert.match(err.error.message, /MAX_CONNECTIONS/);
    assert.equal(up.seen.length, 2, "a shed request reached A");
    closers.splice(0).forEach((close) => close());
    assert.equal(await a.text(), "data: first\n\ndata: last\n\n");
    assert.equal(await b.text(), "data: first\n\ndata: last\n\n");
    await waitFor(() => relay.app.inFlight === 0, 2000, "streams end");
    const after = await fetch(`${relay.url}/v1/models`);
    assert.equal(after.status, 200);
    await after.body?.cancel();
  } finally {
    closers.splice(0).forEach((close) => close());
    await relay.close();
    await up.close();
  }
});

for (const HTTP_SERVER of serversOfThisPass()) {
  deadline.test(`${HTTP_SERVER} server: out of descriptors, the relay stays alive, finishes its streams and accepts again`, async () => {
    const CHUNKS = 30;
    // The stream sends half its chunks, then holds until descriptors have run out: it is surely
    // in flight when accept fails, however slow the machine.
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const up = startUpstream(() => {
      let i = 0;
      return new Response(
        new ReadableStream<Uint8Array>({
          async pull(c) {
            if (i === CHUNKS / 2) await released;
            else if (i > 0) await delay(20);
            c.enqueue(enc.encode(`data: ${i}\n\n`));
            if (++i === CHUNKS) c.close();
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    });
    const { child, output, outDone, errText } = spawnCaptured("bash", {
      args: [
        "-c",
        `ulimit -n 200 && exec "$0" run --unstable-no-legacy-abort --allow-net=127.0.0.1 --allow-env "$1"`,
        Deno.execPath(),
        MAIN,
      ],
      env: {
        HOST: "127.0.0.1",
        PORT: "0",
        UPSTREAM_SERVER_A: up.url,
        UPSTREAM_KEEPWARM_SEC: "0",
        HTTP_SERVER,
      },
      clearEnv: true,
    });
    const flood: Deno.Conn[] = [];
    try {
      await waitFor(() => /"address":"http:\/\/127\.0\.0\.1:\d+"/.test(output()), 10_000, "start");
      const port = Number(/"address":"http:\/\/127\.0\.0\.1:(\d+)"/.exec(output())![1]);
      const stream = await fetch(`http://127.0.0.1:${port}/v1/messages`, {
        method: "POST",
        body: "{}",
      });
      const text = stream.text();
      // Idle connections until accept fails with EMFILE (the kernel backlog takes some more).
      for (let i = 0; i < 400; i++) {
        try {
          flood.push(await Deno.connect({ hostname: "127.0.0.1", port }));
        } catch {
          break;
        }
      }
      // Deno.serve's serve loop dies and is re-created; the relay's own server retries its accept.
      const failed = HTTP_SERVER === "deno" ? "listener failed" : "accepting a connection failed";
      await waitFor(() => output().includes(failed), 5000, "the accept failure log");
      assert.match(output(), /Too many open files/);
      release();
      // The stream in flight is served to the end, byte for byte.
      const expected = Array.from({ length: CHUNKS }, (_, i) => `data: ${i}\n\n`).join("");
      assert.equal(await text, expected);
      for (const c of flood.splice(0)) c.close();
      // New connections are served again once descriptors are free.
      const end = Date.now() + 10_000;
      let status = 0;
      while (Date.now() < end && status !== 200) {
        await delay(100);
        status = await fetch(`http://127.0.0.1:${port}/v1/models`)
          .then(async (r) => (await r.body?.cancel(), r.status), () => 0);
      }
      assert.equal(status, 200, "the relay did not come back");
      if (HTTP_SERVER === "deno") assert.match(output(), /listening again/);
      child.kill("SIGTERM");
      const st = await child.status;
      assert.equal(st.code, 0, await errText);
    } finally {
      release();
      for (const c of flood) c.close();
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await child.status;
      await outDone;
      const stderr = await errText;
      assert.ok(!/Uncaught/.test(stderr), stderr);
      await up.close();
    }
  });
}
