/**
 * Route simulation: does a nearby relay B with a warm pool to A beat a client talking to a far
 * A directly? Reproduces the guide's setting on loopback with delay links (see delay_relay.ts):
 *
 *   client ──(client↔A RTT, default 500 ms)──────────────────────────▶ fake A (HTTPS)
 *   client ──(client↔B RTT, default 50 ms)──▶ relay B ──(B↔A RTT, 10 ms)──▶ fake A
 *
 * Fake A "thinks" `--think` ms, then streams a short SSE answer. Measured from the client's
 * connect start (as curl's time_starttransfer), or from the request write on a kept-alive
 * connection: time to first byte and total time for
 *   direct, new connection (TCP + TLS + request, as curl would);
 *   direct, keep-alive;
 *   via B, new client connection (plain HTTP to B; B's pool to A warm), and via B keep-alive;
 *   via B, new client connection, as the first request after `--idle-sec` of silence, with B's
 *   keep-warm on (UPSTREAM_KEEPWARM_SEC=2) and off (0, with UPSTREAM_SPARE_CONNECTIONS=0, which
 *   would otherwise keep a connection warm by replacing it). Fake A closes connections idle 5 s.
 *
 * With `--background=N` the "after idle" rows run under load instead: N endless SSE streams (an
 * event every `--background-gap` ms, default 50) go straight to B, so that every pooled connection
 * to A is busy, from before the idle period until after the measured request. Then the two relays
 * compared are spare connections on (the default, UPSTREAM_SPARE_CONNECTIONS=1) and off (0), both
 * with keep-warm 2 s, in alternating order; each measured request also reports whether it found a
 * ready connection to A (B's `relay_upstream_cold_starts_total`) and how many TLS handshakes A saw
 * while it ran (a spare replacing the one the request took counts there, off its path).
 *
 *   deno run -A bench/route_sim/run.ts [--idle-sec=60] [--reps=5] [--idle-reps=1] [--json=out.json]
 *   deno run -A bench/route_sim/run.ts --background=200 --idle-sec=8 --idle-reps=5
 *
 * Prints a markdown table on stdout (and the raw numbers as JSON with --json).
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
} from "../common.ts";
import { buildRequest, Client, parseTarget } from "../http_client.ts";
import { spawnBackground } from "./background.ts";
import { startDelayRelay } from "./delay_relay.ts";
import { type FakeA, makeCert, startFakeA } from "./fake_a.ts";

const REQUEST_BODY = JSON.stringify({
  model: "claude-sonnet-4-5",
  stream: true,
  max_tokens: 64,
  messages: [{ role: "user", content: "hi" }],
});

/** One measured request. */
interface Sample {
  ttfb: number;
  total: number;
}

/** Parameters of the simulation. */
export interface RouteSimOptions {
  clientARttMs: number;
  clientBRttMs: number;
  bARttMs: number;
  thinkMs: number;
  events: number;
  eventGapMs: number;
  idleSec: number;
  reps: number;
  idleReps: number;
  relayCpu: string;
  /** Background SSE streams straight to B during the "after idle" rows; 0 = none. */
  background: number;
  backgroundGapMs: number;
}

/** One row of the result table. */
export interface RouteRow {
  path: string;
  floorTtfbMs: number;
  ttfbMs: number;
  totalMs: number;
  samples: number;
  overFloorPct: number;
  /** After-idle rows: measured requests that found no ready connection to A (B's own count). */
  coldStarts?: number;
  /** After-idle rows: TLS handshakes A saw while the measured requests ran (all, per request). */
  handshakes?: number[];
  /** After-idle rows: every TTFB sample, ms. */
  ttfbSamples?: number[];
}

