/**
 * Background load for the route simulation: `n` long SSE streams opened straight to relay B (no
 * delay link), each held open until {@link BackgroundLoad.stop}. Fake A answers a path containing
 * `background` with an endless stream (see fake_a.ts), so every stream holds one of B's pooled
 * connections to A for as long as it runs: the situation in which B's one idle connection used to
 * time out and the next client request paid a new TLS connection to A.
 *
 * Raw sockets, not `fetch`: a client pool would add its own connection behaviour to B's. Each
 * stream's bytes are read and dropped. {@link spawnBackground} runs the streams in a process of
 * their own, so that reading them does not load the process that measures (and that runs fake A
 * and the delay links); run as a script, this file is that process:
 *
 *   deno run -A bench/route_sim/background.ts --port=8001 --streams=200
 *
 * prints `open <n>` once the streams are open and holds them until it is terminated.
 */

import { HOST, numFlag, parseFlags, type Proc, ROOT, spawn } from "../common.ts";

const enc = new TextEncoder();

/** Streams in flight. */
export interface BackgroundLoad {
  /** Streams whose first event arrived. */
  readonly open: number;
  /** Bytes received over all streams. */
  readonly bytes: number;
  /** Closes every stream (B cancels its exchanges with A). */
  stop(): Promise<void>;
}

/**
 * Opens `n` streams to B on `port` (in batches, so B's pool grows as it would under rising load)
 * and resolves once every stream has delivered its first bytes, or after `timeoutMs`.
 */
export async function startBackground(
  port: number,
  n: number,
  options: { batch?: number; timeoutMs?: number } = {},
): Promise<BackgroundLoad> {
  const conns = new Set<Deno.Conn>();
  const loops: Promise<void>[] = [];
  let open = 0;
  let bytes = 0;
  const request = enc.encode(
    `POST /v1/messages?background=1 HTTP/1.1\r\nhost: b\r\ncontent-type: application/json\r\n` +
      `x-api-key: sk-route-sim\r\ncontent-length: 2\r\n\r\n{}`,
  );
  const one = async (firstBytes: () => void) => {
    const conn = await Deno.connect({ hostname: HOST, port });
    conns.add(conn);
    const buf = new Uint8Array(16 * 1024);
    let first = true;
    try {
      await conn.write(request);
      while (true) {
        const got = await conn.read(buf);
        if (got === null) break;
        bytes += got;
        if (first) {
          first = false;
          open++;
          firstBytes();
        }
      }
    } catch {
      /* closed by stop() */
    } finally {
      conns.delete(conn);
      try {
        conn.close();
      } catch { /* closed */ }
    }
  };
  const batch = options.batch ?? 50;
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  for (let i = 0; i < n; i += batch) {
    const started: Promise<void>[] = [];
    for (let k = i; k < Math.min(n, i + batch); k++) {
      started.push(
        new Promise<void>((resolve) => {
          loops.push(one(resolve).finally(resolve));
        }),
      );
    }
    const left = Math.max(0, deadline - Date.now());
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.all(started),
      new Promise((r) => (timer = setTimeout(r, left))),
    ]);
    clearTimeout(timer);
  }
  return {
    get open() {
      return open;
    },
    get bytes() {
      return bytes;
    },
    async stop() {
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await Promise.all(loops);
    },
  };
}

/** {@link startBackground} in a child process; resolves once its streams are open. */
export async function spawnBackground(
  port: number,
  n: number,
  timeoutMs = 30_000,
): Promise<{ open: number; stop(): Promise<void> }> {
  const proc: Proc = spawn("background", [
    "deno",
    "run",
    "-A",
    `${ROOT}/bench/route_sim/background.ts`,
    `--port=${port}`,
    `--streams=${n}`,
  ], { pipeStdout: true });
  const lines = proc.child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<null>((r) => (timer = setTimeout(() => r(null), timeoutMs)));
  try {
    while (!/open \d+\n/.test(text)) {
      const next = await Promise.race([lines.read(), timeout]);
      if (next === null || next.done) break;
      text += next.value;
    }
  } finally {
    clearTimeout(timer);
  }
  const open = Number(/open (\d+)\n/.exec(text)?.[1] ?? 0);
  // Keep draining the pipe so the child never blocks on a full one.
  void (async () => {
    try {
      while (!(await lines.read()).done) { /* drop */ }
    } catch { /* closed */ }
  })();
  return {
    open,
    stop: () => proc.stop(),
  };
}

if (import.meta.main) {
  const f = parseFlags(Deno.args);
  const load = await startBackground(numFlag(f, "port", 0), numFlag(f, "streams", 0));
  // deno-lint-ignore no-console
  console.log(`open ${load.open}`);
  // Held until the parent stops this process; a safety limit ends it in any case.
  setTimeout(() => Deno.exit(0), numFlag(f, "max-sec", 600) * 1000);
}
