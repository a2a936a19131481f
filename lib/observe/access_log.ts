/**
 * @module access_log
 * One line per finished request: JSON for machines, a coloured line for terminals.
 *
 * Owns: the access-log line (field names, rounding, the pretty layout), what counts as a failure,
 * and the sinks (stdout, and an append-only `LOG_FILE` written through one open handle with
 * batched, asynchronous writes).
 *
 * Must never: write a credential, a header value of a credential or a body (records arrive
 * redacted from `relay.ts`; header maps are redacted again here with the same rule), block the request
 * path on a slow disk (file writes are asynchronous and bounded in memory), or throw from
 * {@link AccessLog.observe}.
 */

import { isSecretHeader } from "../http/mod.ts";
import type { RequestRecord } from "./record.ts";
import { type Config, ConfigError } from "../config/mod.ts";
import { type LogSink, stdoutSink } from "./log.ts";

/**
 * Whether a finished request counts as a failure: a 5xx (A's or the relay's), or a body that broke
 * or stalled after a successful head. Client disconnects (499), refusals (4xx) and A's own 4xx
 * answers are not failures.
 */
export function isFailure(record: RequestRecord): boolean {
  if (record.errorCode === "client_closed") return false;
  return record.status >= 500 || (record.errorCode !== undefined && record.status < 400);
}

const round2 = (ms: number): number => Math.round(ms * 100) / 100;

// Header values are written only if their names are not secret, even when the record's maps
// were built without redaction: the log line is the last place a credential could leak.
function scrubHeaders(headers: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of Object.keys(headers)) {
    out[name] = isSecretHeader(name) ? "[redacted]" : headers[name] as string;
  }
  return out;
}

/**
 * The access-log fields of a record, in a stable order. Fields that are not known (no upstream
 * answered, no usage reported) are left out. `headers` adds the redacted request and response
 * headers the record carries (`DEBUG_LOG=1`).
 */
export function accessFields(
  record: RequestRecord,
  options: { headers?: boolean } = {},
): Record<string, unknown> {
  const u = record.usage;
  const fields: Record<string, unknown> = {
    time: new Date(record.time).toISOString(),
    level: isFailure(record) ? "warn" : "info",
    msg: "access",
    id: record.id,
    upstreamId: record.upstreamRequestId,
    clientIp: record.clientIp,
    method: record.method,
    path: record.path,
    route: record.route,
    upstream: record.upstream,
    status: record.status,
    ttfbMs: record.ttfbMs === undefined ? undefined : round2(record.ttfbMs),
    durationMs: round2(record.durationMs),
    relayMs: round2(record.relayMs),
    requestBytes: record.requestBytes,
    responseBytes: record.responseBytes,
    stream: record.stream,
    model: u?.model,
    inputTokens: u?.inputTokens,
    outputTokens: u?.outputTokens,
    cacheReadTokens: u?.cacheReadTokens,
    cacheWriteTokens: u?.cacheWriteTokens,
    totalTokens: u?.totalTokens,
    retries: Math.max(0, record.attempts - 1),
    failovers: record.failovers,
    error: record.errorCode,
  };
  if (options.headers) {
    if (record.requestHeaders !== undefined) {
      fields.requestHeaders = scrubHeaders(record.requestHeaders);
    }
    if (record.responseHeaders !== undefined) {
      fields.responseHeaders = scrubHeaders(record.responseHeaders);
    }
  }
  return fields;
}

/** The JSON access-log line for a record (no trailing newline). */
export function formatJsonLine(record: RequestRecord, options: { headers?: boolean } = {}): string {
  return JSON.stringify(accessFields(record, options));
}

const ESC = "\x1b[";
const paint = (color: boolean, code: string, text: string): string =>
  color ? `${ESC}${code}m${text}${ESC}0m` : text;

// Values that came from a client or from A (path, model) must not carry terminal escapes.
// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f\x7f-\x9f]/g;
const clean = (text: string): string => text.replace(CONTROL, "?");

