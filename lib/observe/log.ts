/**
 * @module log
 * Structured logging: one JSON object per line (or a readable line for terminals).
 *
 * Owns: the line format and the sink. Lines are batched and written once per event-loop turn, so
 * a busy relay makes one write syscall for many lines. Must never: receive secrets (callers pass
 * redacted values; see `headers.ts`), throw, or block the request path on a slow sink.
 */

/** Severity of a log line. */
export type LogLevel = "debug" | "info" | "warn" | "error";

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Where finished lines go (each ends in "\n"). */
export type LogSink = (text: string) => void;

/** Output style. */
export type LogFormat = "json" | "pretty";

/** Logger options; everything injectable for tests. */
export interface LoggerOptions {
  level?: LogLevel;
  format?: LogFormat;
  sink?: LogSink;
  now?: () => number;
}

const encoder = new TextEncoder();

/** Writes all of `text`, ignoring a closed pipe rather than crashing the relay. */
function writeAll(out: { writeSync(p: Uint8Array): number }, text: string): void {
  try {
    const bytes = encoder.encode(text);
    let off = 0;
    while (off < bytes.byteLength) off += out.writeSync(bytes.subarray(off));
  } catch { /* the stream is gone: nothing useful to do */ }
}

/** Writes to stdout, ignoring a closed pipe rather than crashing the relay. */
export function stdoutSink(text: string): void {
  writeAll(Deno.stdout, text);
}

/** Writes to stderr (for scripts whose stdout carries their result), the same way. */
export function stderrSink(text: string): void {
  writeAll(Deno.stderr, text);
}

/** A small structured logger. */
export class Logger {
  readonly level: LogLevel;
  readonly format: LogFormat;
  readonly #sink: LogSink;
  readonly #now: () => number;
  #batch: string[] = [];
  #scheduled = false;

  constructor(options: LoggerOptions = {}) {
    this.level = options.level ?? "info";
    this.format = options.format ?? "json";
    this.#sink = options.sink ?? stdoutSink;
    this.#now = options.now ?? Date.now;
  }

  /** Whether lines of this level are written (check before building expensive fields). */
  enabled(level: LogLevel): boolean {
    return RANK[level] >= RANK[this.level];
  }

  debug(msg: string, fields?: Record<string, unknown>): void {
    this.log("debug", msg, fields);
  }
  info(msg: string, fields?: Record<string, unknown>): void {
    this.log("info", msg, fields);
  }
  warn(msg: string, fields?: Record<string, unknown>): void {
    this.log("warn", msg, fields);
  }
  error(msg: string, fields?: Record<string, unknown>): void {
    this.log("error", msg, fields);
  }

  /** Writes one line if `level` is enabled. */
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
    if (!this.enabled(level)) return;
    const time = new Date(this.#now()).toISOString();
    let line: string;
    if (this.format === "pretty") {
      line = `${time} ${level.toUpperCase().padEnd(5)} ${msg}`;
      if (fields) {
        for (const [k, v] of Object.entries(fields)) {
          if (v !== undefined) line += ` ${k}=${typeof v === "string" ? v : JSON.stringify(v)}`;
        }
      }
    } else {
      line = JSON.stringify({ time, level, msg, ...fields });
    }
    this.#batch.push(line);
    if (!this.#scheduled) {
      this.#scheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  /** Writes out batched lines now. */
  flush(): void {
    this.#scheduled = false;
    if (this.#batch.length === 0) return;
    const text = this.#batch.join("\n") + "\n";
    this.#batch = [];
    try {
      this.#sink(text);
    } catch { /* a failing sink must not break requests */ }
  }
}
