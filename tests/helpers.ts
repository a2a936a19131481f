/**
 * Shared test fixtures: fake upstreams on 127.0.0.1:0, a relay in-process, and a raw HTTP/1.1
 * client for targets and bytes that `fetch` would normalise or decode.
 */

import { createApp } from "../lib/relay.ts";
import type { App, AppDeps } from "../lib/relay.ts";
import { parseConfig } from "../lib/config/config.ts";
import { listen } from "../lib/server/listen.ts";
import { Logger } from "../lib/observe/log.ts";

export const enc = new TextEncoder();
export const dec = new TextDecoder();

/** A fake upstream built on Deno.serve. */
export interface FakeUpstream {
  url: string;
  port: number;
  /** Requests seen, in order (headers copied, body not read). */
  seen: Array<{ method: string; url: string; headers: Headers }>;
  close(): Promise<void>;
}

export function startUpstream(
  handler: (
    req: Request,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ) => Response | Promise<Response>,
): FakeUpstream {
  const seen: FakeUpstream["seen"] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req, info) => {
    seen.push({ method: req.method, url: req.url, headers: new Headers(req.headers) });
    return handler(req, info);
  });
  const port = server.addr.port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    seen,
    close: boundedClose(
      () => server.shutdown(),
      () =>
        "the fake upstream's close(): a response it is sending was never cancelled by the relay",
      // What still runs must not keep the test process alive after the failure.
      () => server.unref(),
    ),
  };
}

/** A raw TCP upstream: the test writes whatever bytes it wants per connection. */
export interface RawUpstream {
  url: string;
  port: number;
  connections: number;
  close(): void;
}

