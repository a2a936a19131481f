/**
 * Integration: the official OpenAI and Anthropic SDKs work through the relay, streaming and not,
 * against the mock Server A (over HTTP/1.1, and over HTTPS with HTTP/2) — the "change only the
 * base URL" promise.
 */

import assert from "node:assert/strict";
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { mockHandler } from "../dev/mock_upstream.ts";
import { deadline, startRelay, startUpstream } from "./helpers.ts";
import { withCert } from "./tls_fixture.ts";

function setup() {
  const up = startUpstream(mockHandler({ eventDelayMs: 5 }));
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  return {
    up,
    relay,
    async close() {
      await relay.close();
      await up.close();
    },
  };
}

/** A chat completion, whole and streamed, through `baseURL`; returns the whole one. */
async function openaiChat(baseURL: string) {
  const client = new OpenAI({ apiKey: "sk-test", baseURL, maxRetries: 0 });
  const done = await client.chat.completions.create({
    model: "mock-gpt",
    messages: [{ role: "user", content: "ping" }],
  });
  assert.equal(done.choices[0]?.message.content, "You said: ping. Hello from the mock Server A!");
  const stream = await client.chat.completions.create({
    model: "mock-gpt",
    messages: [{ role: "user", content: "ping" }],
    stream: true,
  });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
  assert.equal(text, "You said: ping. Hello from the mock Server A!");
  return { client, done };
}

deadline.test("the openai SDK gets the same completion and stream through the relay", async () => {
  const s = setup();
  try {
    const { client, done } = await openaiChat(`${s.relay.url}/v1`);
    assert.equal(done.usage?.total_tokens, 10);
    assert.equal(s.up.seen.at(-1)!.headers.get("authorization"), "Bearer sk-test");
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ["mock-gpt", "mock-claude"]);
  } finally {
    await s.close();
  }
});

deadline.test("the anthropic SDK gets the same message and stream through the relay", async () => {
  const s = setup();
  try {
    const client = new Anthropic({ apiKey: "sk-ant-test", baseURL: s.relay.url, maxRetries: 0 });
    const msg = await client.messages.create({
      model: "mock-claude",
      max_tokens: 50,
      messages: [{ role: "user", content: "hi" }],
    });
    assert.equal(
      msg.content[0]?.type === "text" ? msg.content[0].text : "",
      "You said: hi. Hello from the mock Server A!",
    );
    // SDK versions differ in where they put the key; it must arrive as sent, once.
    const h = s.up.seen.at(-1)!.headers;
    const keys = [h.get("x-api-key"), h.get("authorization")].filter((v) => v !== null);
    assert.deepEqual(keys.map((k) => k!.replace(/^Bearer /, "")), ["sk-ant-test"]);
    assert.ok(s.up.seen.at(-1)!.headers.get("anthropic-version"));
    const stream = client.messages.stream({
      model: "mock-claude",
      max_tokens: 50,
      messages: [{ role: "user", content: "hi" }],
    });
    let text = "";
    stream.on("text", (t) => (text += t));
    const final = await stream.finalMessage();
    assert.equal(text, "You said: hi. Hello from the mock Server A!");
    assert.equal(final.usage.output_tokens, 9);
  } finally {
    await s.close();
  }
});

withCert.test("both SDKs, streaming and not, through the relay to an HTTPS Server A that speaks HTTP/2", async ({ tls }) => {
  const seen: Headers[] = [];
  const mock = mockHandler({ eventDelayMs: 5 });
  const up = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: tls.cert, key: tls.key, onListen() {} },
    (req) => {
      seen.push(req.headers);
      return mock(req);
    },
  );
  const relay = startRelay({ UPSTREAM_SERVER_A: `https://127.0.0.1:${up.addr.port}` }, {
    caCerts: [tls.cert],
  });
  try {
    await openaiChat(`${relay.url}/v1`);
    assert.equal(seen.at(-1)!.get("authorization"), "Bearer sk-test");

    const anthropic = new Anthropic({ apiKey: "sk-ant-test", baseURL: relay.url, maxRetries: 0 });
    const msg = anthropic.messages.stream({
      model: "mock-claude",
      max_tokens: 50,
      messages: [{ role: "user", content: "hi" }],
    });
    let said = "";
    msg.on("text", (t) => (said += t));
    const final = await msg.finalMessage();
    assert.equal(said, "You said: hi. Hello from the mock Server A!");
    assert.equal(final.usage.output_tokens, 9);

    // The point of this test: all of it went over the relay's own HTTP/2 client.
    const info = await (await fetch(`${relay.url}/debug/info`)).json();
    const pool = Object.values(info.pools as Record<string, Record<string, unknown>>)[0]!;
    assert.equal(pool.protocol, "h2");
  } finally {
    await relay.close();
    await up.shutdown();
  }
});
