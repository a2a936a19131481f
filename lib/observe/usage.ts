/**
 * @module usage
 * Token usage read off LLM API responses as their bytes stream past the relay.
 *
 * Owns: recognising the usage and model fields of the OpenAI Chat Completions, OpenAI Responses,
 * Anthropic Messages and Gemini `generateContent` APIs, in both their streaming (`text/event-stream`)
 * and non-streaming (`application/json`) shapes, and folding them into one {@link Usage}.
 *
 * Must never: hold back, reorder, alter or decode-and-re-encode the bytes it is shown (it only
 * copies what it needs), throw from {@link UsageTap.push} or {@link UsageTap.finish}, decompress
 * a body, or guess: a body it does not understand is simply not counted.
 *
 * @example Observe a relayed body without touching it
 * ```ts
 * const tap = new UsageTap(res.headers.get("content-type"), res.headers.get("content-encoding"));
 * const observed = res.body!.pipeThrough(new TransformStream<Uint8Array, Uint8Array>({
 *   transform(chunk, controller) { controller.enqueue(chunk); tap.push(chunk); },
 *   flush() { record(tap.finish()); },
 * }));
 * ```
 */

import type { Usage } from "./record.ts";
export type { Usage };
import { concat } from "../http/mod.ts";
import { SseEvents } from "./sse_events.ts";

/** Non-streamed JSON bodies larger than this are not counted (8 MiB). */
export const MAX_JSON_BYTES = 8 * 1024 * 1024;

/**
 * Largest single SSE event (in UTF-16 code units) we buffer. A bigger event is skipped, not the
 * rest of the stream; in practice only a Responses API `response.completed` carrying a huge
 * output could reach this.
 */
export const MAX_SSE_EVENT_CHARS = 8 * 1024 * 1024;

