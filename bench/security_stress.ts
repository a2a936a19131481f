// deno-lint-ignore-file no-console
/**
 * Bounded hostile-traffic stress run for the access limits (not part of `deno task test`).
 *
 * Three child processes besides this one, all on 127.0.0.1:
 *   - the relay, started with the narrow permissions `deno task start` computes (optionally under
 *     `ulimit -n` with `--fd-limit=N`, to exercise shedding and the listener restart);
 *   - a fake Server A (raw HTTP/1.1, so an upstream reset is a real mid-body connection close);
 *   - a "side" process: slowloris sockets (one header byte a second), half-sent bodies (cut by
 *     CLIENT_BODY_TIMEOUT_SEC), oversized header sections, and normal traffic, timed. It runs in its
 *     own process so its timings measure the relay, not this process's event loop.
 * This process opens `--streams` concurrent SSE streams and checks each byte for byte against what
 * A sent: 10% are slow readers, 10% abort mid-stream, 10% are reset by A mid-stream (those must end
 * in an error, never a clean end). Afterwards: the relay is alive and its descriptor count is back
 * to the baseline.
 *
 * Slowloris sockets are closed by the relay after CLIENT_HEADER_TIMEOUT_SEC (default 20 s), which
 * is longer than the default stream phase (~10 s): they are then still open at the end. Pass
 * `--header-timeout-sec=N` (N shorter than the stream phase) to see the relay close them; the side
 * reports how many it closed and how long after connecting (`closedByRelay`, `msToClose`).
 *
 *   deno run -A bench/security_stress.ts [--streams=3000] [--chunks=24] [--gap-ms=60] [--slowloris=300]
 *     [--half-bodies=50] [--fd-limit=0] [--header-timeout-sec=0 (relay default)] [--max-sec=180]
 *     [--http-server=relay|deno]
 *
 * Every child is stopped by its PID; `--max-sec` bounds the whole run.
 */

import { parseConfig } from "../lib/config/config.ts";
import { connectionCap } from "../lib/server/conn_limit.ts";
import { relayDenoArgs } from "../lib/ops/permissions.ts";

const flags = new Map(
  Deno.args.filter((a) => a.startsWith("--")).map((a) => {
    const eq = a.indexOf("=");
    return eq < 0 ? [a.slice(2), "true"] as const : [a.slice(2, eq), a.slice(eq + 1)] as const;
  }),
);
const num = (k: string, d: number) => (flags.has(k) ? Number(flags.get(k)) : d);
const STREAMS = num("streams", 3000);
const CHUNKS = num("chunks", 24);
const GAP_MS = num("gap-ms", 60);
const SLOWLORIS = num("slowloris", 300);
const HALF_BODIES = num("half-bodies", 50);
const FD_LIMIT = num("fd-limit", 0);
const HEADER_TIMEOUT_SEC = num("header-timeout-sec", 0);
/** `relay` (own HTTP/1.1 server, the default) or `deno` (Deno.serve), as HTTP_SERVER. */
const HTTP_SERVER = Deno.args.find((a) => a.startsWith("--http-server="))?.split("=")[1] ?? "relay";
const MAX_SEC = num("max-sec", 180);
const BODY_TIMEOUT_SEC = 3;
const SELF = new URL(import.meta.url).pathname;

const enc = new TextEncoder();
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const t0 = performance.now();
const note = (msg: string) =>
  console.error(`[${((performance.now() - t0) / 1000).toFixed(1)} s] ${msg}`);

// A hard stop: whatever happens, the run ends and every child is killed.
const children: Deno.ChildProcess[] = [];
const deadline = setTimeout(() => {
  note(`max-sec ${MAX_SEC} reached: stopping`);
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch { /* gone */ }
  }
  Deno.exit(3);
}, MAX_SEC * 1000);

/** Deterministic chunk j of stream i (xorshift bytes as hex, varying length). */
function chunk(i: number, j: number): string {
  let x = (i * 2654435761 + j * 40503 + 1) >>> 0;
  let hex = "";
  const len = 64 + ((i * 31 + j * 17) % 400);
  while (hex.length < len) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    hex += x.toString(16).padStart(8, "0");
  }
  return `data: {"i":${i},"j":${j},"pad":"${hex.slice(0, len)}"}\n\n`;
}
function expected(i: number): string {
  let s = "";
  for (let j = 0; j < CHUNKS; j++) s += chunk(i, j);
  return s;
}