async function once(url: string, ca: string[] | undefined, client?: Client): Promise<Sample> {
  const { target, path } = parseTarget(url, ca);
  const c = client ?? await Client.open(target);
  const req = buildRequest(
    "POST",
    path,
    `${target.hostname}:${target.port}`,
    {
      "content-type": "application/json",
      "x-api-key": "sk-route-sim",
      "anthropic-version": "2023-06-01",
    },
    REQUEST_BODY,
  );
  const t = await c.exchange(req);
  if (t.status !== 200) throw new Error(`${url}: status ${t.status}`);
  const from = client === undefined ? c.connectStartAt : t.sentAt;
  if (client === undefined) c.close();
  return { ttfb: t.firstByteAt - from, total: t.endAt - from };
}

/** Runs the simulation; returns the table rows. */
export async function routeSim(o: RouteSimOptions): Promise<RouteRow[]> {
  const dir = tempDir("route");
  const { certFile, keyFile } = await makeCert(dir);
  const ca = [Deno.readTextFileSync(certFile)];
  const a = await startFakeA({
    port: 0,
    certFile,
    keyFile,
    thinkMs: o.thinkMs,
    events: o.events,
    eventGapMs: o.eventGapMs,
    idleCloseMs: 5000,
    backgroundGapMs: o.backgroundGapMs,
  });
  const linkCA = startDelayRelay({ port: 0, targetPort: a.port, oneWayMs: o.clientARttMs / 2 });
  const relays: Record<string, { port: number; url: string; direct: number }> = {};
  const procs: Proc[] = [];
  const links = [linkCA];
  const direct = `https://127.0.0.1:${linkCA.port}/v1/messages`;
  const rows: RouteRow[] = [];
  const add = (path: string, floor: number, s: Sample[]) => {
    const ttfb = median(s.map((x) => x.ttfb));
    rows.push({
      path,
      floorTtfbMs: floor,
      ttfbMs: round(ttfb, 1),
      totalMs: round(median(s.map((x) => x.total)), 1),
      samples: s.length,
      overFloorPct: round((ttfb / floor - 1) * 100, 1),
    });
  };
  // Without background load: keep-warm on and off. With it: spare connections on and off.
  const variants: ReadonlyArray<readonly [string, Record<string, string>]> = o.background > 0
    ? [
      ["on", { UPSTREAM_KEEPWARM_SEC: "2" }],
      ["off", { UPSTREAM_KEEPWARM_SEC: "2", UPSTREAM_SPARE_CONNECTIONS: "0" }],
    ]
    : [
      ["on", { UPSTREAM_KEEPWARM_SEC: "2" }],
      // Spares alone would keep this relay warm too (by replacing connections).
      ["off", { UPSTREAM_KEEPWARM_SEC: "0", UPSTREAM_SPARE_CONNECTIONS: "0" }],
    ];
  try {
    for (const [name, env] of variants) {
      const linkBA = startDelayRelay({ port: 0, targetPort: a.port, oneWayMs: o.bARttMs / 2 });
      const port = freePort();
      procs.push(
        await startRelay(`relay-${name}`, {
          port,
          upstream: `https://127.0.0.1:${linkBA.port}`,
          cpu: o.relayCpu,
          env: { DENO_CERT: certFile, ACCESS_LOG: "0", ...env },
          logFile: `${dir}/relay-${name}.log`,
        }),
      );
      const linkCB = startDelayRelay({ port: 0, targetPort: port, oneWayMs: o.clientBRttMs / 2 });
      links.push(linkBA, linkCB);
      relays[name] = { port, url: `http://127.0.0.1:${linkCB.port}/v1/messages`, direct: port };
    }
    // Warm the client's own TLS code and both relays' pools (not measured).
    await once(`https://127.0.0.1:${a.port}/v1/messages`, ca);
    for (const r of Object.values(relays)) await once(r.url, undefined);

    const rCA = o.clientARttMs, rCB = o.clientBRttMs, rBA = o.bARttMs, think = o.thinkMs;
    progress(`route_sim: direct, new connections (${o.reps}×)`);
    const directNew: Sample[] = [];
    for (let i = 0; i < o.reps; i++) directNew.push(await once(direct, ca));
    add("direct client→A, new connection (TCP+TLS+request)", 3 * rCA + think, directNew);

    progress("route_sim: direct, keep-alive");
    const kept = await Client.open(parseTarget(direct, ca).target);
    await once(direct, ca, kept);
    const directKa: Sample[] = [];
    for (let i = 0; i < o.reps; i++) directKa.push(await once(direct, ca, kept));
    kept.close();
    add("direct client→A, keep-alive", rCA + think, directKa);

    progress("route_sim: via B");
    const viaNew: Sample[] = [];
    for (let i = 0; i < o.reps; i++) viaNew.push(await once(relays.on!.url, undefined));
    add("via B, new client connection (B→A pool warm)", 2 * rCB + rBA + think, viaNew);
    const keptB = await Client.open(parseTarget(relays.on!.url).target);
    await once(relays.on!.url, undefined, keptB);
    const viaKa: Sample[] = [];
    for (let i = 0; i < o.reps; i++) viaKa.push(await once(relays.on!.url, undefined, keptB));
    keptB.close();
    add("via B, keep-alive client connection", rCB + rBA + think, viaKa);

    const floorB = 2 * rCB + rBA + think;
    if (o.background > 0) {
      const under = await afterIdleUnderLoad(o, a, relays);
      const what = `after ${o.idleSec} s idle, ${o.background} background streams`;
      for (const [name, label] of [["on", "spares 1 (default)"], ["off", "spares 0"]] as const) {
        const m = under[name]!;
        add(`via B, new client connection, ${what}, ${label}`, floorB, m.samples);
        const row = rows[rows.length - 1]!;
        row.coldStarts = m.coldStarts;
        row.handshakes = m.handshakes;
        row.ttfbSamples = m.samples.map((x) => round(x.ttfb, 1));
      }
      for (const [name, label] of [["on", "spares 1 (default)"], ["off", "spares 0"]] as const) {
        const control = under[name]!.control;
        add(`control: the same load, right after that request, ${label}`, floorB, control);
        rows[rows.length - 1]!.ttfbSamples = control.map((x) => round(x.ttfb, 1));
      }
    } else {
      const idleOn: Sample[] = [];
      const idleOff: Sample[] = [];
      for (let i = 0; i < o.idleReps; i++) {
        progress(`route_sim: idle ${o.idleSec} s (${i + 1}/${o.idleReps})`);
        await sleep(o.idleSec * 1000);
        idleOn.push(await once(relays.on!.url, undefined));
        idleOff.push(await once(relays.off!.url, undefined));
      }
      add(`via B, new client connection, after ${o.idleSec} s idle, keep-warm 2 s`, floorB, idleOn);
      add(
        `via B, new client connection, after ${o.idleSec} s idle, keep-warm and spares off`,
        floorB,
        idleOff,
      );
    }
  } finally {
    for (const p of procs) await p.stop();
    for (const l of links) l.close();
    a.close();
    Deno.removeSync(dir, { recursive: true });
  }
  return rows;
}

