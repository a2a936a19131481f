import { deepStrictEqual, doesNotThrow, equal, ok, strictEqual } from "node:assert/strict";
import fc from "fast-check";
import {
  MAX_JSON_BYTES,
  MAX_SSE_EVENT_CHARS,
  mayMatter,
  type Usage,
  UsageTap,
} from "../lib/observe/usage.ts";
import { deadline } from "./helpers.ts";

const SSE = "text/event-stream; charset=utf-8";
const JSON_TYPE = "application/json";
const encoder = new TextEncoder();

/** Runs `body` through a fresh tap in the given chunks. */
function tapChunks(
  contentType: string | null,
  chunks: readonly Uint8Array[],
  contentEncoding: string | null = null,
): Usage | undefined {
  const tap = new UsageTap(contentType, contentEncoding);
  for (const chunk of chunks) tap.push(chunk);
  return tap.finish();
}

function tapText(contentType: string | null, text: string): Usage | undefined {
  return tapChunks(contentType, [encoder.encode(text)]);
}

/** SSE text with the exact framing the provider uses (`\n` or `\r\n`). */
function sse(events: ReadonlyArray<[event: string | null, data: string]>, eol = "\n"): string {
  return events
    .map(([event, data]) =>
      (event === null ? "" : `event: ${event}${eol}`) + `data: ${data}${eol}${eol}`
    )
    .join("");
}

// ---------------------------------------------------------------------------------------------
// Fixtures, modelled on captured responses of the real APIs (ids shortened, content trimmed).
// They deliberately contain multi-byte UTF-8 (2, 3 and 4 byte sequences) so that the
// every-split tests also cut characters in half.

const OPENAI_CHAT_STREAM = sse([
  [
    null,
    '{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}',
  ],
  [
    null,
    '{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{"content":"Héllo — 世界 🌍"},"logprobs":null,"finish_reason":null}],"usage":null}',
  ],
  [
    null,
    '{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}',
  ],
  [
    null,
    '{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":[],"usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}',
  ],
  [null, "[DONE]"],
]);
const OPENAI_CHAT_USAGE: Usage = {
  model: "gpt-4o-2024-08-06",
  inputTokens: 1117,
  outputTokens: 46,
  cacheReadTokens: 1024,
  totalTokens: 1163,
};

const RESPONSE_ID = "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654";
const MSG_ID = "msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654";
const responseObject = (status: string, output: string, usage: string) =>
  `{"id":"${RESPONSE_ID}","object":"response","created_at":1741290958,"status":"${status}","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.","max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":${output},"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":${usage},"user":null,"metadata":{}}`;