function ms(value: number): string {
  if (value >= 10_000) return `${(value / 1000).toFixed(1)}s`;
  if (value >= 1000) return `${(value / 1000).toFixed(2)}s`;
  if (value >= 10) return `${Math.round(value)}ms`;
  return `${value.toFixed(1)}ms`;
}

function bytes(n: number): string {
  if (n >= 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)}MB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)}kB`;
  return `${n}B`;
}

function statusColor(record: RequestRecord): string {
  if (record.status === 499) return "35"; // magenta: the client left, not a failure
  if (isFailure(record)) return "31;1";
  if (record.status >= 400) return "33";
  if (record.status >= 300) return "36";
  return "32";
}

/**
 * A readable one-line summary for terminals (`LOG_FORMAT=pretty`), e.g.
 * `12:00:01.234 200 POST /v1/messages 1.52s ttfb=1.41s relay=0.4ms 1.2kB->38.0kB stream
 * claude-sonnet-4 in=12 out=340 id=...`. With `color`, the status and timings are coloured.
 */
export function formatPrettyLine(
  record: RequestRecord,
  options: { color?: boolean; headers?: boolean } = {},
): string {
  const color = options.color ?? false;
  const time = new Date(record.time).toISOString().slice(11, 23);
  const parts = [
    paint(color, "2", time),
    paint(color, statusColor(record), String(record.status)),
    record.method,
    clean(record.path),
    paint(color, "1", ms(record.durationMs)),
  ];
  if (record.ttfbMs !== undefined) parts.push(`ttfb=${ms(record.ttfbMs)}`);
  parts.push(paint(color, "36", `relay=${ms(record.relayMs)}`));
  parts.push(`${bytes(record.requestBytes)}\u2192${bytes(record.responseBytes)}`);
  if (record.stream) parts.push("stream");
  const u = record.usage;
  if (u?.model !== undefined) parts.push(paint(color, "34", clean(u.model)));
  if (u?.inputTokens !== undefined) parts.push(`in=${u.inputTokens}`);
  if (u?.outputTokens !== undefined) parts.push(`out=${u.outputTokens}`);
  if (record.route !== undefined) parts.push(`route=${clean(record.route)}`);
  if (record.upstream !== undefined) parts.push(paint(color, "2", `up=${record.upstream}`));
  if (record.attempts > 1) parts.push(`retries=${record.attempts - 1}`);
  if (record.failovers > 0) parts.push(paint(color, "33", `failovers=${record.failovers}`));
  if (record.errorCode !== undefined) {
    parts.push(paint(color, isFailure(record) ? "31" : "35", `error=${record.errorCode}`));
  }
  const aId = record.upstreamRequestId === undefined ? "" : ` a-id=${record.upstreamRequestId}`;
  parts.push(paint(color, "2", `ip=${record.clientIp} id=${record.id}${aId}`));
  let line = parts.join(" ");
  if (options.headers) {
    const f = accessFields(record, { headers: true });
    if (f.requestHeaders !== undefined) line += ` req=${clean(JSON.stringify(f.requestHeaders))}`;
    if (f.responseHeaders !== undefined) line += ` res=${clean(JSON.stringify(f.responseHeaders))}`;
  }
  return line;
}

/** Something that accepts finished text (whole lines ending in "\n"). */
export interface TextSink {
  write(text: string): void;
  /** Writes `text` and anything queued before it now, synchronously (before a forced exit). */
  writeSync?(text: string): void;
}

/** Most text a {@link FileSink} holds while the disk is slow before it drops lines (8 MiB). */
export const MAX_PENDING_CHARS = 8 * 1024 * 1024;

const encoder = new TextEncoder();

/**
 * Appends text to a file through one open handle. Writes are batched and asynchronous: `write`
 * only queues, one write is in flight at a time, and everything queued meanwhile goes out in the
 * next one. When the disk falls behind by more than {@link MAX_PENDING_CHARS}, new lines are
 * dropped and counted, and a note saying how many is written once it catches up.
 */
export class FileSink implements TextSink {
  readonly path: string;
  #file: Deno.FsFile;
  #pending: string[] = [];
  #pendingChars = 0;
  #writing: Promise<void> | null = null;
  #dropped = 0;
  #closed = false;

  /** Opens (creating if needed) `path` for appending. Throws if it cannot be opened. */
  constructor(path: string) {
    this.path = path;
    this.#file = FileSink.#open(path);
  }

  static #open(path: string): Deno.FsFile {
    return Deno.openSync(path, { append: true, create: true, write: true });
  }

  /** Lines dropped so far because the disk fell behind. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Queues `text` (whole lines). Never blocks, never throws. */
  write(text: string): void {
    if (this.#closed) return;
    if (this.#pendingChars + text.length > MAX_PENDING_CHARS) {
      this.#dropped += countLines(text);
      return;
    }
    this.#pending.push(text);
    this.#pendingChars += text.length;
    this.#writing ??= this.#drain();
  }

  async #drain(): Promise<void> {
    let noted = this.#dropped;
    while (this.#pending.length > 0) {
      let text = this.#pending.join("");
      this.#pending = [];
      this.#pendingChars = 0;
      if (this.#dropped > noted) {
        text += JSON.stringify({
          time: new Date().toISOString(),
          level: "warn",
          msg: "access log lines dropped: the disk fell behind",
          count: this.#dropped - noted,
        }) + "\n";
        noted = this.#dropped;
      }
      try {
        const data = encoder.encode(text);
        let off = 0;
        while (off < data.byteLength) off += await this.#file.write(data.subarray(off));
      } catch {
        // Disk full or file gone: these lines are lost; keep serving requests.
      }
    }
    this.#writing = null;
  }

  /** Reopens the file by path (after log rotation moved it away). */
  async reopen(): Promise<void> {
    if (this.#closed) return;
    await this.#writing;
    const next = FileSink.#open(this.path);
    const old = this.#file;
    this.#file = next;
    try {
      old.close();
    } catch { /* already closed */ }
  }

  /**
   * Writes whatever is queued, then `text`, synchronously: for an exit that cannot wait. A batch
   * already in flight may land after these lines.
   */
  writeSync(text = ""): void {
    if (this.#closed) return;
    const all = this.#pending.join("") + text;
    this.#pending = [];
    this.#pendingChars = 0;
    if (all === "") return;
    try {
      const data = encoder.encode(all);
      let off = 0;
      while (off < data.byteLength) off += this.#file.writeSync(data.subarray(off));
    } catch { /* lost */ }
  }

  /** Waits for queued lines to be written, then closes the file. */
  async close(): Promise<void> {
    while (this.#writing !== null) await this.#writing;
    this.#closed = true;
    try {
      this.#file.close();
    } catch { /* already closed */ }
  }
}

function countLines(text: string): number {
  let n = 0;
  for (let i = text.indexOf("\n"); i !== -1; i = text.indexOf("\n", i + 1)) n++;
  return n;
}

/** Options for {@link AccessLog}; every sink injectable for tests. */
export interface AccessLogOptions {
  /** Format of the stdout line (the file always gets JSON). Default `json`. */
  format?: "json" | "pretty";
  /** Colour the pretty line. Default false. */
  color?: boolean;
  /** Include redacted request/response headers (`DEBUG_LOG=1`). Default false. */
  headers?: boolean;
  /** Where stdout lines go; `null` for none. Default: the process's stdout. */
  stdout?: LogSink | null;
  /** The `LOG_FILE` sink, if any. */
  file?: TextSink | null;
}

/**
 * The access log: an observer of finished requests that writes one line per request to stdout
 * (JSON or pretty) and, when set, one JSON line to a file. Lines are queued and written once per
 * event-loop turn, so a busy relay makes one write for many requests.
 */
export class AccessLog {
  readonly #format: "json" | "pretty";
  readonly #color: boolean;
  readonly #headers: boolean;
  readonly #stdout: LogSink | null;
  readonly #file: TextSink | null;
  #out: string[] = [];
  #toFile: string[] = [];
  #scheduled = false;

  constructor(options: AccessLogOptions = {}) {
    this.#format = options.format ?? "json";
    this.#color = options.color ?? false;
    this.#headers = options.headers ?? false;
    this.#stdout = options.stdout === undefined ? stdoutSink : options.stdout;
    this.#file = options.file ?? null;
  }

  /** The observer to register with `createApp` / `app.observe`. Never throws. */
  readonly observe = (record: RequestRecord): void => {
    try {
      const opts = { headers: this.#headers };
      let json: string | undefined;
      if (this.#stdout !== null) {
        if (this.#format === "pretty") {
          this.#out.push(formatPrettyLine(record, { color: this.#color, headers: this.#headers }));
        } else {
          json = formatJsonLine(record, opts);
          this.#out.push(json);
        }
      }
      if (this.#file !== null) this.#toFile.push(json ?? formatJsonLine(record, opts));
      if (!this.#scheduled) {
        this.#scheduled = true;
        queueMicrotask(() => this.flush());
      }
    } catch { /* a log line must never break a request */ }
  };

  /** Hands queued lines to the sinks now; `sync` writes the file synchronously (forced exit). */
  flush(sync = false): void {
    this.#scheduled = false;
    if (this.#out.length > 0) {
      const text = this.#out.join("\n") + "\n";
      this.#out = [];
      try {
        this.#stdout?.(text);
      } catch { /* stdout gone */ }
    }
    if (this.#toFile.length > 0) {
      const text = this.#toFile.join("\n") + "\n";
      this.#toFile = [];
      try {
        if (sync && this.#file?.writeSync !== undefined) this.#file.writeSync(text);
        else this.#file?.write(text);
      } catch { /* the sink keeps its own errors */ }
    }
  }
}

/** A running access log as `main.ts` uses it. */
export interface AccessLogHandle {
  /** The observer to give `createApp`. */
  observe: (record: RequestRecord) => void;
  /** Writes what can be written without waiting (before a forced exit). */
  flushSync(): void;
  /** Reopens `LOG_FILE` (after log rotation); no-op without one. */
  reopen(): Promise<void>;
  /** Writes everything queued and closes `LOG_FILE`. */
  close(): Promise<void>;
}

/**
 * Sets up the access log from the configuration: `null` when `ACCESS_LOG=0` (then no per-request
 * work is done at all). Opens `LOG_FILE` for appending; throws {@link ConfigError} when it cannot.
 */
export function openAccessLog(
  config: Pick<Config, "accessLog" | "logFormat" | "logFile" | "debugLog">,
  options: { stdout?: LogSink; color?: boolean } = {},
): AccessLogHandle | null {
  if (!config.accessLog) return null;
  let file: FileSink | null = null;
  if (config.logFile !== undefined) {
    try {
      file = new FileSink(config.logFile);
    } catch (err) {
      const why = err instanceof Error ? err.name : "error";
      const hint = why === "NotCapable" || why === "PermissionDenied"
        ? ` Run with --allow-write=${config.logFile} and make sure the directory is writable.`
        : "";
      throw new ConfigError(
        `LOG_FILE=${
          JSON.stringify(config.logFile)
        } cannot be opened for appending (${why}).${hint}`,
      );
    }
  }
  const log = new AccessLog({
    format: config.logFormat,
    color: options.color ?? (config.logFormat === "pretty" && !Deno.noColor && isTerminal()),
    headers: config.debugLog,
    stdout: options.stdout ?? stdoutSink,
    file,
  });
  return {
    observe: log.observe,
    flushSync() {
      log.flush(true);
    },
    async reopen() {
      await file?.reopen();
    },
    async close() {
      log.flush();
      await file?.close();
    },
  };
}

function isTerminal(): boolean {
  try {
    return Deno.stdout.isTerminal();
  } catch {
    return false;
  }
}
