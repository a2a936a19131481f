/**
 * A fake Server A on 127.0.0.1 for the real-client tests, written on raw TCP so that every byte it
 * receives is recorded and every byte it sends is chosen: Anthropic Messages (SSE and JSON), OpenAI
 * Responses (SSE, and WebSocket with permessage-deflate, or a 426 refusal), Gemini
 * (`:generateContent`, `:streamGenerateContent?alt=sse`).
 *
 * A request whose body contains {@link HOLD} gets the start of its answer and then nothing more:
 * the stream stays open until the peer closes it, so a test can kill the client mid-stream and see
 * when A's side closes.
 */

import {
  acceptKey,
  concatBytes,
  Deflate,
  header,
  parseFrames,
  parseRequestAt,
  serverFrame,
  type WireRequest,
  writeAll,
} from "./http_wire.ts";

const utf8 = new TextEncoder();
const text = new TextDecoder();

/** The answer every format streams: non-ASCII on purpose (split across events by code point). */
export const ANSWER = "Relay check ok: ünïcödé ✓ 中文 🚀 end.";

/** A prompt containing this makes A hold its answer open after the first piece. */
export const HOLD = "HOLD-THE-STREAM";

/** One request as A saw it. */
export interface SeenRequest {
  n: number;
  method: string;
  target: string;
  headers: Array<[string, string]>;
  body: Uint8Array;
  /** When it arrived (ms, `performance.now()`). */
  at: number;
  /** When A's answer finished or the peer closed (ms), null while open. */
  endedAt: number | null;
  /** How it ended. */
  end: "answered" | "peer_closed" | null;
  /** Whether A held the answer open (HOLD). */
  held: boolean;
  /** When A sent the first piece of a held answer (ms). */
  firstPieceAt: number | null;
  /** A answered with an event stream. */
  sse: boolean;
  /** WebSocket sessions: the bytes A read after the 101, and the messages they carried. */
  ws: { bytesIn: Uint8Array[]; messages: string[]; extensions: string | null } | null;
}

export interface FakeA {
  url: string;
  port: number;
  requests: SeenRequest[];
  /** How A answers a WebSocket upgrade on /v1/responses: accept it, or refuse with 426. */
  websocket: "accept" | 426;
  /** Requests other than health probes. */
  api(): SeenRequest[];
  close(): void;
}

export function startFakeA(): FakeA {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const conns = new Set<Deno.Conn>();
  const state: FakeA = {
    url: `http://127.0.0.1:${port}`,
    port,
    requests: [],
    websocket: "accept",
    api: () => state.requests.filter((r) => !r.target.startsWith("/v1/_ping")),
    close() {
      try {
        listener.close();
      } catch { /* closed */ }
      for (const c of conns) closeQuietly(c);
    },
  };
  (async () => {
    try {
      for await (const conn of listener) {
        conns.add(conn);
        serveConn(conn, state).catch(() => {}).finally(() => {
          conns.delete(conn);
          closeQuietly(conn);
        });
      }
    } catch { /* listener closed */ }
  })();
  return state;
}

function closeQuietly(c: Deno.Conn): void {
  try {
    c.close();
  } catch { /* closed */ }
}

async function serveConn(conn: Deno.Conn, state: FakeA): Promise<void> {
  let buf: Uint8Array = new Uint8Array(0);
  const chunk = new Uint8Array(64 * 1024);
  while (true) {
    const req = parseRequestAt(buf, 0);
    if (req === null) {
      const n = await conn.read(chunk);
      if (n === null) return;
      buf = concatBytes([buf, chunk.subarray(0, n)]);
      continue;
    }
    buf = buf.slice(req.end);
    const seen: SeenRequest = {
      n: state.requests.length,
      method: req.method,
      target: req.target,
      headers: req.headers,
      body: req.body,
      at: performance.now(),
      endedAt: null,
      end: null,
      held: text.decode(req.body).includes(HOLD),
      firstPieceAt: null,
      sse: false,
      ws: null,
    };
    state.requests.push(seen);
    if (header(req, "upgrade")?.toLowerCase() === "websocket") {
      if (state.websocket === 426) {
        await json(conn, 426, {
          error: { message: "WebSocket not supported here", type: "invalid_request_error" },
        });
        finish(seen, "answered");
        continue;
      }
      return await webSocket(conn, req, seen, buf);
    }
    const keep = await answer(conn, req, seen);
    if (!keep) return;
  }
}

