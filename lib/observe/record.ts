/**
 * @module record
 * The record of one finished request, as the pipeline produces it and the observers (access log,
 * telemetry, metrics) read it, and the shape of a log writer. A leaf: it imports nothing, so
 * producers (every layer) and observers both depend on it and never on each other.
 */

/**
 * Where a module writes its log lines: `observe/log.ts`'s Logger, or anything shaped like it.
 * Modules below the pipeline take one as an option instead of importing the logger.
 */
export interface LogWriter {
  enabled(level: "debug" | "info" | "warn" | "error"): boolean;
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/**
 * Token counts as the provider reported them. Every field is optional: a field is present only
 * when the response said so.
 *
 * `inputTokens` is the provider's own prompt count and is not normalised across providers:
 * OpenAI (`prompt_tokens` / `input_tokens`) and Gemini (`promptTokenCount`) include cached
 * tokens in it, while Anthropic's `input_tokens` excludes cache reads and cache writes, which it
 * reports separately. `outputTokens` includes reasoning / thinking tokens for every provider
 * (for Gemini it is `candidatesTokenCount + thoughtsTokenCount`).
 */
export interface Usage {
  /** The model that answered, as the response names it (`model`, or Gemini's `modelVersion`). */
  model?: string;
  inputTokens?: number;
  outputTokens?: number;
  /** Prompt tokens served from cache. */
  cacheReadTokens?: number;
  /** Prompt tokens written to cache (Anthropic `cache_creation_input_tokens`). */
  cacheWriteTokens?: number;
  /** The provider's total when it gives one, else `inputTokens + outputTokens` when both known. */
  totalTokens?: number;
}

/** What happened to one request; given to observers once it is over (body included). */
export interface RequestRecord {
  id: string;
  /** Start time, ms since the epoch. */
  time: number;
  clientIp: string;
  method: string;
  /** Path and query with credentials redacted. */
  path: string;
  /** UID route id, when the request came in on `/u{id}/...`. */
  route: string | undefined;
  /** Upstream base URL that answered (no credentials). */
  upstream: string | undefined;
  status: number;
  /** Time from the start of the upstream exchange to A's response head, ms. */
  ttfbMs: number | undefined;
  /** Time from arrival to the end of the response body, ms. */
  durationMs: number;
  /** Time the relay itself spent before and after A's part of the wait, ms. */
  relayMs: number;
  /** Request body bytes (announced length, or counted when streamed). */
  requestBytes: number;
  responseBytes: number;
  /** Whether the response was an event stream. */
  stream: boolean;
  usage: Usage | undefined;
  /** 1, or 2 after a stale-connection resend. */
  attempts: number;
  /** Upstreams skipped because they could not be reached. */
  failovers: number;
  /** The relay's error code, when the relay answered or the stream broke. */
  errorCode: string | undefined;
  /** With `DEBUG_LOG=1`: the client's request headers, credentials redacted. */
  requestHeaders?: Record<string, string>;
  /** With `DEBUG_LOG=1`: A's response headers, credentials redacted. */
  responseHeaders?: Record<string, string>;
  /** A's own `x-request-id` (what the client received instead of `id`), if short and safe. */
  upstreamRequestId?: string;
}