/** B's `relay_upstream_cold_starts_total`, summed over upstreams (0 when the relay has none). */
async function coldStarts(port: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let n = 0;
  for (const m of text.matchAll(/^relay_upstream_cold_starts_total(?:\{[^}]*\})? (\d+)$/gm)) {
    n += Number(m[1]);
  }
  return n;
}

/** The after-idle requests under load on one relay, and the control requests after them. */
interface LoadedSamples {
  samples: Sample[];
  coldStarts: number;
  handshakes: number[];
  control: Sample[];
}

/**
 * The "after idle" requests under background load. Per round and relay (the relays in alternating
 * order): open the background streams, stay quiet for `idleSec`, send one measured request on a new
 * client connection, then a control request right after it (same load, a connection certainly
 * warm), close the streams. Only one relay carries load at a time.
 */
async function afterIdleUnderLoad(
  o: RouteSimOptions,
  a: FakeA,
  relays: Record<string, { port: number; url: string; direct: number }>,
): Promise<Record<string, LoadedSamples>> {
  const out: Record<string, LoadedSamples> = {};
  for (const name of ["on", "off"]) {
    out[name] = { samples: [], coldStarts: 0, handshakes: [], control: [] };
  }
  for (let i = 0; i < o.idleReps; i++) {
    const order = i % 2 === 0 ? ["on", "off"] : ["off", "on"];
    for (const name of order) {
      const r = relays[name]!;
      const m = out[name]!;
      progress(
        `route_sim: ${o.background} background streams, idle ${o.idleSec} s, spares ${name} ` +
          `(${i + 1}/${o.idleReps})`,
      );
      const bg = await spawnBackground(r.direct, o.background);
      try {
        if (bg.open < o.background) {
          throw new Error(`only ${bg.open} of ${o.background} background streams opened`);
        }
        await sleep(o.idleSec * 1000);
        const cold = await coldStarts(r.direct);
        const shakes = a.stats.handshakes;
        m.samples.push(await once(r.url, undefined));
        m.handshakes.push(a.stats.handshakes - shakes);
        m.coldStarts += await coldStarts(r.direct) - cold;
        // The control: the same load, right after a request, so a warm connection is certain.
        m.control.push(await once(r.url, undefined));
      } finally {
        await bg.stop();
      }
    }
  }
  return out;
}

