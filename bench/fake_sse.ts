/**
 * A fake streaming LLM upstream: every POST gets an OpenAI-style `text/event-stream` of
 * `events` chunks, one every `intervalMs` (the first at once), a usage chunk, then `[DONE]`.
 * Each chunk carries the `performance.now()` of its sending in its `id`, so a client in the same
 * process can compute each event's delivery delay on one clock.
 *
 * In-process: `startFakeSse(...)`. As a process (for the 10,000-stream run, where one process
 * cannot hold both ends of every stream within the descriptor limit):
 *   deno run -A bench/fake_sse.ts --port=9100 --events=20 --interval-ms=1000 [--max-sec=600]
 */

import { HOST, numFlag, parseFlags } from "./common.ts";

const enc = new TextEncoder();

/** Stream shape. */
export interface FakeSseOptions {
  port: number;
  events: number;
  intervalMs: number;
}

/** Builds one event line with the send time embedded. */
export function chunkEvent(seq: number, final: boolean): Uint8Array {
  const t = performance.now().toFixed(3);
  const payload = final
    ? `{"id":"chatcmpl-t${t}","object":"chat.completion.chunk","created":1764000000,` +
      `"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":25,"completion_tokens":${seq},` +
      `"total_tokens":${25 + seq}}}`
    : `{"id":"chatcmpl-t${t}","object":"chat.completion.chunk","created":1764000000,` +
      `"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"token ${seq} of the ` +
      `benchmark stream "},"finish_reason":null}]}`;
  return enc.encode(`data: ${payload}\n\n`);
}

const DONE = enc.encode("data: [DONE]\n\n");

/** Starts the fake upstream; `stats.open` counts streams in progress. */
export function startFakeSse(
  opts: FakeSseOptions,
): { server: Deno.HttpServer; stats: { open: number; served: number } } {
  const stats = { open: 0, served: 0 };
  const server = Deno.serve({
    hostname: HOST,
    port: opts.port,
    onListen() {},
    onError: () => new Response("fake upstream error", { status: 500 }),
  }, async (req) => {
    if (req.body !== null) await req.arrayBuffer();
    stats.served++;
    stats.open++;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let seq = 0;
    let closed = false;
    const finish = () => {
      if (!closed) {
        closed = true;
        stats.open--;
      }
    };
    const body = new ReadableStream<Uint8Array>({
      start(ctrl) {
        const tick = () => {
          if (closed) return;
          try {
            if (seq < opts.events) {
              ctrl.enqueue(chunkEvent(seq++, false));
              timer = setTimeout(tick, opts.intervalMs);
              return;
            }
            ctrl.enqueue(chunkEvent(seq, true));
            ctrl.enqueue(DONE);
            ctrl.close();
          } catch { /* client went away */ }
          finish();
        };
        tick();
      },
      cancel() {
        clearTimeout(timer);
        finish();
      },
    });
    return new Response(body, {
      headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
    });
  });
  return { server, stats };
}

if (import.meta.main) {
  const flags = parseFlags(Deno.args);
  const { server } = startFakeSse({
    port: numFlag(flags, "port", 9100),
    events: numFlag(flags, "events", 20),
    intervalMs: numFlag(flags, "interval-ms", 1000),
  });
  // Bounded life: stops by itself even if nobody kills it.
  const maxSec = numFlag(flags, "max-sec", 900);
  const t = setTimeout(() => server.shutdown(), maxSec * 1000);
  Deno.addSignalListener("SIGTERM", () => {
    clearTimeout(t);
    Deno.exit(0);
  });
  await server.finished;
  clearTimeout(t);
}
