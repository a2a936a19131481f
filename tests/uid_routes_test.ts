/**
 * Integration: `/u{n}/...` UID routes with key swap.
 */

import assert from "node:assert/strict";
import { deadline, startRelay, startUpstream } from "./helpers.ts";

const ACCESS = "client-access-key-1";
const API = "sk-server-a-key-XYZ";

function echo() {
  return startUpstream((req) =>
    Response.json({
      path: new URL(req.url).pathname,
      query: new URL(req.url).search,
      authorization: req.headers.get("authorization"),
      xApiKey: req.headers.get("x-api-key"),
      goog: req.headers.get("x-goog-api-key"),
    })
  );
}

deadline.test("/u1/v1/... goes to route 1's upstream as /v1/... with the access key swapped", async () => {
  const main = echo();
  const second = echo();
  const relay = startRelay({
    UPSTREAM_SERVER_A: main.url,
    ROUTES: JSON.stringify({
      "1": { upstream: second.url, apiKey: API, accessKey: ACCESS },
      "2": {},
    }),
  });
  try {
    const bearer = await (await fetch(`${relay.url}/u1/v1/chat/completions`, {
      method: "POST",
      body: "{}",
      headers: { authorization: `Bearer ${ACCESS}` },
    })).json();
    assert.deepEqual(bearer, {
      path: "/v1/chat/completions",
      query: "",
      authorization: `Bearer ${API}`,
      xApiKey: null,
      goog: null,
    });
    const xkey = await (await fetch(`${relay.url}/u1/v1/messages`, {
      method: "POST",
      body: "{}",
      headers: { "x-api-key": ACCESS },
    })).json();
    assert.equal(xkey.xApiKey, API);
    assert.equal(xkey.authorization, null, "a second credential was added");
    const q =
      await (await fetch(`${relay.url}/u1/v1beta/models/g:generateContent?alt=sse&key=${ACCESS}`, {
        method: "POST",
        body: "{}",
      })).json();
    assert.equal(q.query, `?alt=sse&key=${API}`);
    assert.equal(q.goog, null);
    assert.equal(main.seen.length, 0);
    // Route 2 has no keys: the client's own key passes through to the default upstream.
    const plain = await (await fetch(`${relay.url}/u2/v1/models`, {
      headers: { authorization: "Bearer own-key" },
    })).json();
    assert.equal(plain.authorization, "Bearer own-key");
    assert.equal(main.seen.length, 1);
  } finally {
    await relay.close();
    await main.close();
    await second.close();
  }
});

deadline.test("a wrong or missing access key gets 401 JSON and an unknown route 404, neither reaching A", async () => {
  const up = echo();
  const relay = startRelay({
    UPSTREAM_SERVER_A: up.url,
    ROUTES: JSON.stringify({ "1": { apiKey: API, accessKey: ACCESS } }),
  });
  try {
    const wrong = await fetch(`${relay.url}/u1/v1/models`, {
      headers: { authorization: "Bearer nope-nope" },
    });
    const wrongBody = await wrong.text();
    assert.equal(wrong.status, 401);
    assert.equal(JSON.parse(wrongBody).error.type, "authentication_error");
    assert.ok(!wrongBody.includes(API) && !wrongBody.includes(ACCESS));
    const missing = await fetch(`${relay.url}/u1/v1/models`);
    assert.equal(missing.status, 401);
    assert.equal((await missing.json()).error.code, "missing_api_key");
    const mixed = await fetch(`${relay.url}/u1/v1/models`, {
      headers: { authorization: `Bearer ${ACCESS}`, "x-api-key": "other" },
    });
    assert.equal(mixed.status, 401);
    await mixed.body?.cancel();
    const unknown = await fetch(`${relay.url}/u9/v1/models`, {
      headers: { authorization: `Bearer ${ACCESS}` },
    });
    assert.equal(unknown.status, 404);
    assert.equal((await unknown.json()).error.code, "unknown_route");
    assert.equal(up.seen.length, 0);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("ROUTES_FILE is read at start-up like ROUTES", async () => {
  const up = echo();
  const file = await Deno.makeTempFile({ suffix: ".json" });
  await Deno.writeTextFile(file, JSON.stringify({ "7": { apiKey: API, accessKey: ACCESS } }));
  const { parseConfig } = await import("../lib/config/config.ts");
  try {
    const config = parseConfig({ UPSTREAM_SERVER_A: up.url, ROUTES_FILE: file }, {
      readFile: (p) => Deno.readTextFileSync(p),
    });
    assert.equal(config.routes.get("7")?.apiKey, API);
  } finally {
    await Deno.remove(file);
    await up.close();
  }
});