// The model's own text mentions usage-shaped JSON; it must not be mistaken for real usage.
const RESPONSES_TEXT = 'Voilà: {\\"usage\\": {\\"input_tokens\\": 999999}} — 完了 ✅';
const OPENAI_RESPONSES_STREAM = sse([
  [
    "response.created",
    `{"type":"response.created","sequence_number":0,"response":${
      responseObject("in_progress", "[]", "null")
    }}`,
  ],
  [
    "response.in_progress",
    `{"type":"response.in_progress","sequence_number":1,"response":${
      responseObject("in_progress", "[]", "null")
    }}`,
  ],
  [
    "response.output_item.added",
    `{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"${MSG_ID}","type":"message","status":"in_progress","role":"assistant","content":[]}}`,
  ],
  [
    "response.content_part.added",
    `{"type":"response.content_part.added","sequence_number":3,"item_id":"${MSG_ID}","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}`,
  ],
  [
    "response.output_text.delta",
    `{"type":"response.output_text.delta","sequence_number":4,"item_id":"${MSG_ID}","output_index":0,"content_index":0,"delta":"${RESPONSES_TEXT}","logprobs":[]}`,
  ],
  [
    "response.output_text.done",
    `{"type":"response.output_text.done","sequence_number":5,"item_id":"${MSG_ID}","output_index":0,"content_index":0,"text":"${RESPONSES_TEXT}","logprobs":[]}`,
  ],
  [
    "response.completed",
    `{"type":"response.completed","sequence_number":6,"response":${
      responseObject(
        "completed",
        `[{"id":"${MSG_ID}","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"${RESPONSES_TEXT}","annotations":[]}]}]`,
        '{"input_tokens":2037,"input_tokens_details":{"cached_tokens":1920},"output_tokens":311,"output_tokens_details":{"reasoning_tokens":256},"total_tokens":2348}',
      )
    }}`,
  ],
]);
const OPENAI_RESPONSES_USAGE: Usage = {
  model: "gpt-4.1-2025-04-14",
  inputTokens: 2037,
  outputTokens: 311,
  cacheReadTokens: 1920,
  totalTokens: 2348,
};

const ANTHROPIC_STREAM = sse([
  [
    "message_start",
    '{"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":1200,"cache_read_input_tokens":8000,"cache_creation":{"ephemeral_5m_input_tokens":1200,"ephemeral_1h_input_tokens":0},"output_tokens":2,"service_tier":"standard"}}}',
  ],
  [
    "content_block_start",
    '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
  ],
  ["ping", '{"type": "ping"}'],
  [
    "content_block_delta",
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Grüß dich — こんにちは"}}',
  ],
  [
    "content_block_delta",
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" 👋🏽"}}',
  ],
  ["content_block_stop", '{"type":"content_block_stop","index":0}'],
  [
    "message_delta",
    '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}',
  ],
  ["message_stop", '{"type":"message_stop"}'],
]);
const ANTHROPIC_USAGE: Usage = {
  model: "claude-sonnet-4-5-20250929",
  inputTokens: 472,
  outputTokens: 15,
  cacheReadTokens: 8000,
  cacheWriteTokens: 1200,
  totalTokens: 487,
};

// Gemini frames its SSE with CRLF, and repeats usageMetadata on every chunk.
const GEMINI_STREAM = sse(
  [
    [
      null,
      '{"candidates": [{"content": {"parts": [{"text": "Ein kurzes Gedicht über den Mond 🌙"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 2056,"totalTokenCount": 2056,"cachedContentTokenCount": 2048,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 2056}]},"modelVersion": "gemini-2.5-flash","responseId": "mG3PaNbnHoWGz7IPmJmy-Qc"}',
    ],
    [
      null,
      '{"candidates": [{"content": {"parts": [{"text": " — 静かな夜"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 2056,"candidatesTokenCount": 64,"totalTokenCount": 2941,"cachedContentTokenCount": 2048,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 2056}],"thoughtsTokenCount": 821},"modelVersion": "gemini-2.5-flash","responseId": "mG3PaNbnHoWGz7IPmJmy-Qc"}',
    ],
    [
      null,
      '{"candidates": [{"content": {"parts": [{"text": "."}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 2056,"candidatesTokenCount": 120,"totalTokenCount": 2997,"cachedContentTokenCount": 2048,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 2056}],"cacheTokensDetails": [{"modality": "TEXT","tokenCount": 2048}],"thoughtsTokenCount": 821},"modelVersion": "gemini-2.5-flash","responseId": "mG3PaNbnHoWGz7IPmJmy-Qc"}',
    ],
  ],
  "\r\n",
);
const GEMINI_USAGE: Usage = {
  model: "gemini-2.5-flash",
  inputTokens: 2056,
  outputTokens: 941,
  cacheReadTokens: 2048,
  totalTokens: 2997,
};

const STREAMS: ReadonlyArray<[name: string, body: string, expected: Usage]> = [
  ["OpenAI chat completions", OPENAI_CHAT_STREAM, OPENAI_CHAT_USAGE],
  ["OpenAI responses", OPENAI_RESPONSES_STREAM, OPENAI_RESPONSES_USAGE],
  ["Anthropic messages", ANTHROPIC_STREAM, ANTHROPIC_USAGE],
  ["Gemini streamGenerateContent", GEMINI_STREAM, GEMINI_USAGE],
];

// ---------------------------------------------------------------------------------------------
// Streams

for (const [name, body, expected] of STREAMS) {
  Deno.test(`UsageTap reads ${name} stream usage when the stream arrives in one chunk`, () => {
    deepStrictEqual(tapText(SSE, body), expected);
  });

  Deno.test(`UsageTap reads ${name} stream usage when split at every byte boundary`, () => {
    const bytes = encoder.encode(body);
    ok(bytes.length > body.length, "fixture must contain multi-byte UTF-8");
    for (let i = 0; i <= bytes.length; i++) {
      const got = tapChunks(SSE, [bytes.subarray(0, i), bytes.subarray(i)]);
      deepStrictEqual(got, expected, `split at byte ${i}`);
    }
  });

  Deno.test(`UsageTap reads ${name} stream usage when fed one byte at a time`, () => {
    const bytes = encoder.encode(body);
    const chunks = Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1));
    deepStrictEqual(tapChunks(SSE, chunks), expected);
  });
}

Deno.test("UsageTap gives the same usage when a stream is chunked arbitrarily", () => {
  const cases = STREAMS.map(([, body, expected]) => [encoder.encode(body), expected] as const);
  fc.assert(
    fc.property(
      fc.constantFrom(...cases),
      fc.uniqueArray(fc.nat(), { maxLength: 40 }),
      ([bytes, expected], rawCuts) => {
        const cuts = [...new Set(rawCuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        const chunks: Uint8Array[] = [];
        let start = 0;
        for (const cut of [...cuts, bytes.length]) {
          chunks.push(bytes.subarray(start, cut));
          start = cut;
        }
        deepStrictEqual(tapChunks(SSE, chunks), expected);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("UsageTap decodes a multi-byte model name when a chunk boundary splits a character", () => {
  const model = "modèle-测试-🚀";
  const body = sse([[
    null,
    `{"model":"${model}","usage":{"prompt_tokens":3,"completion_tokens":4}}`,
  ]]);
  const bytes = encoder.encode(body);
  // Cut inside each multi-byte sequence: after the first byte of è (2 bytes), 测 (3), 🚀 (4).
  for (const char of ["è", "测", "🚀"]) {
    const at = bytes.findIndex((_, i) =>
      new TextDecoder().decode(bytes.subarray(i, i + encoder.encode(char).length)) === char
    );
    ok(at > 0);
    for (let k = 1; k < encoder.encode(char).length; k++) {
      const got = tapChunks(SSE, [bytes.subarray(0, at + k), bytes.subarray(at + k)]);
      deepStrictEqual(got, { model, inputTokens: 3, outputTokens: 4, totalTokens: 7 });
    }
  }
});

Deno.test("UsageTap takes the latest Anthropic output count when several message_delta events arrive", () => {
  const body = sse([
    [
      "message_start",
      '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-opus-4-1-20250805","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}',
    ],
    [
      "message_delta",
      '{"type":"message_delta","delta":{"stop_reason":null,"stop_sequence":null},"usage":{"output_tokens":40}}',
    ],
    [
      "message_delta",
      '{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":95}}',
    ],
  ]);
  deepStrictEqual(tapText(SSE, body), {
    model: "claude-opus-4-1-20250805",
    inputTokens: 12,
    outputTokens: 95,
    cacheReadTokens: 0,
    cacheWriteTokens: 0,
    totalTokens: 107,
  });
});

Deno.test("UsageTap keeps message_start input counts when a message_delta repeats them as 0", () => {
  const body = sse([
    [
      "message_start",
      '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-haiku-4-5","usage":{"input_tokens":300,"cache_creation_input_tokens":0,"cache_read_input_tokens":5000,"output_tokens":1}}}',
    ],
    [
      "message_delta",
      '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":0,"cache_read_input_tokens":0,"output_tokens":22}}',
    ],
  ]);
  deepStrictEqual(tapText(SSE, body), {
    model: "claude-haiku-4-5",
    inputTokens: 300,
    outputTokens: 22,
    cacheReadTokens: 5000,
    cacheWriteTokens: 0,
    totalTokens: 322,
  });
});

Deno.test("UsageTap reports only the model when an OpenAI stream carries no usage", () => {
  const withoutUsage = OPENAI_CHAT_STREAM.split("\n\n").filter((e) => !e.includes('"usage":{'))
    .join("\n\n");
  deepStrictEqual(tapText(SSE, withoutUsage), { model: "gpt-4o-2024-08-06" });
});

Deno.test("UsageTap counts the last event when the stream ends without a blank line", () => {
  const truncated = ANTHROPIC_STREAM.slice(0, ANTHROPIC_STREAM.indexOf("event: message_stop"))
    .trimEnd();
  ok(!truncated.endsWith("\n"));
  deepStrictEqual(tapText(SSE, truncated), ANTHROPIC_USAGE);
});

Deno.test("UsageTap ignores a cut-off final event when its JSON is incomplete", () => {
  const cut = OPENAI_CHAT_STREAM.slice(0, OPENAI_CHAT_STREAM.indexOf('"total_tokens"'));
  deepStrictEqual(tapText(SSE, cut), { model: "gpt-4o-2024-08-06" });
});

Deno.test("UsageTap skips invalid JSON events when later events are valid", () => {
  const body = "data: {not json\n\n" + 'data: {"usage": {oops}\n\n' + OPENAI_CHAT_STREAM;
  deepStrictEqual(tapText(SSE, body), OPENAI_CHAT_USAGE);
});

Deno.test("UsageTap skips an oversized SSE event when usage follows it", () => {
  const huge = "x".repeat(MAX_SSE_EVENT_CHARS + 1024);
  const body = sse([
    [
      "message_start",
      '{"type":"message_start","message":{"model":"claude-sonnet-4-5","usage":{"input_tokens":7,"output_tokens":1}}}',
    ],
    ["content_block_delta", `{"type":"content_block_delta","delta":{"text":"${huge}"}}`],
    ["message_delta", '{"type":"message_delta","delta":{},"usage":{"output_tokens":9000}}'],
  ]);
  const bytes = encoder.encode(body);
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += 65536) chunks.push(bytes.subarray(i, i + 65536));
  deepStrictEqual(tapChunks(SSE, chunks), {
    model: "claude-sonnet-4-5",
    inputTokens: 7,
    outputTokens: 9000,
    totalTokens: 9007,
  });
});

// ---------------------------------------------------------------------------------------------
// Non-streamed JSON

Deno.test("UsageTap reads OpenAI chat completion usage when the body is JSON", () => {
  const body = JSON.stringify({
    id: "chatcmpl-abc",
    object: "chat.completion",
    created: 1741569952,
    model: "gpt-4o-mini-2024-07-18",
    choices: [{
      index: 0,
      message: { role: "assistant", content: "Bonjour ! 😊", refusal: null, annotations: [] },
      logprobs: null,
      finish_reason: "stop",
    }],
    usage: {
      prompt_tokens: 19,
      completion_tokens: 10,
      total_tokens: 29,
      prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
      completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0 },
    },
    service_tier: "default",
    system_fingerprint: "fp_06737a9306",
  });
  deepStrictEqual(tapText("application/json; charset=utf-8", body), {
    model: "gpt-4o-mini-2024-07-18",
    inputTokens: 19,
    outputTokens: 10,
    cacheReadTokens: 0,
    totalTokens: 29,
  });
});

Deno.test("UsageTap reads OpenAI Responses usage when the body is JSON", () => {
  const body = responseObject(
    "completed",
    "[]",
    '{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}',
  );
  deepStrictEqual(tapText(JSON_TYPE, body), {
    model: "gpt-4.1-2025-04-14",
    inputTokens: 36,
    outputTokens: 87,
    cacheReadTokens: 0,
    totalTokens: 123,
  });
});

Deno.test("UsageTap reads Anthropic message usage when the body is JSON", () => {
  const body = JSON.stringify({
    id: "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    type: "message",
    role: "assistant",
    model: "claude-sonnet-4-5-20250929",
    content: [{ type: "text", text: "Hi! My name is Claude." }],
    stop_reason: "end_turn",
    stop_sequence: null,
    usage: {
      input_tokens: 2095,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 1800,
      output_tokens: 503,
      service_tier: "standard",
    },
  });
  deepStrictEqual(tapText(JSON_TYPE, body), {
    model: "claude-sonnet-4-5-20250929",
    inputTokens: 2095,
    outputTokens: 503,
    cacheReadTokens: 1800,
    cacheWriteTokens: 0,
    totalTokens: 2598,
  });
});

Deno.test("UsageTap reads Gemini generateContent usage when the body is JSON", () => {
  const body = JSON.stringify(
    {
      candidates: [{
        content: { parts: [{ text: "Hallo Welt" }], role: "model" },
        finishReason: "STOP",
        index: 0,
      }],
      usageMetadata: {
        promptTokenCount: 8,
        candidatesTokenCount: 3,
        totalTokenCount: 40,
        promptTokensDetails: [{ modality: "TEXT", tokenCount: 8 }],
        thoughtsTokenCount: 29,
      },
      modelVersion: "gemini-2.5-pro",
      responseId: "abc",
    },
    null,
    2,
  );
  deepStrictEqual(tapText(JSON_TYPE, body), {
    model: "gemini-2.5-pro",
    inputTokens: 8,
    outputTokens: 32,
    totalTokens: 40,
  });
});

Deno.test("UsageTap reads the last Gemini chunk when streamGenerateContent answers a JSON array", () => {
  const chunks = GEMINI_STREAM.split("\r\n\r\n").filter((s) => s !== "").map((s) =>
    s.slice("data: ".length)
  );
  const body = `[${chunks.join(",\r\n")}]`;
  const bytes = encoder.encode(body);
  for (let i = 0; i <= bytes.length; i += 7) {
    deepStrictEqual(tapChunks(JSON_TYPE, [bytes.subarray(0, i), bytes.subarray(i)]), GEMINI_USAGE);
  }
});

Deno.test("UsageTap reads JSON usage when the body arrives one byte at a time", () => {
  const bytes = encoder.encode('{"model":"m-é","usage":{"input_tokens":1,"output_tokens":2}}');
  const chunks = Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1));
  deepStrictEqual(tapChunks(JSON_TYPE, chunks), {
    model: "m-é",
    inputTokens: 1,
    outputTokens: 2,
    totalTokens: 3,
  });
});

Deno.test("UsageTap gives up when a JSON body exceeds the size limit", () => {
  const padding = "a".repeat(MAX_JSON_BYTES);
  const body =
    `{"model":"gpt-4o","padding":"${padding}","usage":{"prompt_tokens":1,"completion_tokens":1}}`;
  const bytes = encoder.encode(body);
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += 65536) chunks.push(bytes.subarray(i, i + 65536));
  strictEqual(tapChunks(JSON_TYPE, chunks), undefined);
});

Deno.test("UsageTap.finishWith gives what push then finish give, for JSON and streams", () => {
  const json = encoder.encode(
    '{"model":"m-é","usage":{"prompt_tokens":4,"completion_tokens":5,"total_tokens":9}}',
  );
  const cases = [
    [JSON_TYPE, json] as const,
    [JSON_TYPE, encoder.encode('{"model":"m","usage":')] as const,
    [JSON_TYPE, new Uint8Array(0)] as const,
    ...STREAMS.map(([, body]) => [SSE, encoder.encode(body)] as const),
  ];
  fc.assert(
    fc.property(fc.constantFrom(...cases), fc.nat(), ([type, bytes], rawCut) => {
      const cut = rawCut % (bytes.length + 1);
      const expected = tapChunks(type, [bytes.subarray(0, cut), bytes.subarray(cut)]);
      const tap = new UsageTap(type, null);
      tap.push(bytes.subarray(0, cut));
      const last = bytes.slice(cut);
      deepStrictEqual(tap.finishWith(last), expected);
      // Read before it returned: the chunk may be reused at once.
      last.fill(0x20);
      deepStrictEqual(tap.finish(), expected);
    }),
    { numRuns: 300 },
  );
  deepStrictEqual(new UsageTap(JSON_TYPE, null).finishWith(json), {
    model: "m-é",
    inputTokens: 4,
    outputTokens: 5,
    totalTokens: 9,
  });
  strictEqual(new UsageTap(JSON_TYPE, "gzip").finishWith(json), undefined);
  const oversized = new Uint8Array(MAX_JSON_BYTES + 1).fill(0x20);
  oversized.set(json);
  strictEqual(new UsageTap(JSON_TYPE, null).finishWith(oversized), undefined);
});

// ---------------------------------------------------------------------------------------------
// Refusals and robustness

deadline.test("UsageTap returns undefined when the body is gzip-encoded", async () => {
  const json = encoder.encode(
    '{"model":"gpt-4o","usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}',
  );
  const gz = new Uint8Array(
    await new Response(new Blob([json]).stream().pipeThrough(new CompressionStream("gzip")))
      .arrayBuffer(),
  );
  strictEqual(tapChunks(JSON_TYPE, [gz], "gzip"), undefined);
  // Even plain bytes are not read when the header says they are encoded.
  strictEqual(tapChunks(JSON_TYPE, [json], "gzip"), undefined);
  strictEqual(tapChunks(SSE, [encoder.encode(OPENAI_CHAT_STREAM)], "br"), undefined);
  strictEqual(tapChunks(SSE, [encoder.encode(OPENAI_CHAT_STREAM)], " GZIP "), undefined);
});

Deno.test("UsageTap reads the body when content-encoding is identity", () => {
  const bytes = encoder.encode(OPENAI_CHAT_STREAM);
  deepStrictEqual(tapChunks(SSE, [bytes], "identity"), OPENAI_CHAT_USAGE);
  deepStrictEqual(tapChunks("Text/Event-Stream", [bytes], "Identity"), OPENAI_CHAT_USAGE);
});

Deno.test("UsageTap returns undefined when the content type is unknown or missing", () => {
  strictEqual(tapText("text/plain", OPENAI_CHAT_STREAM), undefined);
  strictEqual(tapText(null, '{"model":"x","usage":{"input_tokens":1}}'), undefined);
  strictEqual(tapText("application/octet-stream", '{"model":"x"}'), undefined);
});

Deno.test("UsageTap returns undefined when the body is garbage", () => {
  strictEqual(tapText(JSON_TYPE, "<html>502 Bad Gateway</html>"), undefined);
  strictEqual(tapText(JSON_TYPE, ""), undefined);
  strictEqual(tapText(JSON_TYPE, "null"), undefined);
  strictEqual(
    tapText(JSON_TYPE, '{"usage":{"prompt_tokens":"12","completion_tokens":-1}}'),
    undefined,
  );
  strictEqual(tapText(SSE, "data: [DONE]\n\n"), undefined);
  strictEqual(tapText(SSE, ': keep-alive\n\nretry: 10\n\ndata: {"usage":null}\n\n'), undefined);
  strictEqual(tapChunks(SSE, [new Uint8Array([0xff, 0xfe, 0x00, 0x80])]), undefined);
});

Deno.test("UsageTap never throws when pushed arbitrary bytes", () => {
  fc.assert(
    fc.property(
      fc.constantFrom(SSE, JSON_TYPE, "text/plain", null),
      fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 8 }),
      (contentType, chunks) => {
        doesNotThrow(() => tapChunks(contentType, chunks));
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("UsageTap never throws when pushed arbitrary SSE-shaped text", () => {
  const line = fc.oneof(
    fc.string().map((s) => `data: ${s}`),
    fc.constantFrom(
      'data: {"usage":{"input_tokens":1e999}}',
      'data: {"usage":{"prompt_tokens":null}}',
      'data: {"type":"message_start","message":null}',
      'data: {"type":"response.completed","response":[]}',
      'data: {"usageMetadata":[],"modelVersion":7}',
      'data: [{"model":{}}]',
      "event: x",
      "",
      ":",
    ),
  );
  fc.assert(
    fc.property(fc.array(line, { maxLength: 12 }), fc.nat(), (lines, cut) => {
      const bytes = encoder.encode(lines.join("\n"));
      const at = cut % (bytes.length + 1);
      doesNotThrow(() => tapChunks(SSE, [bytes.subarray(0, at), bytes.subarray(at)]));
    }),
    { numRuns: 500 },
  );
});

Deno.test("UsageTap does not depend on a chunk after push when the caller reuses its buffer", () => {
  for (
    const [contentType, body, expected] of [[SSE, OPENAI_CHAT_STREAM, OPENAI_CHAT_USAGE], [
      JSON_TYPE,
      '{"model":"m","usage":{"input_tokens":1,"output_tokens":2}}',
      { model: "m", inputTokens: 1, outputTokens: 2, totalTokens: 3 },
    ]] as const
  ) {
    const bytes = encoder.encode(body);
    const tap = new UsageTap(contentType, null);
    const half = bytes.length >> 1;
    const chunk = bytes.slice(0, half);
    tap.push(chunk);
    chunk.fill(0x20); // a downstream consumer scribbles over (or detaches) the buffer
    tap.push(bytes.subarray(half));
    deepStrictEqual(tap.finish(), expected);
  }
});

Deno.test("UsageTap ignores pushes after finish and repeats its result when finished twice", () => {
  const tap = new UsageTap(SSE, null);
  tap.push(encoder.encode(ANTHROPIC_STREAM));
  const first = tap.finish();
  tap.push(encoder.encode(OPENAI_CHAT_STREAM));
  deepStrictEqual(first, ANTHROPIC_USAGE);
  equal(tap.finish(), first);
});

Deno.test("mayMatter skips only chunks that visibly name no usage object (and no model while one is wanted)", () => {
  const e = (s: string) => new TextEncoder().encode(s);
  // Skipped: a content delta whose usage is null, model already known.
  equal(mayMatter(e('data: {"model":"m","usage":null,"choices":[]}\n\n'), false), false);
  equal(mayMatter(e('data: {"delta":{"text":"the usage of"}}\n\n'), false), false);
  // Kept: an object value, with or without blanks, usageMetadata, and anything cut off.
  equal(mayMatter(e('data: {"usage":{"prompt_tokens":1}}\n\n'), false), true);
  equal(mayMatter(e('data: {"usage" :\t{"x":1}}\n\n'), false), true);
  equal(mayMatter(e('data: {"usageMetadata": {"x":1}}\n\n'), false), true);
  equal(mayMatter(e('data: {"usage"'), false), true);
  equal(mayMatter(e('data: {"usage":\ndata: {"x":1}}\n\n'), false), true);
  // A model is wanted until one is known.
  equal(mayMatter(e('data: {"model":"m","usage":null}\n\n'), true), true);
});

Deno.test("UsageTap gives the same result with content deltas skipped as a stream it must parse whole", () => {
  const enc = new TextEncoder();
  const events = [
    'data: {"id":"1","model":"gpt-x","choices":[{"delta":{"content":"a"}}],"usage":null}\n\n',
    'data: {"id":"1","model":"gpt-x","choices":[{"delta":{"content":"b"}}],"usage":null}\n\n',
    'data: {"id":"1","model":"gpt-x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n',
    "data: [DONE]\n\n",
  ];
  const perEvent = new UsageTap("text/event-stream", null);
  for (const ev of events) perEvent.push(enc.encode(ev));
  // One chunk cut inside an event: no skipping possible, every event parsed.
  const all = enc.encode(events.join(""));
  const cut = new UsageTap("text/event-stream", null);
  cut.push(all.subarray(0, 7));
  cut.push(all.subarray(7));
  deepStrictEqual(perEvent.finish(), cut.finish());
  deepStrictEqual(perEvent.finish()?.inputTokens, 3);
  deepStrictEqual(perEvent.finish()?.model, "gpt-x");
});
