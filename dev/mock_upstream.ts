/**
 * @module mock_upstream
 * A tiny stand-in for Server A (claude-code-hub) for `deno task demo` and tests: OpenAI chat
 * completions, Anthropic messages and Gemini generateContent, streaming and not, with usage.
 *
 * Owns: nothing of the relay. Must never: be used as the relay's upstream outside demos and tests.
 */

const enc = new TextEncoder();

/** Options for the mock. */
export interface MockOptions {
  /** Delay between streamed events, ms. */
  eventDelayMs?: number;
  /** The answer's words. */
  words?: string[];
}

function lastUserText(body: Record<string, unknown>): string {
  const messages = Array.isArray(body.messages) ? body.messages : [];
  const last = messages[messages.length - 1] as { content?: unknown } | undefined;
  if (typeof last?.content === "string") return last.content;
  if (Array.isArray(last?.content)) {
    const t = last.content.find((p: { type?: string }) => p?.type === "text") as
      | { text?: string }
      | undefined;
    return t?.text ?? "";
  }
  return "";
}

function sse(events: Array<[string | null, unknown]>, delayMs: number): Response {
  const body = new ReadableStream<Uint8Array>({
    async start(ctrl) {
      for (const [event, data] of events) {
        const payload = typeof data === "string" ? data : JSON.stringify(data);
        ctrl.enqueue(enc.encode(`${event ? `event: ${event}\n` : ""}data: ${payload}\n\n`));
        if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
      }
      ctrl.close();
    },
  });
  return new Response(body, {
    headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
  });
}

function jsonResponse(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

/** The mock's request handler. */
export function mockHandler(options: MockOptions = {}): (req: Request) => Promise<Response> {
  const delay = options.eventDelayMs ?? 60;
  return async (req) => {
    const url = new URL(req.url);
    const path = url.pathname;
    if (path === "/v1/_ping") return jsonResponse({ status: "pong" });
    if (path === "/v1/models") {
      return jsonResponse({
        object: "list",
        data: [{ id: "mock-gpt", object: "model", owned_by: "mock" }, {
          id: "mock-claude",
          object: "model",
          owned_by: "mock",
        }],
      });
    }
    const body = req.method === "POST"
      ? await req.json().catch(() => ({})) as Record<string, unknown>
      : {};
    const prompt = lastUserText(body);
    const words = options.words ??
      `You said: ${prompt || "(nothing)"}. Hello from the mock Server A!`.split(" ");
    const model = typeof body.model === "string" ? body.model : "mock-model";
    const text = words.join(" ");
    const inTok = Math.max(1, Math.ceil(prompt.length / 4));
    const outTok = words.length;
    if (path === "/v1/chat/completions") {
      const id = "chatcmpl-mock";
      const created = Math.floor(Date.now() / 1000);
      if (body.stream === true) {
        const events: Array<[string | null, unknown]> = words.map((w, i) => [null, {
          id,
          object: "chat.completion.chunk",
          created,
          model,
          choices: [{ index: 0, delta: { content: (i ? " " : "") + w }, finish_reason: null }],
        }]);
        events.push([null, {
          id,
          object: "chat.completion.chunk",
          created,
          model,
          choices: [{ index: 0, delta: {}, finish_reason: "stop" }],
          usage: { prompt_tokens: inTok, completion_tokens: outTok, total_tokens: inTok + outTok },
        }]);
        events.push([null, "[DONE]"]);
        return sse(events, delay);
      }
      return jsonResponse({
        id,
        object: "chat.completion",
        created,
        model,
        choices: [{
          index: 0,
          message: { role: "assistant", content: text },
          finish_reason: "stop",
        }],
        usage: { prompt_tokens: inTok, completion_tokens: outTok, total_tokens: inTok + outTok },
      });
    }
    if (path === "/v1/messages") {
      const id = "msg_mock";
      const usage = { input_tokens: inTok, output_tokens: outTok };
      if (body.stream === true) {
        const events: Array<[string | null, unknown]> = [
          ["message_start", {
            type: "message_start",
            message: {
              id,
              type: "message",
              role: "assistant",
              model,
              content: [],
              stop_reason: null,
              stop_sequence: null,
              usage: { input_tokens: inTok, output_tokens: 1 },
            },
          }],
          ["content_block_start", {
            type: "content_block_start",
            index: 0,
            content_block: { type: "text", text: "" },
          }],
          ...words.map((w, i): [string, unknown] => ["content_block_delta", {
            type: "content_block_delta",
            index: 0,
            delta: { type: "text_delta", text: (i ? " " : "") + w },
          }]),
          ["content_block_stop", { type: "content_block_stop", index: 0 }],
          ["message_delta", {
            type: "message_delta",
            delta: { stop_reason: "end_turn", stop_sequence: null },
            usage: { output_tokens: outTok },
          }],
          ["message_stop", { type: "message_stop" }],
        ];
        return sse(events, delay);
      }
      return jsonResponse({
        id,
        type: "message",
        role: "assistant",
        model,
        content: [{ type: "text", text }],
        stop_reason: "end_turn",
        stop_sequence: null,
        usage,
      });
    }
    const gemini = /^\/v1beta\/models\/([^/:]+):(generateContent|streamGenerateContent)$/.exec(
      path,
    );
    if (gemini && req.method === "POST") {
      const usageMetadata = {
        promptTokenCount: inTok,
        candidatesTokenCount: outTok,
        totalTokenCount: inTok + outTok,
      };
      const chunk = (t: string, last: boolean) => ({
        candidates: [{
          content: { role: "model", parts: [{ text: t }] },
          ...(last ? { finishReason: "STOP" } : {}),
        }],
        modelVersion: gemini[1],
        ...(last ? { usageMetadata } : {}),
      });
      if (gemini[2] === "streamGenerateContent") {
        return sse(
          words.map((w, i) => [null, chunk((i ? " " : "") + w, i === words.length - 1)]),
          delay,
        );
      }
      return jsonResponse(chunk(text, true));
    }
    return jsonResponse({
      error: {
        message: `Mock Server A has no route ${path}`,
        type: "not_found_error",
        code: "not_found",
      },
    }, 404);
  };
}