function finish(seen: SeenRequest, how: "answered" | "peer_closed"): void {
  if (seen.end !== null) return;
  seen.end = how;
  seen.endedAt = performance.now();
}

async function json(conn: Deno.Conn, status: number, body: unknown): Promise<void> {
  const bytes = utf8.encode(JSON.stringify(body));
  await writeAll(
    conn,
    concatBytes([
      utf8.encode(
        `HTTP/1.1 ${status} ${status === 200 ? "OK" : "Error"}\r\n` +
          `content-type: application/json\r\ncontent-length: ${bytes.byteLength}\r\n\r\n`,
      ),
      bytes,
    ]),
  );
}

/** Splits the answer into pieces at code-point boundaries. */
function pieces(): string[] {
  const cps = Array.from(ANSWER);
  const out: string[] = [];
  for (let i = 0; i < cps.length; i += 5) out.push(cps.slice(i, i + 5).join(""));
  return out;
}

type Sse = Array<[string | null, unknown]>;

/** Streams `events` as chunked SSE, one chunk each, a few ms apart; holds after `holdAfter`. */
async function sse(
  conn: Deno.Conn,
  seen: SeenRequest,
  events: Sse,
  holdAfter: number,
): Promise<boolean> {
  seen.sse = true;
  await writeAll(
    conn,
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n" +
      "transfer-encoding: chunked\r\n\r\n",
  );
  for (let i = 0; i < events.length; i++) {
    if (seen.held && i === holdAfter) return await hold(conn, seen);
    const [event, data] = events[i]!;
    const payload = typeof data === "string" ? data : JSON.stringify(data);
    const bytes = utf8.encode(`${event ? `event: ${event}\n` : ""}data: ${payload}\n\n`);
    const last = i === events.length - 1;
    // The last event and the end of the body go out together, as a server flushing its final
    // write does: a client that stops reading at its "done" event then finds the body complete.
    await writeAll(
      conn,
      concatBytes([
        utf8.encode(bytes.byteLength.toString(16) + "\r\n"),
        bytes,
        utf8.encode(last ? "\r\n0\r\n\r\n" : "\r\n"),
      ]),
    );
    if (!last) await new Promise((r) => setTimeout(r, 3));
  }
  finish(seen, "answered");
  return true;
}

/** Keeps a held answer open until the peer closes (or 60 s pass), recording when. */
async function hold(conn: Deno.Conn, seen: SeenRequest): Promise<boolean> {
  seen.firstPieceAt = performance.now();
  const buf = new Uint8Array(4096);
  const deadline = setTimeout(() => closeQuietly(conn), 60_000);
  try {
    while ((await conn.read(buf)) !== null) { /* a client sends nothing more; keep waiting */ }
  } catch { /* reset: closed too */ }
  clearTimeout(deadline);
  finish(seen, "peer_closed");
  return false;
}