/** The rows as a markdown table. */
export function routeTable(rows: RouteRow[]): string {
  const loaded = rows.some((r) => r.coldStarts !== undefined);
  let out = "| path | physical floor TTFB | TTFB (median) | over floor | total (median) | n |" +
    (loaded ? " new B→A connections on the request's path | TLS handshakes at A during it |" : "") +
    "\n";
  out += "|---|---:|---:|---:|---:|---:|" + (loaded ? "---:|---|" : "") + "\n";
  for (const r of rows) {
    out += `| ${r.path} | ${r.floorTtfbMs} ms | ${r.ttfbMs} ms | ${
      r.overFloorPct >= 0 ? "+" : ""
    }${r.overFloorPct}% | ${r.totalMs} ms | ${r.samples} |`;
    if (loaded) {
      out += r.coldStarts === undefined
        ? " – | – |"
        : ` ${r.coldStarts} of ${r.samples} | ${r.handshakes!.join(", ")} |`;
    }
    out += "\n";
  }
  return out;
}

if (import.meta.main) {
  const f = parseFlags(Deno.args);
  const opts: RouteSimOptions = {
    clientARttMs: numFlag(f, "client-a-rtt", 500),
    clientBRttMs: numFlag(f, "client-b-rtt", 50),
    bARttMs: numFlag(f, "b-a-rtt", 10),
    thinkMs: numFlag(f, "think", 200),
    events: numFlag(f, "events", 5),
    eventGapMs: numFlag(f, "event-gap", 20),
    idleSec: numFlag(f, "idle-sec", 60),
    reps: numFlag(f, "reps", 5),
    idleReps: numFlag(f, "idle-reps", 1),
    relayCpu: f.get("relay-cpu") ?? "0",
    background: numFlag(f, "background", 0),
    backgroundGapMs: numFlag(f, "background-gap", 50),
  };
  const idleRounds = opts.idleReps * (opts.background > 0 ? 2 : 1);
  const disarm = installCleanup(idleRounds * (opts.idleSec + 20) + opts.reps * 8 + 90);
  const rows = await routeSim(opts);
  disarm();
  const json = f.get("json");
  if (json !== undefined) Deno.writeTextFileSync(json, JSON.stringify({ opts, rows }, null, 2));
  // deno-lint-ignore no-console
  console.log(routeTable(rows));
}