// A usage or model key followed by a value worth parsing. OpenAI chat chunks carry
// `"usage":null` on every chunk when `stream_options.include_usage` is on, and every chunk names
// the model, so these keep JSON.parse for the handful of events that can change the result.
const USAGE_KEY = /"usage(?:Metadata)?"\s*:\s*\{/;
const MODEL_KEY = /"model(?:Version)?"\s*:\s*"/;

type Mode = "sse" | "json" | "off";

/** Mutable accumulator; `undefined` means "not reported". */
interface Acc {
  model: string | undefined;
  input: number | undefined;
  output: number | undefined;
  cacheRead: number | undefined;
  cacheWrite: number | undefined;
  total: number | undefined;
}

// `fatal: false`: a stray invalid byte becomes U+FFFD instead of stopping the count.
const jsonDecoder = new TextDecoder("utf-8", { fatal: false });

/**
 * Watches one response body chunk by chunk and reports the token usage it carried.
 *
 * Construct it with the response's `content-type` and `content-encoding` headers, call
 * {@link push} with every body chunk in order, then {@link finish} once the body ended (or was
 * cut off). The tap only copies what it needs and never keeps a reference to a pushed chunk, so
 * the caller may hand the same chunk on downstream, even to a consumer that detaches its buffer.
 */
export class UsageTap {
  #mode: Mode;
  #finished = false;
  #result: Usage | undefined;
  readonly #acc: Acc = {
    model: undefined,
    input: undefined,
    output: undefined,
    cacheRead: undefined,
    cacheWrite: undefined,
    total: undefined,
  };
  /** Streaming decoder for SSE (events arrive split anywhere); JSON is decoded once at the end. */
  #decoder: TextDecoder | undefined;
  #parser: SseEvents | undefined;
  /** Copies of the JSON body's chunks (never the caller's buffers). */
  #jsonParts: Uint8Array[] = [];
  #jsonBytes = 0;
  /** Everything fed so far ended exactly at an SSE event boundary (the parser holds nothing). */
  #atBoundary = true;

  /**
   * @param contentType The response's `content-type` header, or `null`.
   * @param contentEncoding The response's `content-encoding` header, or `null`. Any value other
   *   than `identity` turns the tap off: the relay passes compressed bytes through untouched and
   *   decompressing them only to count tokens is not worth the CPU.
   */
  constructor(contentType: string | null, contentEncoding: string | null) {
    this.#mode = pickMode(contentType, contentEncoding);
    if (this.#mode === "sse") {
      this.#decoder = new TextDecoder("utf-8", { fatal: false });
      this.#parser = new SseEvents((data) => this.#onData(data), MAX_SSE_EVENT_CHARS);
    }
  }

  /**
   * Shows the tap the next body chunk. Cheap, never throws, never retains `chunk`.
   * Chunks pushed after {@link finish} are ignored.
   */
  push(chunk: Uint8Array): void {
    if (this.#finished || this.#mode === "off" || chunk.byteLength === 0) return;
    try {
      if (this.#mode === "sse") {
        const ends = endsAtBoundary(chunk);
        // Whole events that name no usage object (and no model, while none is known) cannot change
        // the result: most content deltas are skipped without decoding or parsing them.
        if (this.#atBoundary && ends && !mayMatter(chunk, this.#acc.model === undefined)) return;
        this.#atBoundary = ends;
        this.#feed(this.#decoder!.decode(chunk, { stream: true }));
      } else {
        this.#jsonBytes += chunk.byteLength;
        if (this.#jsonBytes > MAX_JSON_BYTES) {
          this.#giveUp();
          return;
        }
        this.#jsonParts.push(chunk.slice());
      }
    } catch {
      // Only a bug could land here; counting is best-effort and must never break the relay.
      this.#giveUp();
    }
  }

  /**
   * Ends observation and returns what the body reported, or `undefined` when it reported
   * nothing recognisable (unknown format, invalid JSON, compressed, too large). Never throws;
   * calling it again returns the same result.
   */
  finish(): Usage | undefined {
    if (this.#finished) return this.#result;
    this.#finished = true;
    try {
      if (this.#mode === "sse") {
        const rest = this.#decoder!.decode();
        // A stream cut off (or badly terminated) after its last data line would otherwise lose
        // that event: the SSE spec drops an event without its blank line, but for counting a
        // complete data line is as good as a terminated one. Incomplete JSON still fails to parse.
        this.#feed(rest + "\n\n");
      } else if (this.#mode === "json") {
        const parts = this.#jsonParts;
        this.#jsonParts = [];
        const text = jsonDecoder.decode(parts.length === 1 ? parts[0] : concat(parts));
        applyTop(this.#acc, JSON.parse(text));
      }
      this.#result = this.#mode === "off" ? undefined : toUsage(this.#acc);
    } catch {
      this.#result = this.#mode === "off" ? undefined : toUsage(this.#acc);
    }
    this.#parser = undefined;
    return this.#result;
  }

  /**
   * Shows the tap the body's last chunk and finishes: the same as {@link push} then
   * {@link finish}, but `chunk` is read before this returns, so a JSON body that arrived whole is
   * parsed where it lies instead of being copied first.
   */
  finishWith(chunk: Uint8Array): Usage | undefined {
    if (
      this.#mode === "json" && !this.#finished && this.#jsonParts.length === 0 &&
      chunk.byteLength > 0 && chunk.byteLength <= MAX_JSON_BYTES
    ) {
      this.#jsonBytes = chunk.byteLength;
      this.#jsonParts.push(chunk);
    } else {
      this.push(chunk);
    }
    return this.finish();
  }

  #feed(text: string): void {
    if (text !== "") this.#parser?.feed(text);
  }

  #onData(data: string): void {
    // Cheap filter first: most events are content deltas that cannot change the result.
    if (!USAGE_KEY.test(data) && (this.#acc.model !== undefined || !MODEL_KEY.test(data))) return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(data);
    } catch {
      return;
    }
    applyTop(this.#acc, parsed);
  }

  #giveUp(): void {
    this.#mode = "off";
    this.#parser = undefined;
    this.#jsonParts = [];
  }
}

function pickMode(contentType: string | null, contentEncoding: string | null): Mode {
  if (contentEncoding !== null) {
    const encoding = contentEncoding.trim().toLowerCase();
    if (encoding !== "" && encoding !== "identity") return "off";
  }
  if (contentType === null) return "off";
  const semi = contentType.indexOf(";");
  const mediaType = (semi === -1 ? contentType : contentType.slice(0, semi)).trim().toLowerCase();
  if (mediaType === "text/event-stream") return "sse";
  if (mediaType === "application/json" || mediaType.endsWith("+json")) return "json";
  return "off";
}

type Obj = Record<string, unknown>;

function isObj(value: unknown): value is Obj {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A token count we believe: a finite, non-negative number. `null` and strings are ignored. */
function count(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? value : undefined;
}

/** One parsed JSON body or SSE event data. Gemini's non-SSE stream is a JSON array of chunks. */
function applyTop(acc: Acc, value: unknown): void {
  if (Array.isArray(value)) {
    for (const item of value) if (isObj(item)) applyObject(acc, item);
  } else if (isObj(value)) {
    applyObject(acc, value);
  }
}

function applyObject(acc: Acc, obj: Obj): void {
  const type = obj.type;
  // Only descend where the APIs put a whole message / response object, so that nothing the model
  // wrote (tool arguments, JSON output) can be mistaken for usage.
  if (type === "message_start" && isObj(obj.message)) {
    applyObject(acc, obj.message);
    return;
  }
  if (typeof type === "string" && type.startsWith("response.") && isObj(obj.response)) {
    // Responses API stream: response.created / in_progress (model, usage null),
    // response.completed / incomplete / failed (model and usage).
    applyObject(acc, obj.response);
    return;
  }

  const model = typeof obj.model === "string"
    ? obj.model
    : typeof obj.modelVersion === "string"
    ? obj.modelVersion
    : undefined;
  if (model !== undefined && model !== "") acc.model = model;

  if (isObj(obj.usage)) applyUsage(acc, obj.usage, type === "message_delta");
  if (isObj(obj.usageMetadata)) applyGemini(acc, obj.usageMetadata);
}

/** OpenAI Chat Completions, OpenAI Responses and Anthropic `usage` objects. */
function applyUsage(acc: Acc, usage: Obj, anthropicDelta: boolean): void {
  const input = count(usage.prompt_tokens) ?? count(usage.input_tokens);
  const output = count(usage.completion_tokens) ?? count(usage.output_tokens);
  const details = isObj(usage.prompt_tokens_details)
    ? usage.prompt_tokens_details
    : isObj(usage.input_tokens_details)
    ? usage.input_tokens_details
    : undefined;
  const cacheRead = count(details?.cached_tokens) ?? count(usage.cache_read_input_tokens);
  const cacheWrite = count(usage.cache_creation_input_tokens);

  if (anthropicDelta) {
    // message_delta counts are cumulative, so the latest wins. Some Anthropic-compatible
    // gateways send input and cache counts of 0 here meaning "not repeated", which must not wipe
    // the real counts message_start reported.
    acc.input = keepNonZero(acc.input, input);
    acc.cacheRead = keepNonZero(acc.cacheRead, cacheRead);
    acc.cacheWrite = keepNonZero(acc.cacheWrite, cacheWrite);
  } else {
    if (input !== undefined) acc.input = input;
    if (cacheRead !== undefined) acc.cacheRead = cacheRead;
    if (cacheWrite !== undefined) acc.cacheWrite = cacheWrite;
  }
  if (output !== undefined) acc.output = output;
  const total = count(usage.total_tokens);
  if (total !== undefined) acc.total = total;
}

function keepNonZero(previous: number | undefined, next: number | undefined): number | undefined {
  if (next === undefined) return previous;
  if (next === 0 && previous !== undefined) return previous;
  return next;
}

/** Gemini `usageMetadata`; every streamed chunk repeats it and the later one supersedes. */
function applyGemini(acc: Acc, meta: Obj): void {
  const input = count(meta.promptTokenCount);
  const candidates = count(meta.candidatesTokenCount);
  const thoughts = count(meta.thoughtsTokenCount);
  const cached = count(meta.cachedContentTokenCount);
  const total = count(meta.totalTokenCount);
  if (input !== undefined) acc.input = input;
  // Thinking tokens are billed as output, and OpenAI's completion_tokens include reasoning too.
  if (candidates !== undefined || thoughts !== undefined) {
    acc.output = (candidates ?? 0) + (thoughts ?? 0);
  }
  if (cached !== undefined) acc.cacheRead = cached;
  if (total !== undefined) acc.total = total;
}

function toUsage(acc: Acc): Usage | undefined {
  const usage: Usage = {};
  if (acc.model !== undefined) usage.model = acc.model;
  if (acc.input !== undefined) usage.inputTokens = acc.input;
  if (acc.output !== undefined) usage.outputTokens = acc.output;
  if (acc.cacheRead !== undefined) usage.cacheReadTokens = acc.cacheRead;
  if (acc.cacheWrite !== undefined) usage.cacheWriteTokens = acc.cacheWrite;
  const total = acc.total ??
    (acc.input !== undefined && acc.output !== undefined ? acc.input + acc.output : undefined);
  if (total !== undefined) usage.totalTokens = total;
  return Object.keys(usage).length === 0 ? undefined : usage;
}

/** Whether `chunk` ends with a blank line (`\n\n` or `\n\r\n`): an SSE event boundary. */
function endsAtBoundary(chunk: Uint8Array): boolean {
  const n = chunk.byteLength;
  if (n < 2 || chunk[n - 1] !== 10) return false;
  return chunk[n - 2] === 10 || (n >= 3 && chunk[n - 2] === 13 && chunk[n - 3] === 10);
}

const U = 0x75; // "u"
const M = 0x6d; // "m"
const USAGE = [0x75, 0x73, 0x61, 0x67, 0x65]; // "usage"
const METADATA = [0x4d, 0x65, 0x74, 0x61, 0x64, 0x61, 0x74, 0x61]; // "Metadata"
const MODEL = [0x6d, 0x6f, 0x64, 0x65, 0x6c]; // "model"

function at(chunk: Uint8Array, i: number, word: number[]): boolean {
  if (i + word.length > chunk.byteLength) return false;
  for (let k = 0; k < word.length; k++) if (chunk[i + k] !== word[k]) return false;
  return true;
}

function skipBlanks(chunk: Uint8Array, i: number): number {
  while (i < chunk.byteLength && (chunk[i] === 32 || chunk[i] === 9)) i++;
  return i;
}

/**
 * Whether the events in `chunk` could name a usage object (`"usage": {`, `"usageMetadata": {`)
 * or, with `wantModel`, a model. Errs towards yes: a key whose value is cut by a line break (a
 * multi-line data field) or by the chunk's end counts as a match; only a value that visibly is not
 * an object (`"usage":null`) rules one out.
 */
export function mayMatter(chunk: Uint8Array, wantModel: boolean): boolean {
  const n = chunk.byteLength;
  for (let i = 0; i < n; i++) {
    const b = chunk[i];
    if (b === M && wantModel && at(chunk, i, MODEL)) return true;
    if (b !== U || !at(chunk, i, USAGE)) continue;
    let j = i + USAGE.length;
    if (at(chunk, j, METADATA)) j += METADATA.length;
    if (j >= n || chunk[j] !== 0x22) continue; // not a key: "usage" inside some text
    j = skipBlanks(chunk, j + 1);
    if (j >= n || chunk[j] === 10 || chunk[j] === 13) return true;
    if (chunk[j] !== 0x3a) continue; // ":"
    j = skipBlanks(chunk, j + 1);
    if (j >= n || chunk[j] === 10 || chunk[j] === 13 || chunk[j] === 0x7b) return true; // "{"
  }
  return false;
}