async function answer(conn: Deno.Conn, req: WireRequest, seen: SeenRequest): Promise<boolean> {
  const url = new URL(req.target, "http://a");
  const path = url.pathname;
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(text.decode(req.body));
  } catch { /* not JSON */ }
  const model = typeof body.model === "string" ? body.model : "fake-model";
  if (path === "/v1/_ping") {
    await json(conn, 200, { status: "pong" });
    finish(seen, "answered");
    return true;
  }
  if (req.method === "POST" && path === "/v1/messages/count_tokens") {
    await json(conn, 200, { input_tokens: 12 });
    finish(seen, "answered");
    return true;
  }
  if (req.method === "POST" && path === "/v1/messages") {
    if (body.stream === true) return await sse(conn, seen, anthropicEvents(model), 3);
    await json(conn, 200, {
      id: "msg_fake",
      type: "message",
      role: "assistant",
      model,
      content: [{ type: "text", text: ANSWER }],
      stop_reason: "end_turn",
      stop_sequence: null,
      usage: { input_tokens: 12, output_tokens: 9 },
    });
    finish(seen, "answered");
    return true;
  }
  if (req.method === "POST" && path === "/v1/responses") {
    return await sse(conn, seen, responsesEvents(model).map((e) => [e.type, e]), 4);
  }
  const gemini = /^\/v1beta\/models\/([^/:]+):(generateContent|streamGenerateContent)$/.exec(path);
  if (req.method === "POST" && gemini) {
    if (gemini[2] === "streamGenerateContent") {
      return await sse(conn, seen, geminiChunks(gemini[1]!).map((c) => [null, c]), 1);
    }
    await json(conn, 200, geminiWhole(gemini[1]!, body));
    finish(seen, "answered");
    return true;
  }
  await json(conn, 404, {
    error: { message: `fake A has no route ${req.method} ${path}`, type: "not_found_error" },
  });
  finish(seen, "answered");
  return true;
}

function anthropicEvents(model: string): Sse {
  return [
    ["message_start", {
      type: "message_start",
      message: {
        id: "msg_fake",
        type: "message",
        role: "assistant",
        model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: { input_tokens: 12, output_tokens: 1 },
      },
    }],
    ["content_block_start", {
      type: "content_block_start",
      index: 0,
      content_block: { type: "text", text: "" },
    }],
    ...pieces().map((p): [string, unknown] => ["content_block_delta", {
      type: "content_block_delta",
      index: 0,
      delta: { type: "text_delta", text: p },
    }]),
    ["content_block_stop", { type: "content_block_stop", index: 0 }],
    ["message_delta", {
      type: "message_delta",
      delta: { stop_reason: "end_turn", stop_sequence: null },
      usage: { output_tokens: 9 },
    }],
    ["message_stop", { type: "message_stop" }],
  ];
}

/** OpenAI Responses stream events (the same objects go out as SSE data or WebSocket messages). */
function responsesEvents(model: string): Array<Record<string, unknown> & { type: string }> {
  const id = `resp_fake_${crypto.randomUUID().slice(0, 8)}`;
  const created_at = Math.floor(Date.now() / 1000);
  const base = { id, object: "response", created_at, model };
  const part = { type: "output_text", text: ANSWER, annotations: [] };
  const item = {
    id: "msg_fake",
    type: "message",
    status: "completed",
    role: "assistant",
    content: [part],
  };
  const usage = {
    input_tokens: 12,
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: 9,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: 21,
  };
  let seq = 0;
  const ev = (e: Record<string, unknown> & { type: string }) => ({ ...e, sequence_number: seq++ });
  return [
    ev({ type: "response.created", response: { ...base, status: "in_progress", output: [] } }),
    ev({
      type: "response.output_item.added",
      output_index: 0,
      item: { ...item, status: "in_progress", content: [] },
    }),
    ev({
      type: "response.content_part.added",
      item_id: "msg_fake",
      output_index: 0,
      content_index: 0,
      part: { ...part, text: "" },
    }),
    ...pieces().map((delta) =>
      ev({
        type: "response.output_text.delta",
        item_id: "msg_fake",
        output_index: 0,
        content_index: 0,
        delta,
      })
    ),
    ev({
      type: "response.output_text.done",
      item_id: "msg_fake",
      output_index: 0,
      content_index: 0,
      text: ANSWER,
    }),
    ev({
      type: "response.content_part.done",
      item_id: "msg_fake",
      output_index: 0,
      content_index: 0,
      part,
    }),
    ev({ type: "response.output_item.done", output_index: 0, item }),
    ev({
      type: "response.completed",
      response: { ...base, status: "completed", output: [item], usage },
    }),
  ];
}

const GEMINI_USAGE = { promptTokenCount: 12, candidatesTokenCount: 9, totalTokenCount: 21 };

