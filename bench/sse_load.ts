/**
 * Streaming load client. Two modes, both printing JSON on stdout:
 *
 * `--mode=delay`: hosts the fake SSE upstream in this process (so send and receive times share
 * one clock), then for each `--target=name=url` opens `--streams` concurrent streams, their
 * starts spread evenly over `--ramp-ms` (default: one event interval), and reports each event's delivery delay (receive time
 * minus the upstream's send time) as p50/p99/max. Run "direct" as one target: the difference to
 * it is what a proxy adds.
 *   deno run -A bench/sse_load.ts --mode=delay --upstream-port=9100 --streams=1000 \
 *     --events=10 --interval-ms=200 --target=direct=http://127.0.0.1:9100/v1/chat/completions \
 *     --target=relay=http://127.0.0.1:8000/v1/chat/completions
 *
 * `--mode=capacity`: opens `--streams` streams to `--url` (an upstream running `fake_sse.ts`
 * elsewhere), `--ramp` new ones per second, and reports how many were open at once and how many
 * received every event (`--events` content events + usage + [DONE]).
 *
 * Every run is bounded by `--max-sec`.
 */

import { benchHeaders, HOST, numFlag, parseFlags, quantile, round, sleep } from "./common.ts";
import { startFakeSse } from "./fake_sse.ts";
import { buildRequest, Client, parseTarget, type Target } from "./http_client.ts";

const STREAM_REQUEST = JSON.stringify({
  model: "gpt-4o-mini",
  stream: true,
  stream_options: { include_usage: true },
  messages: [{ role: "user", content: "Stream a few tokens." }],
});

const decoder = new TextDecoder();
const T_RE = /"id":"chatcmpl-t([0-9.]+)"/;

/** Outcome of one stream. */
interface StreamOutcome {
  ok: boolean;
  events: number;
  status: number;
  error?: string;
}

/** Reads one SSE response, calling `onEvent(text, at)` per complete event. */
async function oneStream(
  target: Target,
  request: Uint8Array,
  expectEvents: number,
  hooks: { onHead?: () => void; onEvent?: (event: string, at: number) => void },
): Promise<StreamOutcome> {
  let client: Client | null = null;
  let events = 0;
  let pending = "";
  let sawDone = false;
  try {
    client = await Client.open(target, 8 * 1024);
    let headSeen = false;
    const t = await client.exchange(request, (bytes, at) => {
      if (!headSeen) {
        headSeen = true;
        hooks.onHead?.();
      }
      pending += decoder.decode(bytes, { stream: true });
      let i: number;
      while ((i = pending.indexOf("\n\n")) >= 0) {
        const ev = pending.slice(0, i);
        pending = pending.slice(i + 2);
        if (!ev.startsWith("data:")) continue;
        events++;
        if (ev.startsWith("data: [DONE]")) sawDone = true;
        hooks.onEvent?.(ev, at);
      }
    });
    const ok = t.status === 200 && sawDone && events === expectEvents;
    const error = t.status !== 200 ? `status ${t.status}` : `${events} of ${expectEvents} events`;
    return { ok, events, status: t.status, ...(ok ? {} : { error }) };
  } catch (err) {
    return { ok: false, events, status: 0, error: err instanceof Error ? err.message : "error" };
  } finally {
    client?.close();
  }
}

/** Per-event delay distribution for one target. */
export interface DelayResult {
  streams: number;
  completed: number;
  events: number;
  p50: number;
  p99: number;
  max: number;
  /**
   * p99 of the events sent while streams were still opening (the first `rampMs`), and of those
   * sent after: whether a proxy's tail comes from stream set-up or from the events themselves.
   */
  p99Opening: number;
  p99Open: number;
  errors: string[];
}

async function delayRun(
  url: string,
  upstreamBase: string,
  opts: { streams: number; events: number; intervalMs: number; rampMs: number; maxSec: number },
): Promise<DelayResult> {
  const { target, path } = parseTarget(url);
  const req = buildRequest(
    "POST",
    path,
    `${target.hostname}:${target.port}`,
    { ...benchHeaders(upstreamBase), accept: "text/event-stream" },
    STREAM_REQUEST,
  );
  const delays: number[] = [];
  const opening: number[] = [], open: number[] = [];
  const errors = new Map<string, number>();
  const expect = opts.events + 2;
  const runs: Promise<StreamOutcome>[] = [];
  const spread = opts.rampMs / opts.streams;
  const started = performance.now();
  for (let i = 0; i < opts.streams; i++) {
    const due = started + i * spread;
    const wait = due - performance.now();
    if (wait >= 1) await sleep(wait);
    runs.push(oneStream(target, req, expect, {
      onEvent(ev, at) {
        const m = T_RE.exec(ev);
        if (m === null) return;
        const sent = Number(m[1]);
        delays.push(at - sent);
        (sent < started + opts.rampMs ? opening : open).push(at - sent);
      },
    }));
  }
  const deadline = sleep(opts.maxSec * 1000).then(() => null);
  const all = await Promise.race([Promise.all(runs), deadline]);
  let completed = 0;
  for (const r of all ?? []) {
    if (r.ok) completed++;
    else errors.set(r.error ?? "?", (errors.get(r.error ?? "?") ?? 0) + 1);
  }
  if (all === null) errors.set("timed out", opts.streams);
  return {
    streams: opts.streams,
    completed,
    events: delays.length,
    p50: round(quantile(delays, 0.5), 3),
    p99: round(quantile(delays, 0.99), 3),
    max: round(quantile(delays, 1), 3),
    p99Opening: round(quantile(opening, 0.99), 3),
    p99Open: round(quantile(open, 0.99), 3),
    errors: [...errors].map(([e, n]) => `${n}× ${e}`).slice(0, 5),
  };
}

