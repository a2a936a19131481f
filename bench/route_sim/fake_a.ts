/**
 * A fake Server A over HTTPS for route and keep-warm benchmarks. It uses `node:https` (in Deno)
 * because that does what `Deno.serve` and `Deno.listenTls` cannot: close keep-alive connections
 * idle for `idleCloseMs` (claude-code-hub runs on Node, whose 5 s `keepAliveTimeout` is why A
 * drops idle connections after about 5 s), turn Nagle off on TLS sockets (a `Deno.listenTls`
 * socket keeps Nagle on, and its response then waits ~40 ms for the ACK of the session tickets
 * on a fresh connection), and count TLS handshakes.
 *
 * Behaviour: `GET /v1/_ping` (and any GET) answers `{"status":"pong"}` at once. Any other request
 * is read whole, then after `thinkMs` (A holds everything, headers included, until the first
 * delta) gets a chunked `text/event-stream`: the head and the first event in one write, then
 * `events - 1` more every `eventGapMs`, then `[DONE]`. A request whose path contains `background`
 * (route_sim's background load) gets an endless stream instead: an event every
 * `backgroundGapMs`, at once and without thinking, until the client goes away.
 *
 * The certificate is self-signed, made by {@link makeCert} with openssl at run time.
 */

import https from "node:https";
import { HOST } from "../common.ts";

const dec = new TextDecoder();

/** Behaviour of the fake. */
export interface FakeAOptions {
  port: number;
  certFile: string;
  keyFile: string;
  thinkMs: number;
  events: number;
  eventGapMs: number;
  idleCloseMs: number;
  /** Gap between events of a background stream (default 50 ms). */
  backgroundGapMs?: number;
}

/** Counters, read by the benchmark. */
export interface FakeAStats {
  handshakes: number;
  requests: number;
  pings: number;
  /** Background streams open now. */
  background: number;
}

/** A running fake A. */
export interface FakeA {
  port: number;
  stats: FakeAStats;
  close(): void;
}

/** Makes a self-signed certificate for 127.0.0.1/localhost in `dir`; returns the file paths. */
export async function makeCert(dir: string): Promise<{ certFile: string; keyFile: string }> {
  const certFile = `${dir}/fake_a_cert.pem`;
  const keyFile = `${dir}/fake_a_key.pem`;
  const out = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      keyFile,
      "-out",
      certFile,
      "-days",
      "2",
      "-subj",
      "/CN=127.0.0.1",
      "-addext",
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
      "-addext",
      "basicConstraints=critical,CA:FALSE",
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`openssl failed: ${dec.decode(out.stderr)}`);
  return { certFile, keyFile };
}

function sseEvent(i: number): string {
  return `data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",` +
    `"text":"word${i} "}}\n\n`;
}

/** Starts the fake on 127.0.0.1:`port` (0 = any free port). */
export async function startFakeA(opts: FakeAOptions): Promise<FakeA> {
  const stats: FakeAStats = { handshakes: 0, requests: 0, pings: 0, background: 0 };
  const timers = new Set<ReturnType<typeof setInterval>>();
  const sockets = new Set<{ destroy(): void }>();
  const server = https.createServer({
    cert: Deno.readTextFileSync(opts.certFile),
    key: Deno.readTextFileSync(opts.keyFile),
    ALPNProtocols: ["http/1.1"],
    keepAliveTimeout: opts.idleCloseMs,
    noDelay: true,
  }, (req, res) => {
    stats.requests++;
    req.resume();
    req.on("end", async () => {
      if (req.method === "GET" || req.method === "HEAD") {
        stats.pings++;
        res.writeHead(200, { "content-type": "application/json" });
        res.end('{"status":"pong"}');
        return;
      }
      if (req.url?.includes("background")) {
        stats.background++;
        res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
        let i = 0;
        res.write(sseEvent(i++));
        const t = setInterval(() => res.write(sseEvent(i++)), opts.backgroundGapMs ?? 50);
        timers.add(t);
        res.on("close", () => {
          stats.background--;
          clearInterval(t);
          timers.delete(t);
        });
        return;
      }
      if (opts.thinkMs > 0) await sleep(opts.thinkMs);
      // Head and first event leave in one write, as A sends nothing before the first delta.
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      res.write(sseEvent(0));
      for (let i = 1; i < opts.events; i++) {
        await sleep(opts.eventGapMs);
        res.write(sseEvent(i));
      }
      res.end("data: [DONE]\n\n");
    });
  });
  server.on("secureConnection", (socket) => {
    stats.handshakes++;
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(opts.port, HOST, () => resolve()));
  return {
    port: (server.address() as { port: number }).port,
    stats,
    close() {
      for (const t of timers) clearInterval(t);
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
