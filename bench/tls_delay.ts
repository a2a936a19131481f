/**
 * What serving TLS does to response and event timing: the relay on plain HTTP, the relay serving
 * TLS on its own server (`node:tls`, Nagle off), the relay serving TLS on `Deno.serve`
 * (`HTTP_SERVER=deno`), and nginx terminating TLS in front of the plain relay. Deno 2.9.6 keeps
 * Nagle's algorithm on for sockets accepted by `Deno.listenTls`, which `Deno.serve` uses for TLS,
 * and offers no way to turn it off: a small write waits for the ACK of the one before it, and a
 * client that delays its ACK (Linux: up to 40 ms) holds it back that long.
 *
 * Each row gets, from an HTTP/1.1 client with Nagle off (as Node's and curl's are), `--requests`
 * kept-alive JSON POSTs on one connection (A answers with `content-length`, as for a non-streaming
 * completion) and `--streams` SSE streams of `--events` events `--gap-ms` apart (A stamps each with
 * its send time; the delay is arrival minus stamp). A is an in-process `Deno.serve` on plain HTTP.
 * Timing claims only; not a test.
 *
 *   deno run -A bench/tls_delay.ts [--requests=200] [--streams=3] [--events=100] [--gap-ms=5]
 */
import {
  freePort,
  HOST,
  installCleanup,
  numFlag,
  parseFlags,
  type Proc,
  quantile,
  round,
  startRelay,
  tempDir,
} from "./common.ts";
import { preamble, startNginx } from "./nginx.ts";
import { makeCert } from "./route_sim/fake_a.ts";

const flags = parseFlags(Deno.args);
const requests = numFlag(flags, "requests", 200);
const streams = numFlag(flags, "streams", 3);
const events = numFlag(flags, "events", 100);
const gapMs = numFlag(flags, "gap-ms", 5);
const done = installCleanup(300);
const enc = new TextEncoder();
const dec = new TextDecoder();

// ---- Server A: JSON with content-length, or SSE events stamped with their send time ----
const ANSWER = enc.encode(JSON.stringify({
  id: "chatcmpl-1",
  object: "chat.completion",
  choices: [{ index: 0, message: { role: "assistant", content: "ok ".repeat(250) } }],
  usage: { prompt_tokens: 10, completion_tokens: 250, total_tokens: 260 },
}));
const now = () => performance.timeOrigin + performance.now();
const aPort = freePort();
const a = Deno.serve({ hostname: HOST, port: aPort, onListen() {} }, async (req) => {
  const body = await req.text();
  if (!body.includes('"stream":true')) {
    return new Response(ANSWER, { headers: { "content-type": "application/json" } });
  }
  let i = 0;
  const stream = new ReadableStream<Uint8Array>({
    async pull(ctrl) {
      if (i++ === events) return ctrl.close();
      await new Promise((r) => setTimeout(r, gapMs));
      ctrl.enqueue(enc.encode(`data: {"t":${now()},"choices":[{"delta":{"content":"ok"}}]}\n\n`));
    },
  }, { highWaterMark: 0 });
  return new Response(stream, { headers: { "content-type": "text/event-stream" } });
});

// ---- the client: HTTP/1.1, Nagle off, TLS through Deno.startTls on the nodelay socket ----
async function open(port: number, ca: string | null): Promise<Deno.Conn> {
  const tcp = await Deno.connect({ hostname: HOST, port });
  tcp.setNoDelay(true);
  if (ca === null) return tcp;
  return await Deno.startTls(tcp, { hostname: HOST, caCerts: [ca], alpnProtocols: ["http/1.1"] });
}

function post(body: string): Uint8Array {
  return enc.encode(
    `POST /v1/chat/completions HTTP/1.1\r\nhost: ${HOST}\r\ncontent-type: application/json\r\n` +
      `content-length: ${enc.encode(body).byteLength}\r\n\r\n${body}`,
  );
}

/** Kept-alive request latencies (ms), after 20 uncounted ones. */
async function jsonLatencies(port: number, ca: string | null): Promise<number[]> {
  const conn = await open(port, ca);
  const req = post('{"model":"m","messages":[{"role":"user","content":"hi"}]}');
  const buf = new Uint8Array(65536);
  const out: number[] = [];
  try {
    for (let i = 0; i < requests + 20; i++) {
      const t0 = performance.now();
      await conn.write(req);
      let text = "";
      while (true) {
        const n = await conn.read(buf);
        if (n === null) throw new Error("the connection closed");
        text += dec.decode(buf.subarray(0, n));
        const h = text.indexOf("\r\n\r\n");
        const m = h < 0 ? null : /content-length: *(\d+)/i.exec(text.slice(0, h));
        if (m !== null && text.length - h - 4 >= Number(m[1])) break;
        if (h >= 0 && m === null) throw new Error("expected content-length");
      }
      if (i >= 20) out.push(performance.now() - t0);
    }
  } finally {
    conn.close();
  }
  return out;
}