/** Outcome of a capacity run. */
export interface CapacityResult {
  streams: number;
  opened: number;
  completed: number;
  peakOpen: number;
  /** Seconds from the first connect until every stream had its response head. */
  allOpenSec: number | null;
  errors: string[];
}

async function capacityRun(
  url: string,
  opts: { streams: number; events: number; ramp: number; maxSec: number; upstream: string },
): Promise<CapacityResult> {
  const { target, path } = parseTarget(url);
  const req = buildRequest(
    "POST",
    path,
    `${target.hostname}:${target.port}`,
    { ...benchHeaders(opts.upstream), accept: "text/event-stream" },
    STREAM_REQUEST,
  );
  let open = 0;
  let opened = 0;
  let peak = 0;
  let allOpenAt: number | null = null;
  const start = performance.now();
  const runs: Promise<StreamOutcome>[] = [];
  const batch = Math.max(1, Math.round(opts.ramp / 20));
  for (let i = 0; i < opts.streams; i += batch) {
    for (let j = i; j < Math.min(opts.streams, i + batch); j++) {
      let counted = false;
      runs.push(
        oneStream(target, req, opts.events + 2, {
          onHead() {
            counted = true;
            open++;
            opened++;
            if (open > peak) peak = open;
            if (opened === opts.streams) allOpenAt = performance.now();
          },
        }).then((r) => {
          if (counted) open--;
          return r;
        }),
      );
    }
    await sleep(50);
  }
  const deadline = sleep(opts.maxSec * 1000).then(() => null);
  const all = await Promise.race([Promise.all(runs), deadline]);
  const errors = new Map<string, number>();
  let completed = 0;
  for (const r of all ?? []) {
    if (r.ok) completed++;
    else errors.set(r.error ?? "?", (errors.get(r.error ?? "?") ?? 0) + 1);
  }
  if (all === null) errors.set("timed out", opts.streams);
  return {
    streams: opts.streams,
    opened,
    completed,
    peakOpen: peak,
    allOpenSec: allOpenAt === null ? null : round((allOpenAt - start) / 1000, 2),
    errors: [...errors].map(([e, n]) => `${n}× ${e}`).slice(0, 5),
  };
}

if (import.meta.main) {
  const flags = parseFlags(Deno.args);
  const mode = flags.get("mode") ?? "delay";
  const maxSec = numFlag(flags, "max-sec", 120);
  const events = numFlag(flags, "events", 10);
  const streams = numFlag(flags, "streams", 1000);
  const hardStop = setTimeout(() => Deno.exit(3), (maxSec + 30) * 1000);
  if (mode === "delay") {
    const upstreamPort = numFlag(flags, "upstream-port", 9100);
    const intervalMs = numFlag(flags, "interval-ms", 200);
    const { server } = startFakeSse({ port: upstreamPort, events, intervalMs });
    const targets = Deno.args.filter((a) => a.startsWith("--target=")).map((a) => {
      const spec = a.slice("--target=".length);
      const eq = spec.indexOf("=");
      return { name: spec.slice(0, eq), url: spec.slice(eq + 1) };
    });
    const out: Record<string, DelayResult> = {};
    for (const t of targets) {
      out[t.name] = await delayRun(t.url, `http://${HOST}:${upstreamPort}`, {
        streams,
        events,
        intervalMs,
        rampMs: numFlag(flags, "ramp-ms", intervalMs),
        maxSec,
      });
      await sleep(300);
    }
    await server.shutdown();
    // deno-lint-ignore no-console
    console.log(JSON.stringify(out));
  } else {
    const url = flags.get("url");
    if (url === undefined) throw new Error("--url is required");
    const result = await capacityRun(url, {
      streams,
      events,
      ramp: numFlag(flags, "ramp", 1000),
      maxSec,
      upstream: flags.get("upstream") ?? "http://127.0.0.1:1",
    });
    // deno-lint-ignore no-console
    console.log(JSON.stringify(result));
  }
  clearTimeout(hardStop);
  Deno.exit(0);
}