function quantiles(values: number[]) {
  const sorted = [...values].sort((a, b) => a - b);
  const q = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
  const r = (n: number | undefined) => (n === undefined ? null : Number(n.toFixed(1)));
  return { n: sorted.length, p50ms: r(q(0.5)), p99ms: r(q(0.99)), maxMs: r(sorted.at(-1)) };
}

// ---- mode 1: fake Server A ----------------------------------------------------------------------

function indexOfHeadEnd(b: Uint8Array): number {
  for (let k = 0; k + 3 < b.length; k++) {
    if (b[k] === 13 && b[k + 1] === 10 && b[k + 2] === 13 && b[k + 3] === 10) return k;
  }
  return -1;
}

async function runFakeA(): Promise<never> {
  let open = 0;
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0, tcpBacklog: 4096 });
  const serveConn = async (conn: Deno.Conn): Promise<void> => {
    const readBuf = new Uint8Array(65536);
    let pending = new Uint8Array(0);
    const more = async (): Promise<boolean> => {
      const n = await conn.read(readBuf).catch(() => null);
      if (n === null) return false;
      const merged = new Uint8Array(pending.length + n);
      merged.set(pending);
      merged.set(readBuf.subarray(0, n), pending.length);
      pending = merged;
      return true;
    };
    const write = (s: string) => conn.write(enc.encode(s));
    while (true) {
      let end: number;
      while ((end = indexOfHeadEnd(pending)) < 0) if (!(await more())) return;
      const head = dec.decode(pending.subarray(0, end));
      pending = pending.subarray(end + 4);
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      // Like A: read the whole JSON body before answering.
      if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
        while (!dec.decode(pending).includes("0\r\n\r\n")) if (!(await more())) return;
        pending = new Uint8Array(0);
      } else {
        while (pending.length < length) if (!(await more())) return;
        pending = pending.subarray(length);
      }
      const url = new URL(head.split(" ")[1] ?? "/", "http://a");
      if (url.pathname === "/v1/models") {
        const body = '{"object":"list","data":[]}';
        await write(
          "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" +
            `content-length: ${body.length}\r\n\r\n${body}`,
        );
        continue;
      }
      const i = Number(url.searchParams.get("i"));
      const reset = url.searchParams.get("mode") === "reset";
      open++;
      try {
        await write(
          "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        for (let j = 0; j < CHUNKS; j++) {
          await sleep(GAP_MS + ((i + j) % 4) * 20);
          const c = chunk(i, j);
          if (reset && j === CHUNKS / 2) {
            await write(`${c.length.toString(16)}\r\n${c.slice(0, 10)}`); // half a chunk, then gone
            conn.close();
            return;
          }
          await write(`${c.length.toString(16)}\r\n${c}\r\n`);
        }
        await write("0\r\n\r\n");
      } catch {
        return; // the relay closed the connection (its client aborted)
      } finally {
        open--;
      }
    }
  };
  console.log(JSON.stringify({ port: (listener.addr as Deno.NetAddr).port }));
  setInterval(() => console.log(JSON.stringify({ open })), 500);
  for await (const conn of listener) {
    serveConn(conn).catch(() => {}).finally(() => {
      try {
        conn.close();
      } catch { /* closed */ }
    });
  }
  throw new Error("listener closed");
}

// ---- mode 2: hostile sockets and normal traffic -------------------------------------------------