function geminiChunks(model: string): unknown[] {
  const ps = pieces();
  return ps.map((t, i) => ({
    candidates: [{
      content: { role: "model", parts: [{ text: t }] },
      index: 0,
      ...(i === ps.length - 1 ? { finishReason: "STOP" } : {}),
    }],
    modelVersion: model,
    ...(i === ps.length - 1 ? { usageMetadata: GEMINI_USAGE } : {}),
  }));
}

function geminiWhole(model: string, body: Record<string, unknown>): unknown {
  // A JSON-mode call (Gemini CLI's model router, for one) gets a JSON text it can parse.
  const config = body.generationConfig as Record<string, unknown> | undefined;
  const wantsJson = config?.responseMimeType === "application/json";
  const answerText = wantsJson
    ? JSON.stringify({
      reasoning: "simple request",
      model_choice: "flash",
      complexity_reasoning: "simple request",
      complexity_score: 10,
    })
    : ANSWER;
  return {
    candidates: [{
      content: { role: "model", parts: [{ text: answerText }] },
      finishReason: "STOP",
      index: 0,
    }],
    modelVersion: model,
    usageMetadata: GEMINI_USAGE,
  };
}

/** Accepts the upgrade (with permessage-deflate when offered) and answers `response.create`. */
async function webSocket(
  conn: Deno.Conn,
  req: WireRequest,
  seen: SeenRequest,
  leftover: Uint8Array,
): Promise<void> {
  const offered = header(req, "sec-websocket-extensions");
  const deflate = offered !== null && /permessage-deflate/i.test(offered) ? new Deflate() : null;
  seen.ws = { bytesIn: [], messages: [], extensions: offered };
  const accept = await acceptKey(header(req, "sec-websocket-key") ?? "");
  await writeAll(
    conn,
    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n" +
      `sec-websocket-accept: ${accept}\r\n` +
      (deflate ? "sec-websocket-extensions: permessage-deflate\r\n" : "") + "\r\n",
  );
  const send = async (opcode: number, payload: Uint8Array) => {
    if (deflate && opcode === 1) {
      await writeAll(conn, serverFrame(1, deflate.deflate(payload), true));
    } else await writeAll(conn, serverFrame(opcode, payload));
  };
  let buf: Uint8Array = leftover;
  if (leftover.byteLength > 0) seen.ws.bytesIn.push(leftover.slice());
  let message: Uint8Array[] = [];
  let compressed = false;
  const chunk = new Uint8Array(64 * 1024);
  const deadline = setTimeout(() => closeQuietly(conn), 60_000);
  try {
    while (true) {
      const { frames, rest } = parseFrames(buf);
      buf = rest;
      for (const f of frames) {
        if (f.opcode === 8) {
          await send(8, f.payload.subarray(0, 2)).catch(() => {});
          finish(seen, "peer_closed");
          return;
        }
        if (f.opcode === 9) {
          await send(10, f.payload);
          continue;
        }
        if (f.opcode === 10) continue;
        if (f.opcode !== 0) compressed = f.rsv1;
        message.push(f.payload);
        if (!f.fin) continue;
        const data = concatBytes(message);
        message = [];
        const msg = text.decode(compressed && deflate ? deflate.inflate(data) : data);
        seen.ws.messages.push(msg);
        let parsed: Record<string, unknown> = {};
        try {
          parsed = JSON.parse(msg);
        } catch { /* not JSON */ }
        if (parsed.type !== "response.create") continue;
        const model = typeof parsed.model === "string" ? parsed.model : "fake-model";
        const events = responsesEvents(model);
        const held = msg.includes(HOLD);
        seen.held ||= held;
        for (let i = 0; i < events.length; i++) {
          if (held && i === 4) {
            seen.firstPieceAt = performance.now();
            break;
          }
          await send(1, utf8.encode(JSON.stringify(events[i])));
        }
      }
      const n = await conn.read(chunk);
      if (n === null) break;
      seen.ws.bytesIn.push(chunk.slice(0, n));
      buf = concatBytes([buf, chunk.subarray(0, n)]);
    }
  } catch {
    /* reset */
  } finally {
    clearTimeout(deadline);
  }
  finish(seen, "peer_closed");
}