export function startRawUpstream(
  onConn: (conn: Deno.Conn, index: number) => Promise<void>,
): RawUpstream {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const conns = new Set<Deno.Conn>();
  const state: RawUpstream = {
    url: `http://127.0.0.1:${port}`,
    port,
    connections: 0,
    close() {
      try {
        listener.close();
      } catch { /* closed */ }
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
  (async () => {
    try {
      for await (const conn of listener) {
        const i = state.connections++;
        conns.add(conn);
        onConn(conn, i).catch(() => {}).finally(() => {
          conns.delete(conn);
          try {
            conn.close();
          } catch { /* closed */ }
        });
      }
    } catch { /* listener closed */ }
  })();
  return state;
}

/** Reads one HTTP/1.1 request head from a raw connection (returns it as text, plus leftover). */
export async function readRequestHead(
  conn: Deno.Conn,
): Promise<{ head: string; rest: Uint8Array } | null> {
  let buf = new Uint8Array(0);
  const chunk = new Uint8Array(65536);
  while (true) {
    const n = await conn.read(chunk);
    if (n === null) return null;
    const merged = new Uint8Array(buf.length + n);
    merged.set(buf);
    merged.set(chunk.subarray(0, n), buf.length);
    buf = merged;
    const text = new TextDecoder("latin1").decode(buf);
    const end = text.indexOf("\r\n\r\n");
    if (end >= 0) return { head: text.slice(0, end), rest: buf.subarray(end + 4) };
  }
}

/**
 * Reads one request from a raw connection: its head as text and exactly `content-length` body
 * bytes (none without one); null when the connection ends first.
 */
export async function readRequest(
  conn: Deno.Conn,
): Promise<{ head: string; body: Uint8Array } | null> {
  const got = await readRequestHead(conn);
  if (got === null) return null;
  const want = Number(/content-length: (\d+)/i.exec(got.head)?.[1] ?? 0);
  const body = new Uint8Array(want);
  body.set(got.rest.subarray(0, want));
  let have = Math.min(got.rest.byteLength, want);
  while (have < want) {
    const n = await conn.read(body.subarray(have));
    if (n === null) return null;
    have += n;
  }
  return { head: got.head, body };
}

export async function writeAll(conn: Deno.Conn, data: string | Uint8Array): Promise<void> {
  const bytes = typeof data === "string" ? enc.encode(data) : data;
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

/**
 * The servers a test that names its own server runs on here. Under `deno task test` each pass
 * (`PF_TEST_HTTP_SERVER`) runs only its own: the other pass runs the other, so each runs once in
 * the suite, not twice. Run directly (`deno test`), both.
 */
export function serversOfThisPass(): Array<"relay" | "deno"> {
  const pass = Deno.env.get("PF_TEST_HTTP_SERVER");
  return pass === "relay" || pass === "deno" ? [pass] : ["relay", "deno"];
}

/**
 * A relay running in this process on 127.0.0.1:0, on the server `listen.ts` picks (the relay's
 * own HTTP/1.1 server unless the env says `HTTP_SERVER=deno`). `PF_TEST_HTTP_SERVER=deno` runs
 * every test that does not choose on Deno.serve instead.
 */
export interface TestRelay {
  url: string;
  port: number;
  app: App;
  logs: string[];
  close(): Promise<void>;
}

export function startRelay(env: Record<string, string>, deps: AppDeps = {}): TestRelay {
  const choice = Deno.env.get("PF_TEST_HTTP_SERVER");
  const config = parseConfig({
    HOST: "127.0.0.1",
    PORT: "0",
    ...(choice ? { HTTP_SERVER: choice } : {}),
    ...env,
  });
  const logs: string[] = [];
  const log = deps.log ??
    new Logger({ level: config.debugLog ? "debug" : "info", sink: (t) => logs.push(t) });
  // Background probes would add requests the tests count: on only when a test asks.
  const app = createApp(config, { background: false, ...deps, log });
  const listener = listen(config, {
    hostname: "127.0.0.1",
    port: 0,
    handler: (req, info) => app.fetch(req, info),
    log,
    maxConnections: app.maxConnections,
    onDrop: (reason) => app.clientDropped(reason),
  });
  app.attachServer(listener);
  return {
    url: `http://127.0.0.1:${listener.addr.port}`,
    port: listener.addr.port,
    app,
    logs,
    close: boundedClose(
      async () => {
        await listener.shutdown();
        app.close();
      },
      () =>
        `relay.close(): ${app.inFlight} request(s) still in flight (a stream that never ended: ` +
        "did a client's cancel or abort not reach A?)",
      () => app.close(),
    ),
  };
}

/** A parsed raw response. */
export interface RawResponse {
  status: number;
  head: string;
  headers: Map<string, string>;
  /** Body bytes exactly as received (de-chunked when chunked). */
  body: Uint8Array;
  /** The client closed the connection after `closeAfterAnswerMs`: the server had not. */
  closedByClient: boolean;
}

/**
 * Sends raw request bytes on a new connection and reads the whole response until the server
 * closes (send `connection: close`). Body bytes are not decoded: what the relay sent is what
 * this returns (chunked framing removed). With `closeAfterAnswerMs`, the client closes the
 * connection itself that long after the first bytes of the answer arrived, and returns what it got
 * (for a server that keeps it open after answering). No answer at all still waits: a hang stays a
 * failure, and a slow machine only delays the answer, not the grace after it.
 */
export async function rawRequest(
  port: number,
  request: string | Uint8Array,
  opts: { closeAfterAnswerMs?: number } = {},
): Promise<RawResponse> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let closedByClient = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const graceAfterAnswer = (ms: number) => {
    timer = setTimeout(() => {
      closedByClient = true;
      try {
        conn.close();
      } catch { /* closed */ }
    }, ms);
  };
  try {
    await writeAll(conn, request);
    const parts: Uint8Array[] = [];
    const chunk = new Uint8Array(65536);
    while (true) {
      const n = await conn.read(chunk).catch(() => null);
      if (n === null) break;
      if (parts.length === 0 && opts.closeAfterAnswerMs !== undefined) {
        graceAfterAnswer(opts.closeAfterAnswerMs);
      }
      parts.push(chunk.slice(0, n));
    }
    const all = concat(parts);
    const text = new TextDecoder("latin1").decode(all);
    const end = text.indexOf("\r\n\r\n");
    const head = text.slice(0, end);
    const headers = new Map<string, string>();
    for (const line of head.split("\r\n").slice(1)) {
      const i = line.indexOf(":");
      headers.set(line.slice(0, i).toLowerCase(), line.slice(i + 1).trim());
    }
    let body = all.subarray(end + 4);
    if (headers.get("transfer-encoding") === "chunked") body = dechunk(body);
    return { status: Number(head.split(" ")[1]), head, headers, body, closedByClient };
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

/**
 * `value` cut at the given points (each taken modulo its length + 1, repeats ignored), in order:
 * how property tests feed a parser a stream in arbitrary pieces.
 */
export function cutAt<T extends { readonly length: number; slice(start: number, end?: number): T }>(
  value: T,
  points: number[],
): T[] {
  const at = [...new Set(points.map((p) => p % (value.length + 1)))].sort((a, b) => a - b);
  const pieces: T[] = [];
  let last = 0;
  for (const p of at) {
    pieces.push(value.slice(last, p));
    last = p;
  }
  pieces.push(value.slice(last));
  return pieces;
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function dechunk(bytes: Uint8Array): Uint8Array {
  const out: Uint8Array[] = [];
  let i = 0;
  while (i < bytes.length) {
    let j = i;
    while (!(bytes[j] === 13 && bytes[j + 1] === 10)) j++;
    const size = parseInt(new TextDecoder().decode(bytes.subarray(i, j)).split(";")[0]!, 16);
    if (size === 0) break;
    out.push(bytes.subarray(j + 2, j + 2 + size));
    i = j + 2 + size + 2;
  }
  return concat(out);
}

/**
 * Stops a child process by its PID: SIGTERM, then SIGKILL if it has not exited after `graceMs`.
 * Resolves once it has exited.
 */
export async function stopChild(child: Deno.ChildProcess, graceMs: number): Promise<void> {
  const kill = (signal: Deno.Signal) => {
    try {
      child.kill(signal);
    } catch { /* exited */ }
  };
  kill("SIGTERM");
  const timer = setTimeout(() => kill("SIGKILL"), graceMs);
  await child.status;
  clearTimeout(timer);
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function sha256(bytes: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The path of `cmd` on PATH, or null when it is not installed. */
export function findCommand(cmd: string): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${cmd}`).isFile) return `${dir}/${cmd}`;
    } catch { /* not here */ }
  }
  return null;
}

/** A port with nothing listening (bound then released). */
export function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/**
 * How long a fixture's `close()` waits for its server to finish. A stream left open (or a cancel
 * that never reached the other side) would make it wait for ever and stall the whole run; past
 * this the test fails instead, saying what is still open.
 */
export const CLOSE_LIMIT_MS = 10_000;

/** The longest a {@link deadline.test} may run unless it says otherwise. */
export const TEST_DEADLINE_MS = 30_000;

/**
 * Settles like `p` if it settles within `ms`; otherwise rejects with "timed out after ms: what".
 * The timer never outlives the call.
 */
export async function within<T>(
  p: Promise<T>,
  ms: number,
  what: string | (() => string),
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new Error(`timed out after ${ms} ms: ${typeof what === "string" ? what : what()}`));
    }, ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Close failures of the fixtures made inside the running {@link deadline.test} (null outside
 * one). Kept aside so that a hung `close()` in a `finally` does not replace the assertion that
 * failed first: the wrapper reports both.
 */
let closeFailures: Error[] | null = null;

/**
 * A fixture's `close()`: `shutdown` raced against {@link CLOSE_LIMIT_MS}. Past the limit, `giveUp`
 * releases what it can, and the failure is thrown (or, inside {@link deadline.test}, reported by
 * the wrapper once the test body has ended).
 */
function boundedClose(
  shutdown: () => Promise<void>,
  what: () => string,
  giveUp: () => void,
): () => Promise<void> {
  const sink = closeFailures;
  return async () => {
    try {
      await within(shutdown(), CLOSE_LIMIT_MS, what);
    } catch (err) {
      giveUp();
      if (sink === null || !(err instanceof Error)) throw err;
      sink.push(err);
    }
  };
}

/** What {@link deadline.test} takes besides the test function. */
export interface DeadlineTestOptions {
  name: string;
  /** Longest run in ms; {@link TEST_DEADLINE_MS} when not given. */
  ms?: number;
  /** As in `Deno.test`: the test is listed as ignored, under its name. */
  ignore?: boolean;
}

/** Tests that cannot hang the run. */
export const deadline = {
  /**
   * `Deno.test` with a deadline: the test fails once it has run `ms` instead of hanging the
   * whole run (Deno has no per-test timeout). The signal given to the test aborts at the
   * deadline; tests hand it to `fetch` so that a read stuck on a stream that never ends is broken
   * off and the test's own cleanup runs. A fixture whose `close()` hung fails the test too, after
   * whatever failed first. Failures name the test's file and line (Deno's report names this file).
   */
  test(
    nameOrOptions: string | DeadlineTestOptions,
    fn: (signal: AbortSignal) => Promise<void>,
  ): void {
    const o = typeof nameOrOptions === "string" ? { name: nameOrOptions } : nameOrOptions;
    const ms = o.ms ?? TEST_DEADLINE_MS;
    const where = callerLocation();
    Deno.test({
      name: o.name,
      ignore: o.ignore ?? false,
      async fn() {
        const ac = new AbortController();
        const failures: Error[] = [];
        closeFailures = failures;
        const run = fn(ac.signal);
        try {
          await within(run, ms, "the test's deadline passed (a stream or a close() never ended)");
        } catch (err) {
          ac.abort(err);
          if (err instanceof Error) {
            if (failures.length > 0) {
              err.message += `\n\nThen, while cleaning up: ${
                failures.map((f) => f.message).join("\n")
              }`;
            }
            err.message += `\n(test at ${where})`;
          }
          throw err;
        } finally {
          closeFailures = null;
        }
        if (failures.length > 0) {
          throw new Error(`${failures.map((f) => f.message).join("\n")}\n(test at ${where})`);
        }
      },
    });
  },
};

/** "tests/x_test.ts:12": where the test file called into the fixtures. */
function callerLocation(): string {
  for (const line of (new Error().stack ?? "").split("\n")) {
    const m = /([^/()\s]+_test\.ts):(\d+):\d+\)?$/.exec(line.trim());
    if (m !== null) return `tests/${m[1]}:${m[2]}`;
  }
  return "unknown location";
}

/**
 * Polls until `cond` holds or `ms` passes. `what` names the condition in the timeout error; as a
 * function it is asked only then, so the error can show the state that was reached.
 */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  ms = 3000,
  what: string | (() => string) = "condition",
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) {
      throw new Error(`timed out waiting for ${typeof what === "string" ? what : what()}`);
    }
    await delay(10);
  }
}

/**
 * A fake A's SSE answer: `data: <n>` events `gapMs` apart, the first at once; after `count` events
 * the stream ends (endless without `count`). `onCancel` runs if the reader goes away.
 */
export function sseResponse(
  opts: { gapMs: number; count?: number; onCancel?: () => void },
): Response {
  let i = 0;
  const body = new ReadableStream<Uint8Array>({
    async pull(c) {
      if (i > 0) await delay(opts.gapMs);
      c.enqueue(enc.encode(`data: ${i}\n\n`));
      if (++i === opts.count) c.close();
    },
    cancel: () => opts.onCancel?.(),
  });
  return new Response(body, { headers: { "content-type": "text/event-stream" } });
}

/** A child process with its stdout collected as it arrives (to wait for log lines). */
export interface CapturedChild {
  child: Deno.ChildProcess;
  /** Everything the child has written to stdout so far. */
  output(): string;
  /** Settles once stdout has ended. */
  outDone: Promise<void>;
  /** The child's whole stderr, once it exits. */
  errText: Promise<string>;
}

/** Spawns `cmd` with stdout and stderr piped and captured. */
export function spawnCaptured(
  cmd: string,
  options: Omit<Deno.CommandOptions, "stdout" | "stderr">,
): CapturedChild {
  const child = new Deno.Command(cmd, { ...options, stdout: "piped", stderr: "piped" }).spawn();
  let out = "";
  const outDone = child.stdout.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (t) => void (out += t) }),
  );
  return { child, output: () => out, outDone, errText: new Response(child.stderr).text() };
}