async function runSide(port: number): Promise<never> {
  let running = true;
  (async () => {
    for await (const _ of Deno.stdin.readable) { /* until the main process closes stdin */ }
    running = false;
  })();
  const hostile: Deno.Conn[] = [];
  const http = Deno.createHttpClient({ http2: false });

  const slowloris = (async () => {
    const conns: Deno.Conn[] = [];
    let refused = 0;
    // When the relay closed each socket (its header timeout), ms after connecting.
    const closedAfter: number[] = [];
    for (let k = 0; k < SLOWLORIS; k++) {
      try {
        const t = performance.now();
        const c = await Deno.connect({ hostname: "127.0.0.1", port });
        await c.write(enc.encode("GET /v1/models HTTP/1.1\r\n"));
        conns.push(c);
        hostile.push(c);
        // Any answer (408) or end of stream means the relay gave up on the socket.
        const seen = () => void (running && closedAfter.push(performance.now() - t));
        c.read(new Uint8Array(256)).then(seen, seen);
      } catch {
        refused++;
      }
    }
    let bytes = 0;
    let stillOpen = 0;
    while (running) {
      stillOpen = 0;
      for (const c of conns) {
        await c.write(enc.encode("x")).then(() => (bytes++, stillOpen++), () => {});
      }
      await sleep(1000);
    }
    return {
      opened: conns.length,
      refused,
      headerBytesTrickled: bytes,
      openAtEnd: stillOpen,
      closedByRelay: closedAfter.length,
      msToClose: quantiles(closedAfter),
    };
  })();

  const halfBodies = Promise.all(Array.from({ length: HALF_BODIES }, async () => {
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      hostile.push(c);
      await c.write(enc.encode(
        'POST /v1/messages?i=0 HTTP/1.1\r\nhost: b\r\ncontent-length: 100000\r\n\r\n{"x":',
      ));
      const t = performance.now();
      const buf = new Uint8Array(1024);
      const n = await c.read(buf);
      const status = Number(dec.decode(buf.subarray(0, n ?? 0)).split(" ")[1]);
      return { status, ms: performance.now() - t };
    } catch {
      return { status: 0, ms: 0 };
    }
  }));

  const oversized = (async () => {
    const seen: Record<string, number> = {};
    while (running) {
      for (const kb of [40, 100]) {
        let key: string;
        try {
          const c = await Deno.connect({ hostname: "127.0.0.1", port });
          await c.write(enc.encode(
            `GET /v1/models HTTP/1.1\r\nhost: b\r\nx-big: ${"a".repeat(kb * 1024)}\r\n\r\n`,
          )).catch(() => 0);
          const buf = new Uint8Array(256);
          const n = await c.read(buf).catch(() => null);
          key = `${kb}KB→${n === null ? "closed" : dec.decode(buf.subarray(0, n)).split(" ")[1]}`;
          c.close();
        } catch {
          key = `${kb}KB→connect-failed`;
        }
        seen[key] = (seen[key] ?? 0) + 1;
      }
      await sleep(200);
    }
    return seen;
  })();

  const latencies: number[] = [];
  const status: Record<string, number> = {};
  const normal = Promise.all([0, 1].map(async () => {
    while (running) {
      const t = performance.now();
      try {
        const r = await fetch(`http://127.0.0.1:${port}/v1/models`, { client: http });
        await r.text();
        status[r.status] = (status[r.status] ?? 0) + 1;
      } catch {
        status.error = (status.error ?? 0) + 1;
      }
      latencies.push(performance.now() - t);
      await sleep(20);
    }
  }));

  const half = await halfBodies;
  while (running) await sleep(100);
  const result = {
    slowloris: await slowloris,
    halfBodies: {
      sent: HALF_BODIES,
      got408: half.filter((h) => h.status === 408).length,
      other: half.filter((h) => h.status !== 408).map((h) => h.status),
      msTo408: quantiles(half.filter((h) => h.status === 408).map((h) => h.ms)),
    },
    oversizedHeaders: await oversized,
    normalTraffic: { status, latency: quantiles(latencies) },
  };
  await normal;
  for (const c of hostile) {
    try {
      c.close();
    } catch { /* closed */ }
  }
  http.close();
  console.log(JSON.stringify(result));
  Deno.exit(0);
}

// ---- children ------------------------------------------------------------------------------------

function spawnChild(cmd: Deno.Command) {
  const child = cmd.spawn();
  children.push(child);
  let out = "";
  const done = child.stdout.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (t) => void (out += t) }),
  );
  return { child, out: () => out, done };
}

