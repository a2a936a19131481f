/**
 * The dashboard in a real browser: headless Chromium opens `/dashboard` while
 * traffic flows, and the numbers must move, the last-requests table must fill, nothing may load
 * from another origin, and a hostile model name must show as text. Also writes the screenshot the
 * README shows (`docs/dashboard.png`, when missing or with `UPDATE_SCREENSHOT=1`).
 *
 * Chromium is driven by `browser_driver.ts` in a child process (Playwright needs `--allow-all`).
 * Needs Debian's `chromium` (`apt-get install -y chromium`; `.ci/run` installs it). Outside CI the
 * test is skipped, with a message saying so, when no browser is found; in CI (`CI=true`) it runs
 * and fails without one.
 */

import assert from "node:assert/strict";
import type { Job, Observation } from "./browser_driver.ts";
import { closedPort, delay, enc, startRelay, startUpstream } from "./helpers.ts";

const CHROMIUM = Deno.env.get("CHROMIUM_PATH") ?? "/usr/bin/chromium";
const DRIVER = new URL("./browser_driver.ts", import.meta.url).pathname;
const SCREENSHOT = new URL("../docs/dashboard.png", import.meta.url).pathname;

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

const inCi = Deno.env.get("CI") === "true";
const skip = !exists(CHROMIUM) && !inCi;
if (skip) {
  // deno-lint-ignore no-console
  console.warn(
    `dashboard_browser_test: SKIPPED, no browser at ${CHROMIUM}. Install Debian's chromium ` +
      "(apt-get install -y chromium) or set CHROMIUM_PATH. With CI=true this test never skips.",
  );
}

/** Runs the driver with `job` and returns what it observed. */
async function drive(job: Omit<Job, "executablePath">): Promise<Observation> {
  const full: Job = { executablePath: CHROMIUM, ...job };
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", DRIVER, JSON.stringify(full)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.ok(text !== "", `the browser driver printed nothing (exit ${out.code}): ${stderr}`);
  const obs = JSON.parse(text.split("\n").at(-1)!) as Observation;
  assert.equal(obs.error, undefined, `browser driver failed: ${obs.error}\n${stderr}`);
  return obs;
}

const HOSTILE_MODEL = `<img src=x onerror="window.__xss=1">`;

/** A fake Server A with a few models, some latency, a few errors and some streams. */
function fakeA() {
  let n = 0;
  return startUpstream(async (req) => {
    await req.text();
    const i = n++;
    await delay(15 + (i * 37) % 120);
    if (i % 17 === 16) return Response.json({ error: { message: "overloaded" } }, { status: 529 });
    if (i % 11 === 10) return Response.json({ error: { message: "bad" } }, { status: 500 });
    const model = i === 3
      ? HOSTILE_MODEL
      : ["claude-sonnet-4-5", "gpt-5-mini", "gemini-2.5-pro"][i % 3]!;
    if (i % 4 === 0) {
      const start = { type: "message_start", message: { model, usage: { input_tokens: 200 + i } } };
      const end = { type: "message_delta", usage: { output_tokens: 80 + i } };
      const body = new ReadableStream<Uint8Array>({
        async start(c) {
          c.enqueue(enc.encode(`data: ${JSON.stringify(start)}\n\n`));
          await delay(40);
          c.enqueue(enc.encode(`data: ${JSON.stringify(end)}\n\n`));
          c.close();
        },
      });
      return new Response(body, { headers: { "content-type": "text/event-stream" } });
    }
    return Response.json({
      model,
      usage: { prompt_tokens: 300 + i, completion_tokens: 50 + (i % 9) * 10 },
    });
  });
}

/** Sends ~15 requests a second until stopped, some on a UID route, with keys that must not show. */
function traffic(relayUrl: string) {
  let stop = false;
  let sent = 0;
  const loop = (async () => {
    while (!stop) {
      const i = sent++;
      const path = i % 9 === 8
        ? "/v1/unknown path"
        : i % 5 === 0
        ? "/u1/v1/messages"
        : "/v1/chat/completions";
      fetch(`${relayUrl}${path}?key=SECRET-query-key`, {
        method: "POST",
        headers: { authorization: "Bearer sk-SECRET-client-key" },
        body: "{}",
      }).then((r) => r.text()).catch(() => {});
      await delay(65);
    }
  })();
  return {
    async stop() {
      stop = true;
      await loop;
    },
  };
}