/** Each event's delay (ms): arrival at the client minus A's stamp. */
async function eventDelays(port: number, ca: string | null): Promise<number[]> {
  const out: number[] = [];
  for (let s = 0; s < streams; s++) {
    const conn = await open(port, ca);
    const buf = new Uint8Array(65536);
    let text = "";
    let got = 0;
    try {
      await conn.write(post('{"model":"m","stream":true,"messages":[]}'));
      while (got < events) {
        const n = await conn.read(buf);
        if (n === null) break;
        const at = now();
        text += dec.decode(buf.subarray(0, n));
        const re = /"t":([0-9.]+)/g;
        let m: RegExpExecArray | null;
        let last = 0;
        while ((m = re.exec(text)) !== null) {
          out.push(at - Number(m[1]));
          got++;
          last = re.lastIndex;
        }
        text = text.slice(last);
      }
    } finally {
      conn.close();
    }
    if (got !== events) throw new Error(`stream ${s}: ${got} of ${events} events`);
  }
  return out;
}

// ---- the rows ----
const dir = tempDir("tls_delay");
const { certFile, keyFile } = await makeCert(dir);
const ca = Deno.readTextFileSync(certFile);
const procs: Proc[] = [];
const relayPort = freePort(), tlsPort = freePort(), denoPort = freePort(), nginxPort = freePort();
procs.push(
  await startRelay("relay", {
    port: relayPort,
    upstream: `http://${HOST}:${aPort}`,
    cpu: "0",
    env: { ACCESS_LOG: "0" },
    logFile: `${dir}/relay.log`,
  }),
  await startRelay("relay-tls", {
    port: tlsPort,
    upstream: `http://${HOST}:${aPort}`,
    cpu: "0",
    env: { ACCESS_LOG: "0", TLS_CERT_FILE: certFile, TLS_KEY_FILE: keyFile },
    logFile: `${dir}/relay-tls.log`,
  }),
  await startRelay("relay-tls-deno", {
    port: denoPort,
    upstream: `http://${HOST}:${aPort}`,
    cpu: "0",
    env: { ACCESS_LOG: "0", TLS_CERT_FILE: certFile, TLS_KEY_FILE: keyFile, HTTP_SERVER: "deno" },
    logFile: `${dir}/relay-tls-deno.log`,
  }),
);
const nginxConf = preamble(`${dir}/nginx`) + `  upstream relay {
    server ${HOST}:${relayPort};
    keepalive 64;
  }
  server {
    listen ${HOST}:${nginxPort} ssl;
    ssl_certificate ${certFile};
    ssl_certificate_key ${keyFile};
    location / {
      proxy_pass http://relay;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
`;
procs.push(
  await startNginx("nginx-tls", `${dir}/nginx`, nginxConf, { cpu: "1", ports: [nginxPort] }),
);

const rows: Array<[string, number, string | null]> = [
  ["relay (plain HTTP)", relayPort, null],
  ["relay-tls (TLS at the relay, own server)", tlsPort, ca],
  ["relay-tls-deno (TLS at the relay, HTTP_SERVER=deno: Deno.serve)", denoPort, ca],
  ["nginx-tls (nginx TLS in front of the plain relay)", nginxPort, ca],
];
const ms = (v: number) => round(v, 2).toFixed(2);
let table =
  `Kept-alive JSON (${requests} requests, one connection) and SSE (${streams} × ${events} ` +
  `events ${gapMs} ms apart), ms:\n\n` +
  "| row | JSON p50 | JSON p90 | events p50 | events p90 | events p99 | events max | events > 10 ms |\n" +
  "|---|---:|---:|---:|---:|---:|---:|---:|\n";
try {
  for (const [name, port, rowCa] of rows) {
    const lat = await jsonLatencies(port, rowCa);
    const ev = await eventDelays(port, rowCa);
    table += `| ${name} | ${ms(quantile(lat, 0.5))} | ${ms(quantile(lat, 0.9))} | ` +
      `${ms(quantile(ev, 0.5))} | ${ms(quantile(ev, 0.9))} | ${ms(quantile(ev, 0.99))} | ` +
      `${ms(Math.max(...ev))} | ${ev.filter((d) => d > 10).length} of ${ev.length} |\n`;
  }
  // deno-lint-ignore no-console
  console.log(table);
} finally {
  for (const p of procs) await p.stop();
  await a.shutdown();
  done();
}
