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
 *   keep-warm on (UPSTREAM_KEEPWARM_SEC=2) and off (0). Fake A closes connections idle 5 s.
 *
 *   deno run -A bench/route_sim/run.ts [--idle-sec=60] [--reps=5] [--idle-reps=1] [--json=out.json]
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
import { startDelayRelay } from "./delay_relay.ts";
import { makeCert, startFakeA } from "./fake_a.ts";

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
}

/** One row of the result table. */
export interface RouteRow {
  path: string;
  floorTtfbMs: number;
  ttfbMs: number;
  totalMs: number;
  samples: number;
  overFloorPct: number;
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
  });
  const linkCA = startDelayRelay({ port: 0, targetPort: a.port, oneWayMs: o.clientARttMs / 2 });
  const relays: Record<string, { port: number; url: string }> = {};
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
  try {
    for (const [name, keepWarm] of [["on", "2"], ["off", "0"]] as const) {
      const linkBA = startDelayRelay({ port: 0, targetPort: a.port, oneWayMs: o.bARttMs / 2 });
      const port = freePort();
      procs.push(
        await startRelay(`relay-keepwarm-${name}`, {
          port,
          upstream: `https://127.0.0.1:${linkBA.port}`,
          cpu: o.relayCpu,
          env: { DENO_CERT: certFile, UPSTREAM_KEEPWARM_SEC: keepWarm, ACCESS_LOG: "0" },
          logFile: `${dir}/relay-${name}.log`,
        }),
      );
      const linkCB = startDelayRelay({ port: 0, targetPort: port, oneWayMs: o.clientBRttMs / 2 });
      links.push(linkBA, linkCB);
      relays[name] = { port, url: `http://127.0.0.1:${linkCB.port}/v1/messages` };
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

    const idleOn: Sample[] = [];
    const idleOff: Sample[] = [];
    for (let i = 0; i < o.idleReps; i++) {
      progress(`route_sim: idle ${o.idleSec} s (${i + 1}/${o.idleReps})`);
      await sleep(o.idleSec * 1000);
      idleOn.push(await once(relays.on!.url, undefined));
      idleOff.push(await once(relays.off!.url, undefined));
    }
    const floorB = 2 * rCB + rBA + think;
    add(`via B, new client connection, after ${o.idleSec} s idle, keep-warm 2 s`, floorB, idleOn);
    add(`via B, new client connection, after ${o.idleSec} s idle, keep-warm off`, floorB, idleOff);
  } finally {
    for (const p of procs) await p.stop();
    for (const l of links) l.close();
    a.close();
    Deno.removeSync(dir, { recursive: true });
  }
  return rows;
}

/** The rows as a markdown table. */
export function routeTable(rows: RouteRow[]): string {
  let out = "| path | physical floor TTFB | TTFB (median) | over floor | total (median) | n |\n";
  out += "|---|---:|---:|---:|---:|---:|\n";
  for (const r of rows) {
    out += `| ${r.path} | ${r.floorTtfbMs} ms | ${r.ttfbMs} ms | ${
      r.overFloorPct >= 0 ? "+" : ""
    }${r.overFloorPct}% | ${r.totalMs} ms | ${r.samples} |\n`;
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
  };
  const disarm = installCleanup(opts.idleReps * (opts.idleSec + 10) + opts.reps * 8 + 90);
  const rows = await routeSim(opts);
  disarm();
  const json = f.get("json");
  if (json !== undefined) Deno.writeTextFileSync(json, JSON.stringify({ opts, rows }, null, 2));
  // deno-lint-ignore no-console
  console.log(routeTable(rows));
}