async function waitFor(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

// ---- mode 3 (default): the streams ---------------------------------------------------------------

async function runMain(): Promise<boolean> {
  const fakeA = spawnChild(
    new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net=127.0.0.1",
        SELF,
        "--fake-a",
        `--chunks=${CHUNKS}`,
        `--gap-ms=${GAP_MS}`,
      ],
      stdout: "piped",
      stderr: "inherit",
    }),
  );
  await waitFor(() => /"port":\d+/.test(fakeA.out()), "fake A");
  const aPort = Number(/"port":(\d+)/.exec(fakeA.out())![1]);
  const aOpen = () => Number([...fakeA.out().matchAll(/"open":(\d+)/g)].at(-1)?.[1] ?? -1);

  const env: Record<string, string> = {
    HOST: "127.0.0.1",
    PORT: "0",
    UPSTREAM_SERVER_A: `http://127.0.0.1:${aPort}`,
    UPSTREAM_KEEPWARM_SEC: "0",
    CLIENT_BODY_TIMEOUT_SEC: String(BODY_TIMEOUT_SEC),
    ACCESS_LOG: "0",
  };
  if (HEADER_TIMEOUT_SEC) env.CLIENT_HEADER_TIMEOUT_SEC = String(HEADER_TIMEOUT_SEC);
  env.HTTP_SERVER = HTTP_SERVER;
  // What `deno task start` derives from the descriptor limit (9,500 for 20,000).
  env.MAX_CONNECTIONS = String(connectionCap(0, FD_LIMIT || 20_000).max);
  const args = relayDenoArgs(parseConfig(env), {}, new URL("../main.ts", import.meta.url).pathname);
  const relayProc = spawnChild(
    FD_LIMIT
      ? new Deno.Command("bash", {
        args: ["-c", `ulimit -n ${FD_LIMIT} && exec "$0" "$@"`, Deno.execPath(), ...args],
        env,
        clearEnv: true,
        stdout: "piped",
        stderr: "piped",
      })
      : new Deno.Command(Deno.execPath(), {
        args,
        env,
        clearEnv: true,
        stdout: "piped",
        stderr: "piped",
      }),
  );
  const relayErr = new Response(relayProc.child.stderr).text();
  const addr = /"address":"http:\/\/127\.0\.0\.1:(\d+)"/;
  await waitFor(() => addr.test(relayProc.out()), "relay");
  const port = Number(addr.exec(relayProc.out())![1]);
  const relay = `http://127.0.0.1:${port}`;
  const pid = relayProc.child.pid;
  note(
    `relay pid ${pid} on ${relay}${FD_LIMIT ? ` (ulimit -n ${FD_LIMIT})` : ""}: deno ${
      args.join(" ")
    }`,
  );

  const fdCount = (): number => {
    try {
      let n = 0;
      for (const _ of Deno.readDirSync(`/proc/${pid}/fd`)) n++;
      return n;
    } catch {
      return -1;
    }
  };

  // One client for the whole run, closed at the end: Deno.serve keeps idle keep-alive connections
  // open for as long as the client does, and they count in the relay's descriptors.
  const http = Deno.createHttpClient({ http2: false });
  for (let k = 0; k < 5; k++) {
    await (await fetch(`${relay}/v1/models`, { client: http })).text();
  }
  await sleep(5000); // pooled upstream connections idle out (UPSTREAM_POOL_IDLE_SEC=4)
  const fdStart = fdCount();
  note(`baseline descriptors: ${fdStart}`);
  let fdPeak = fdStart;
  const sampler = setInterval(() => (fdPeak = Math.max(fdPeak, fdCount())), 200);

  const side = spawnChild(
    new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net=127.0.0.1",
        SELF,
        `--side-port=${port}`,
        `--slowloris=${SLOWLORIS}`,
        `--half-bodies=${HALF_BODIES}`,
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }),
  );

  type Kind = "normal" | "slow" | "abort" | "reset";
  const kindOf = (i: number): Kind => (["slow", "abort", "reset"] as const)[i % 10 - 6] ?? "normal";
  const outcomes: Record<string, number> = {};
  const count = (k: string) => (outcomes[k] = (outcomes[k] ?? 0) + 1);
  let open = 0;
  let maxOpen = 0;
  let corrupted = 0;

  const stream = async (i: number): Promise<void> => {
    const kind = kindOf(i);
    const want = expected(i);
    let got = "";
    open++;
    maxOpen = Math.max(maxOpen, open);
    const ac = new AbortController();
    try {
      const res = await fetch(`${relay}/v1/messages?i=${i}&mode=${kind}`, {
        method: "POST",
        body: `{"i":${i}}`,
        signal: ac.signal,
        client: http,
      });
      if (res.status !== 200) {
        count(`${kind}:status-${res.status}`);
        await res.body?.cancel();
        return;
      }
      const reader = res.body!.getReader();
      const d = new TextDecoder();
      try {
        while (true) {
          if (kind === "slow") await sleep(40);
          const { value, done } = await reader.read();
          if (done) break;
          got += d.decode(value, { stream: true });
          if (kind === "abort" && got.length > want.length / 3) {
            ac.abort();
            break;
          }
        }
      } catch {
        // A broken stream: expected for resets and aborts, as long as what came is a prefix.
        if (!want.startsWith(got)) {
          corrupted++;
          count(`${kind}:corrupt-prefix`);
        } else {count(
            `${kind}:${kind === "reset" || kind === "abort" ? "broken-as-expected" : "broken"}`,
          );}
        return;
      }
      if (kind === "abort") {
        if (want.startsWith(got)) count("abort:prefix-ok");
        else {
          corrupted++;
          count("abort:corrupt-prefix");
        }
      } else if (kind === "reset") {
        corrupted++; // a reset that ends cleanly would be silent truncation
        count("reset:clean-end(corrupt)");
      } else if (got === want) count(`${kind}:byte-exact`);
      else {
        corrupted++;
        count(`${kind}:mismatch`);
      }
    } catch (err) {
      count(`${kind}:fetch-error:${err instanceof Error ? err.name : "error"}`);
    } finally {
      open--;
    }
  };

  note(
    `${STREAMS} streams × ${CHUNKS} chunks, ${SLOWLORIS} slowloris, ${HALF_BODIES} half bodies; ` +
      `header timeout ${HEADER_TIMEOUT_SEC ? `${HEADER_TIMEOUT_SEC} s` : "relay default"}`,
  );
  const streamStart = performance.now();
  const all: Promise<void>[] = [];
  for (let i = 0; i < STREAMS; i++) {
    all.push(stream(i));
    if (i % 100 === 99) await sleep(50);
  }
  await Promise.all(all);
  const streamSec = (performance.now() - streamStart) / 1000;
  note(`streams done in ${streamSec.toFixed(1)} s; at most ${maxOpen} at once`);
  await side.child.stdin.close();
  await side.child.status;
  await side.done;
  const sideResult = JSON.parse(side.out().trim().split("\n").at(-1) ?? "{}");
  clearInterval(sampler);
  http.close();

  let fdEnd = fdCount();
  for (let k = 0; k < 40 && fdEnd > fdStart; k++) {
    await sleep(250);
    fdEnd = fdCount();
  }
  if (fdEnd > fdStart) {
    // Say what is still open: the relay's own view, and the descriptors' kinds.
    const info = await fetch(`${relay}/debug/info`).then((r) => r.json(), () => null);
    const kinds: Record<string, number> = {};
    for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) {
      const target = (() => {
        try {
          return Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`).replace(/\d+/g, "N");
        } catch {
          return "?";
        }
      })();
      kinds[target] = (kinds[target] ?? 0) + 1;
    }
    note(
      `descriptors left: ${JSON.stringify(kinds)}; relay: ${
        JSON.stringify({
          inFlight: info?.inFlight,
          openStreams: info?.openStreams,
          pools: info?.pools,
        })
      }`,
    );
  }
  let finalStatus = 0;
  try {
    const r = await fetch(`${relay}/v1/models`);
    finalStatus = r.status;
    await r.text();
  } catch { /* down */ }
  const alive = fdCount() >= 0;
  const summary = {
    streams: STREAMS,
    chunksPerStream: CHUNKS,
    relayFdLimit: FD_LIMIT || 20_000,
    maxConcurrentStreams: maxOpen,
    streamPhaseSec: Number(streamSec.toFixed(1)),
    outcomes,
    corruptedStreams: corrupted,
    ...sideResult,
    relayDescriptors: { start: fdStart, peak: fdPeak, end: fdEnd },
    listenerFailures: (relayProc.out().match(/listener failed/g) ?? []).length,
    listenerRestarts: (relayProc.out().match(/listening again/g) ?? []).length,
    relayAlive: alive,
    finalRequestStatus: finalStatus,
    upstreamStreamsStillOpen: aOpen(),
  };
  relayProc.child.kill("SIGTERM");
  await relayProc.child.status;
  await relayProc.done;
  const stderr = await relayErr;
  Object.assign(summary, { uncaughtInRelay: /Uncaught/.test(stderr) });
  fakeA.child.kill("SIGTERM");
  await fakeA.child.status;
  await fakeA.done.catch(() => {});
  console.log(JSON.stringify(summary, null, 2));
  try {
    Deno.mkdirSync(new URL("./results", import.meta.url), { recursive: true });
    Deno.writeTextFileSync(
      new URL(`./results/security_stress-${Date.now()}.json`, import.meta.url),
      JSON.stringify(summary, null, 2),
    );
  } catch { /* read-only checkout: stdout is enough */ }
  return corrupted === 0 && alive && finalStatus === 200 && fdEnd <= fdStart &&
    !/Uncaught/.test(stderr);
}

if (flags.has("fake-a")) await runFakeA();
if (flags.has("side-port")) await runSide(Number(flags.get("side-port")));
const pass = await runMain();
clearTimeout(deadline);
note(pass ? "PASS" : "FAIL");
Deno.exit(pass ? 0 : 1);
