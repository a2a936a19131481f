/**
 * Keep-warm benchmark: time to first byte of the first request after a long idle
 * period, with the relay's keep-warm on (UPSTREAM_KEEPWARM_SEC=2) and off (0), against a fake
 * HTTPS Server A on loopback that closes connections idle for 5 s (as claude-code-hub does).
 *
 * Each variant gets its own fake A (to count its TLS handshakes and pings) and its own relay
 * process (`DENO_CERT` trusts the fake's self-signed certificate). Two links are measured: plain
 * loopback, and a simulated B↔A link of `--rtt` ms (see route_sim/delay_relay.ts), where a new
 * connection costs two extra round trips (TCP, TLS 1.3). All relays idle at the same time; then
 * each gets one request on a new client connection. Repeated `--reps` times.
 *
 *   deno run -A bench/keepwarm.ts [--idle-sec=30] [--reps=3] [--rtt=10] [--json=out.json]
 *
 * Runs whether or not keep-warm is implemented: it reports what it measures, including how many
 * new upstream connections each request needed.
 */

import {
  freePort,
  installCleanup,
  median,
  numFlag,
  parseFlags,
  type Proc,
  progress,
  round,
  sleep,
  startRelay,
  tempDir,
} from "./common.ts";
import { buildRequest, Client, parseTarget } from "./http_client.ts";
import { type DelayRelay, startDelayRelay } from "./route_sim/delay_relay.ts";
import { type FakeA, makeCert, startFakeA } from "./route_sim/fake_a.ts";

/** Options of the benchmark. */
export interface KeepWarmOptions {
  idleSec: number;
  reps: number;
  rttMs: number;
  relayCpu: string;
}

/** One variant's result. */
export interface KeepWarmRow {
  keepWarmSec: number;
  link: string;
  ttfbMs: number[];
  medianTtfbMs: number;
  /** TLS handshakes A saw per measured request (idle period + request), median. */
  newConnections: number;
  /** Keep-warm/health requests A saw per idle period, median. */
  pingsPerIdle: number;
}

const BODY = JSON.stringify({
  model: "claude-sonnet-4-5",
  max_tokens: 16,
  stream: true,
  messages: [{ role: "user", content: "hi" }],
});

async function ttfb(url: string): Promise<number> {
  const { target, path } = parseTarget(url);
  const c = await Client.open(target);
  try {
    const req = buildRequest(
      "POST",
      path,
      `${target.hostname}:${target.port}`,
      { "content-type": "application/json", "x-api-key": "sk-keepwarm-bench" },
      BODY,
    );
    const t = await c.exchange(req);
    if (t.status !== 200) throw new Error(`status ${t.status}`);
    return t.firstByteAt - c.connectStartAt;
  } finally {
    c.close();
  }
}

/** Runs the benchmark. */
export async function keepWarmBench(o: KeepWarmOptions): Promise<KeepWarmRow[]> {
  const dir = tempDir("keepwarm");
  const fakes: FakeA[] = [];
  const links: DelayRelay[] = [];
  const procs: Proc[] = [];
  try {
    const { certFile, keyFile } = await makeCert(dir);
    const variants: Array<{
      keepWarmSec: number;
      link: string;
      a: FakeA;
      url: string;
      ttfb: number[];
      conns: number[];
      pings: number[];
    }> = [];
    for (const rtt of [0, o.rttMs]) {
      for (const keepWarmSec of [2, 0]) {
        const a = await startFakeA({
          port: 0,
          certFile,
          keyFile,
          thinkMs: 0,
          events: 1,
          eventGapMs: 0,
          idleCloseMs: 5000,
        });
        fakes.push(a);
        let upstreamPort = a.port;
        if (rtt > 0) {
          const link = startDelayRelay({ port: 0, targetPort: a.port, oneWayMs: rtt / 2 });
          links.push(link);
          upstreamPort = link.port;
        }
        const port = freePort();
        procs.push(
          await startRelay(`relay-kw${keepWarmSec}-rtt${rtt}`, {
            port,
            upstream: `https://127.0.0.1:${upstreamPort}`,
            cpu: o.relayCpu,
            env: {
              DENO_CERT: certFile,
              UPSTREAM_KEEPWARM_SEC: String(keepWarmSec),
              // Keep-warm alone: a spare would keep the "off" relay warm too, and its replacement
              // after the measured request would count as a new connection here.
              UPSTREAM_SPARE_CONNECTIONS: "0",
              ACCESS_LOG: "0",
            },
            logFile: `${dir}/relay-${keepWarmSec}-${rtt}.log`,
          }),
        );
        variants.push({
          keepWarmSec,
          link: rtt === 0 ? "loopback" : `B↔A RTT ${rtt} ms`,
          a,
          url: `http://127.0.0.1:${port}/v1/messages`,
          ttfb: [],
          conns: [],
          pings: [],
        });
      }
    }
    // One request each so every relay has used its pool once.
    for (const v of variants) await ttfb(v.url);
    for (let r = 0; r < o.reps; r++) {
      const before = variants.map((v) => ({ ...v.a.stats }));
      progress(`keepwarm: idle ${o.idleSec} s (${r + 1}/${o.reps})`);
      await sleep(o.idleSec * 1000);
      const pings = variants.map((v, i) => v.a.stats.pings - before[i]!.pings);
      for (const [i, v] of variants.entries()) {
        v.ttfb.push(await ttfb(v.url));
        v.conns.push(v.a.stats.handshakes - before[i]!.handshakes);
        v.pings.push(pings[i]!);
      }
    }
    return variants.map((v) => ({
      keepWarmSec: v.keepWarmSec,
      link: v.link,
      ttfbMs: v.ttfb.map((x) => round(x, 2)),
      medianTtfbMs: round(median(v.ttfb), 2),
      newConnections: median(v.conns),
      pingsPerIdle: median(v.pings),
    }));
  } finally {
    for (const p of procs) await p.stop();
    for (const l of links) l.close();
    for (const a of fakes) a.close();
    Deno.removeSync(dir, { recursive: true });
  }
}

/** The rows as a markdown table. */
export function keepWarmTable(rows: KeepWarmRow[], idleSec: number): string {
  let out = `| link | UPSTREAM_KEEPWARM_SEC | TTFB after ${idleSec} s idle (median) | samples | ` +
    "new TLS connections to A | pings to A per idle period |\n|---|---:|---:|---|---:|---:|\n";
  for (const r of rows) {
    out += `| ${r.link} | ${r.keepWarmSec} | ${r.medianTtfbMs} ms | ${
      r.ttfbMs.join(", ")
    } | ${r.newConnections} | ${r.pingsPerIdle} |\n`;
  }
  return out;
}

if (import.meta.main) {
  const f = parseFlags(Deno.args);
  const opts: KeepWarmOptions = {
    idleSec: numFlag(f, "idle-sec", 30),
    reps: numFlag(f, "reps", 3),
    rttMs: numFlag(f, "rtt", 10),
    relayCpu: f.get("relay-cpu") ?? "0",
  };
  const disarm = installCleanup(opts.reps * (opts.idleSec + 10) + 90);
  const rows = await keepWarmBench(opts);
  disarm();
  const json = f.get("json");
  if (json !== undefined) Deno.writeTextFileSync(json, JSON.stringify({ opts, rows }, null, 2));
  // deno-lint-ignore no-console
  console.log(keepWarmTable(rows, opts.idleSec));
}