Deno.test({
  name: skip
    ? "dashboard browser test (SKIPPED: no Chromium found; install chromium)"
    : "the dashboard shows live numbers and fills its last-requests table while traffic flows",
  ignore: skip,
  async fn() {
    const up = fakeA();
    const relay = startRelay({
      UPSTREAM_SERVER_A: `http://127.0.0.1:${closedPort()},${up.url}`,
      UPSTREAM_DOWN_SEC: "300", // the dead first upstream stays "down" however slow the machine
      ROUTES: JSON.stringify({ "1": {} }),
    });
    const load = traffic(relay.url);
    try {
      const writeShot = Deno.env.get("UPDATE_SCREENSHOT") === "1" || !exists(SCREENSHOT);
      if (writeShot) await Deno.mkdir(new URL("../docs/", import.meta.url), { recursive: true });
      const obs = await drive({
        url: `${relay.url}/dashboard`,
        updates: 3,
        minRows: 25,
        // A little more history makes a more telling picture; only when writing the file.
        ...(writeShot ? { screenshot: SCREENSHOT, screenshotUpdates: 20 } : {}),
      });
      const first = obs.first!, last = obs.last!;
      assert.equal(obs.status, 200);

      // Numbers move as traffic flows.
      assert.ok(last.updates >= first.updates + 3, `${first.updates} → ${last.updates} updates`);
      assert.notEqual(last.requests, first.requests, "the request total did not change");
      assert.ok(Number(last.rps) > 0, `requests/s is ${last.rps}`);
      assert.match(last.ttfb, /^\d+(\.\d+)? · \d+(\.\d+)? ms$/);
      assert.match(last.relay, /^\d+(\.\d+)? · \d+(\.\d+)? ms$/);
      assert.match(last.errors, /^\d+\.\d %$/);
      assert.ok(parseFloat(last.tokens) > 0, `tokens/min ${last.tokens}`);
      assert.match(last.status, /^live/);

      // The table fills (up to 50 rows) with what happened, and no secret reaches the page.
      assert.ok(last.rows > first.rows && last.rows >= 25 && last.rows <= 50, `rows ${last.rows}`);
      assert.match(last.table, /\/v1\/chat\/completions/);
      assert.match(last.table, /claude-sonnet-4-5|gpt-5-mini|gemini-2\.5-pro/);
      assert.equal(obs.secretShown, false, "a secret reached the page");

      // Tokens by model and upstream health are shown; a model name from A stays text.
      assert.ok(last.modelRows >= 3, `${last.modelRows} model rows`);
      assert.deepEqual(last.upstreamStates, ["down", "up"]);
      assert.ok(last.models.includes(HOSTILE_MODEL), "the hostile model name is shown as text");
      assert.equal(obs.xss, false, "a model name ran as HTML");

      assert.ok(obs.inked! > 500, `only ${obs.inked} pixels drawn on the requests chart`);
      assert.deepEqual(obs.foreign, [], "the page loaded something from another origin");
      assert.deepEqual(obs.problems, [], "console errors, CSP violations or failed loads");
      if (writeShot) assert.ok(obs.screenshotBytes! > 20_000, "screenshot written");
    } finally {
      await load.stop();
      await relay.close();
      await up.close();
    }
  },
});

Deno.test({
  name: skip
    ? "dashboard browser login (SKIPPED: no Chromium found; install chromium)"
    : "with ADMIN_TOKEN a browser opens the dashboard with the token as a Basic password",
  ignore: skip,
  async fn() {
    const token = "browser-admin-token-0123";
    const relay = startRelay({
      UPSTREAM_SERVER_A: `http://127.0.0.1:${closedPort()}`,
      ADMIN_TOKEN: token,
    });
    try {
      const obs = await drive({
        url: `${relay.url}/dashboard`,
        credentials: { username: "ops", password: token },
        anonymousFirst: true,
        updates: 1,
      });
      // Without credentials: 401 with a Basic challenge, so a browser asks for the token.
      assert.equal(obs.anonymous?.status, 401);
      assert.match(obs.anonymous?.wwwAuthenticate ?? "", /Basic realm="proxy-forwarder"/);
      assert.equal(obs.status, 200);
      assert.match(obs.last!.status, /^live/);
      assert.deepEqual(obs.problems, []);
    } finally {
      await relay.close();
    }
  },
});
