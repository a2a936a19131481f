/**
 * @module telemetry
 * The relay's metrics, fed by finished-request records: the Prometheus registry behind `/metrics`,
 * and the live numbers behind `/dashboard` and `/debug/info`.
 *
 * Owns: every metric name, label and bucket list; the recent windows for percentiles and rates;
 * the ring of the last requests shown on the dashboard, and what of a record may be shown there.
 *
 * Must never: do I/O, build strings or label objects per request for label sets already seen
 * (per-route, per-upstream and per-model series are resolved once and cached), let a client
 * choose a label value (unknown route ids and an unbounded number of model names are folded into
 * `unknown` / `other`), or show a secret, a query string or a body.
 */

import { STATUS_CLASSES, statusClassIndex } from "../http/mod.ts";
import { isFailure } from "./access_log.ts";
import type { RequestRecord } from "./record.ts";
import {
  type CounterChild,
  type Histogram,
  type HistogramChild,
  RecentWindow,
  Registry,
} from "./metrics.ts";

/**
 * One upstream's health as `upstream.ts` reports it. Only `url` and `state` are read; every
 * other field (failure counts, last probe, pool) is passed to the dashboard as is, so it must be
 * safe to show.
 */
export interface HealthView {
  /** The configured base URL (no credentials). */
  url: string;
  state: "up" | "down" | "unknown";
}

/** One connection pool's counters as `http1.ts` / `http2.ts` report them (only these are read). */
export interface PoolView {
  /** Client requests that found no ready connection and waited for a new one. */
  coldStarts: number;
  spares: {
    /** Idle connections (HTTP/1.1) or free stream slots (HTTP/2) ready for a request now. */
    ready: number;
    /** Connections opened in the background to keep spares ready. */
    opened: number;
  };
}

/** Relay state read at scrape / snapshot time. */
export interface RelayState {
  inFlight: number;
  openStreams: number;
  /** Open client sockets, when the server counts them (the relay's own server). */
  clientConnections: number | null;
}

/** Options for {@link Telemetry}. */
export interface TelemetryOptions {
  /** Every upstream base URL the relay may use (default and per-route), in order. */
  upstreams: readonly string[];
  /**
   * Whether a UID route id is configured (asked per request, so a reloaded route table counts at
   * once). Other ids are labelled `unknown`: clients must not be able to mint label values.
   */
  isRoute?: (id: string) => boolean;
  /** In-flight requests and open streams, read when metrics are rendered. */
  state?: () => RelayState;
  /** Upstream health; without it every upstream is reported as `unknown`. */
  health?: () => readonly HealthView[];
  /** Connection pools by origin (`https://host:port`), read at scrape time. */
  pools?: () => Readonly<Record<string, PoolView>>;
  /** Milliseconds since the epoch (default `Date.now`). */
  now?: () => number;
  /** Relay version for `relay_build_info`. */
  version?: string;
  /** How many recent requests the dashboard lists (default 50). */
  recent?: number;
}

/** Most distinct model names tracked; later ones are counted as `other`. */
export const MAX_MODELS = 64;

/** The window the dashboard's percentiles, error rate and tokens per minute cover. */
export const WINDOW_SEC = 60;
/** The window of the requests-per-second figure. */
export const RATE_WINDOW_SEC = 10;
/** Length of the per-second history the dashboard charts. */
export const SERIES_SEC = 120;

/** Buckets for the relay's own added time, in seconds: 0.1 ms to 1 s. */
export const RELAY_BUCKETS: readonly number[] = Object.freeze([
  0.0001,
  0.00025,
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  1,
]);

/**
 * Sums per whole second over the last `size` seconds: O(1) add, no allocation. A slot is reset
 * when a new second lands in it.
 */
export class SecondBuckets {
  readonly size: number;
  readonly #values: Float64Array;
  readonly #stamps: Float64Array;

  constructor(size: number) {
    this.size = size;
    this.#values = new Float64Array(size);
    this.#stamps = new Float64Array(size).fill(-1);
  }

  add(value: number, nowMs: number): void {
    const sec = Math.floor(nowMs / 1000);
    const i = sec % this.size;
    if (this.#stamps[i] !== sec) {
      this.#stamps[i] = sec;
      this.#values[i] = 0;
    }
    (this.#values[i] as number) += value;
  }

  /** Sum over the `windowSec` whole seconds ending with the current one. */
  sum(windowSec: number, nowMs: number): number {
    const now = Math.floor(nowMs / 1000);
    let total = 0;
    for (let i = 0; i < this.size; i++) {
      const s = this.#stamps[i] as number;
      if (s > now - windowSec && s <= now) total += this.#values[i] as number;
    }
    return total;
  }

  /** Per-second values, oldest first, the last one being the current (partial) second. */
  series(nowMs: number, length = this.size): number[] {
    const now = Math.floor(nowMs / 1000);
    const out: number[] = new Array(length);
    for (let k = 0; k < length; k++) {
      const sec = now - length + 1 + k;
      const i = ((sec % this.size) + this.size) % this.size;
      out[k] = this.#stamps[i] === sec ? this.#values[i] as number : 0;
    }
    return out;
  }
}

/** Cached series for one route label. */
interface RouteCells {
  byClass: Array<CounterChild | undefined>;
  duration: Array<HistogramChild | undefined>;
  requestBytes: CounterChild;
  responseBytes: CounterChild;
}

/** Cached series and last-seen facts for one upstream. */
interface UpstreamCells {
  ttfb: HistogramChild;
  byClass: Array<CounterChild | undefined>;
  lastStatus: number | undefined;
  lastSeen: number | undefined;
  lastFailure: number | undefined;
}

/** Cached series and per-minute token sums for one model label. */
interface ModelCells {
  input: CounterChild;
  output: CounterChild;
  cacheRead: CounterChild;
  cacheWrite: CounterChild;
  inputPerSec: SecondBuckets;
  outputPerSec: SecondBuckets;
  totalPerSec: SecondBuckets;
}

/** p50 / p95 / p99 of a recent window, ms; `null` when nothing was seen in the window. */
export interface Percentiles {
  p50: number | null;
  p95: number | null;
  p99: number | null;
  count: number;
}

/** A request as the dashboard lists it: no query string, no headers, no body, no key. */
export interface RecentRequest {
  time: number;
  id: string;
  clientIp: string;
  method: string;
  /** Path without its query string, at most 160 characters. */
  path: string;
  route: string | null;
  upstream: string | null;
  status: number;
  ttfbMs: number | null;
  durationMs: number;
  relayMs: number;
  requestBytes: number;
  responseBytes: number;
  stream: boolean;
  model: string | null;
  inputTokens: number | null;
  outputTokens: number | null;
  retries: number;
  failovers: number;
  error: string | null;
  failed: boolean;
}

/** The live numbers, as JSON for the dashboard and `/debug/info`. */
export interface TelemetrySnapshot {
  /** When the snapshot was taken, ms since the epoch. */
  time: number;
  version: string;
  /** When the relay started, ms since the epoch. */
  startedAt: number;
  windowSec: number;
  inFlight: number;
  openStreams: number;
  totals: {
    requests: number;
    failures: number;
    clientClosed: number;
    rateLimited: number;
    failovers: number;
    retries: number;
    requestBytes: number;
    responseBytes: number;
    tokens: number;
    byStatusClass: Record<string, number>;
    errorsByCode: Record<string, number>;
  };
  /** Requests per second over the last {@link RATE_WINDOW_SEC} seconds. */
  requestsPerSec: number;
  /** Failures / requests over the last {@link WINDOW_SEC} seconds (0 when idle). */
  errorRate: number;
  /** Over the last {@link WINDOW_SEC} seconds, ms. */
  latency: { ttfbMs: Percentiles; relayMs: Percentiles; durationMs: Percentiles };
  /** Tokens in the last {@link WINDOW_SEC} seconds by model, busiest first. */
  tokensPerMin: Array<{ model: string; input: number; output: number; total: number }>;
  upstreams: Array<
    HealthView & {
      /** Status of the last response head this upstream sent. */
      lastStatus: number | null;
      lastSeen: number | null;
      lastFailure: number | null;
    }
  >;
  /** Per-second history, oldest first (present unless asked without). */
  series?: { stepSec: 1; end: number; requests: number[]; failures: number[]; tokens: number[] };
  /** The last requests, newest first (present unless asked without). */
  recent?: RecentRequest[];
}

const RATE_LIMIT_CODES = new Set(["rate_limited", "too_many_concurrent"]);

function cleanModel(model: string): string {
  // deno-lint-ignore no-control-regex
  const m = model.replace(/[\x00-\x1f\x7f]/g, "").trim().slice(0, 100);
  return m === "" ? "unknown" : m;
}

/**
 * Collects the relay's metrics. Register {@link Telemetry.observe} as an observer of finished
 * requests; render {@link Telemetry.registry} for `/metrics`; call {@link Telemetry.snapshot} for
 * the dashboard.
 */
/** The relay's counters, as shown by `/debug/info`. */
export interface Counters {
  /** Requests that arrived, the relay's own endpoints included. */
  requests: number;
  /** Requests sent towards Server A. */
  forwarded: number;
  byStatusClass: Record<string, number>;
  errorsByCode: Record<string, number>;
  failovers: number;
  staleRetries: number;
}

export class Telemetry {
  readonly registry: Registry = new Registry();
  /** Upstream health source. */
  health: () => readonly HealthView[];

  readonly #now: () => number;
  readonly #state: () => RelayState;
  readonly #isRoute: (id: string) => boolean;
  readonly #upstreamUrls: readonly string[];
  readonly #version: string;
  readonly #startedAt: number;

  readonly #requests;
  readonly #errors;
  readonly #rateLimited;
  readonly #ttfb: Histogram<"upstream">;
  readonly #duration: Histogram<"route" | "stream">;
  readonly #relay: HistogramChild;
  readonly #requestBytes;
  readonly #responseBytes;
  readonly #tokens;
  readonly #upstreamResponses;
  readonly #failovers: CounterChild;
  readonly #retries: CounterChild;
  readonly #dropped;

  readonly #routeCells = new Map<string, RouteCells>();
  readonly #upstreamCells = new Map<string, UpstreamCells>();
  /** Distinct model labels (at most MAX_MODELS plus "other"). */
  readonly #modelCells = new Map<string, ModelCells>();
  readonly #modelByName = new Map<string, ModelCells>();
  readonly #errorCells = new Map<string, CounterChild>();
  readonly #rateLimitedCells = new Map<string, CounterChild>();

  readonly #ttfbWindow = new RecentWindow(2048);
  readonly #relayWindow = new RecentWindow(2048);
  readonly #durationWindow = new RecentWindow(2048);
  readonly #requestsPerSec = new SecondBuckets(SERIES_SEC);
  readonly #failuresPerSec = new SecondBuckets(SERIES_SEC);
  readonly #tokensPerSec = new SecondBuckets(SERIES_SEC);

  readonly #recent: Array<RequestRecord | undefined>;
  #recentNext = 0;

  readonly #totals = {
    requests: 0,
    failures: 0,
    clientClosed: 0,
    rateLimited: 0,
    failovers: 0,
    retries: 0,
    requestBytes: 0,
    responseBytes: 0,
    tokens: 0,
  };
  readonly #byStatusClass = [0, 0, 0, 0, 0];
  readonly #errorsByCode: Record<string, number> = {};
  /** Requests that arrived (the relay's own endpoints included), and those sent towards A. */
  #arrived = 0;
  #forwarded = 0;

  constructor(options: TelemetryOptions) {
    this.#now = options.now ?? Date.now;
    this.#state = options.state ??
      (() => ({ inFlight: 0, openStreams: 0, clientConnections: null }));
    this.#isRoute = options.isRoute ?? (() => false);
    this.#upstreamUrls = [...new Set(options.upstreams)];
    this.health = options.health ??
      (() => this.#upstreamUrls.map((url) => ({ url, state: "unknown" as const })));
    const pools = options.pools ?? (() => ({}));
    this.#recent = new Array(options.recent ?? 50);
    this.#version = options.version ?? "unknown";
    this.#startedAt = this.#now();
    const r = this.registry;

    this.#requests = r.counter(
      "relay_requests_total",
      "Finished client requests (relay refusals included) by UID route and status class.",
      ["route", "status_class"],
    );
    this.#errors = r.counter(
      "relay_errors_total",
      "Requests the relay answered with its own error, or whose body broke, by error code.",
      ["code"],
    );
    this.#rateLimited = r.counter(
      "relay_rate_limited_total",
      "Requests refused by the per-client rate or concurrency limit.",
      ["code"],
    );
    r.gauge(
      "relay_in_flight_requests",
      "Client requests being handled, streaming bodies included.",
      [],
      () => this.#state().inFlight,
    );
    r.gauge(
      "relay_open_streams",
      "Response bodies from Server A still being relayed.",
      [],
      () => this.#state().openStreams,
    );
    r.gauge(
      "relay_client_connections",
      "Open client connections (the relay's own HTTP/1.1 server; absent on Deno.serve).",
      [],
      () => {
        const n = this.#state().clientConnections;
        return n === null ? [] : [[{}, n]];
      },
    );
    this.#dropped = r.counter(
      "relay_client_connections_closed_total",
      "Client connections the relay closed on its own: header_timeout, body_timeout, idle_timeout, " +
        "over_capacity, over_ip_capacity, send_timeout, bad_request, headers_too_large.",
      ["reason"],
    );
    this.#ttfb = r.histogram(
      "relay_upstream_ttfb_seconds",
      "Time from sending the request to Server A until its response head arrived.",
      ["upstream"],
    );
    this.#duration = r.histogram(
      "relay_request_duration_seconds",
      "Time from a request's arrival until its response body ended.",
      ["route", "stream"],
    );
    this.#relay = r.histogram(
      "relay_added_seconds",
      "Time the relay itself spent on a request (its whole handling minus the wait for Server A).",
      [],
      RELAY_BUCKETS,
    ).labels({});
    this.#requestBytes = r.counter(
      "relay_request_bytes_total",
      "Request body bytes received from clients.",
      ["route"],
    );
    this.#responseBytes = r.counter(
      "relay_response_bytes_total",
      "Response body bytes relayed from Server A to clients.",
      ["route"],
    );
    this.#tokens = r.counter(
      "relay_tokens_total",
      "Tokens reported in Server A's responses, by model and kind (input, output, cache_read, " +
        "cache_write).",
      ["model", "kind"],
    );
    this.#upstreamResponses = r.counter(
      "relay_upstream_responses_total",
      "Response heads received from each upstream, by status class.",
      ["upstream", "status_class"],
    );
    r.gauge(
      "relay_upstream_up",
      "1 when the upstream is serving, 0 when marked down; absent while its health is not known.",
      ["upstream"],
      () => {
        const out: Array<readonly [{ upstream: string }, number]> = [];
        for (const h of this.health()) {
          if (h.state !== "unknown") out.push([{ upstream: h.url }, h.state === "up" ? 1 : 0]);
        }
        return out;
      },
    );
    this.#failovers = r.counter(
      "relay_upstream_failovers_total",
      "Upstreams skipped because they could not be reached (the next one was tried).",
    ).labels({});
    this.#retries = r.counter(
      "relay_upstream_retries_total",
      "Requests resent once because a pooled connection to Server A turned out to be stale.",
    ).labels({});
    const perPool = (pick: (p: PoolView) => number) => () =>
      Object.entries<PoolView>(pools()).map(([origin, p]) =>
        [{ upstream: origin }, pick(p)] as const
      );
    r.counter(
      "relay_upstream_cold_starts_total",
      "Client requests that found no ready connection to Server A (nor, over HTTP/2, a free " +
        "stream slot) and waited for a new one, by upstream origin.",
      ["upstream"],
      perPool((p) => p.coldStarts),
    );
    r.gauge(
      "relay_upstream_spare_connections",
      "Idle connections to Server A ready for a request (HTTP/2: free stream slots on open " +
        "sessions), by upstream origin. UPSTREAM_SPARE_CONNECTIONS keeps at least that many.",
      ["upstream"],
      perPool((p) => p.spares.ready),
    );
    r.counter(
      "relay_upstream_spare_opens_total",
      "Connections (HTTP/2: sessions) opened in the background to keep spares ready, by " +
        "upstream origin.",
      ["upstream"],
      perPool((p) => p.spares.opened),
    );
    r.gauge(
      "relay_build_info",
      "Always 1; labels name the relay and Deno versions.",
      ["version", "deno"],
      () => [[{ version: this.#version, deno: Deno.version.deno }, 1]],
    );
    const startSec = this.#startedAt / 1000;
    r.gauge(
      "process_start_time_seconds",
      "When the relay started, seconds since the epoch.",
      [],
      () => startSec,
    );
    r.gauge(
      "process_resident_memory_bytes",
      "Resident memory of the relay process.",
      [],
      () => Deno.memoryUsage().rss,
    );
  }

  /** The child of a `code`-labelled counter, found once per code (a flood of 429s allocates nothing). */
  #cell(
    cells: Map<string, CounterChild>,
    counter: { labels(l: { code: string }): CounterChild },
    code: string,
  ): CounterChild {
    let cell = cells.get(code);
    if (cell === undefined) {
      cell = counter.labels({ code });
      cells.set(code, cell);
    }
    return cell;
  }

  /** Counts a client connection the relay's own server closed itself (see `server.ts`). */
  clientDropped(reason: string): void {
    this.#dropped.inc({ reason });
  }

  /** The observer to register for finished requests. Cheap; never throws. */
  readonly observe = (record: RequestRecord): void => {
    try {
      this.#record(record);
    } catch { /* metrics must never break a request */ }
  };

  #record(rec: RequestRecord): void {
    const now = this.#now();
    const t = this.#totals;
    const cls = statusClassIndex(rec.status);
    const failed = isFailure(rec);
    t.requests++;
    (this.#byStatusClass[cls] as number)++;
    this.#requestsPerSec.add(1, now);
    if (failed) {
      t.failures++;
      this.#failuresPerSec.add(1, now);
    }

    const route = this.#route(rec.route);
    (route.byClass[cls] ??= this.#requests.labels({
      route: this.#routeLabel(rec.route),
      status_class: STATUS_CLASSES[cls] as string,
    })).inc();
    const s = rec.stream ? 1 : 0;
    (route.duration[s] ??= this.#duration.labels({
      route: this.#routeLabel(rec.route),
      stream: rec.stream ? "true" : "false",
    })).observe(rec.durationMs / 1000);
    route.requestBytes.inc(rec.requestBytes);
    route.responseBytes.inc(rec.responseBytes);
    t.requestBytes += rec.requestBytes;
    t.responseBytes += rec.responseBytes;

    this.#relay.observe(rec.relayMs / 1000);
    this.#relayWindow.add(rec.relayMs, now);
    this.#durationWindow.add(rec.durationMs, now);

    if (rec.upstream !== undefined) {
      const up = this.#upstream(rec.upstream);
      up.lastSeen = now;
      if (rec.ttfbMs !== undefined) {
        up.ttfb.observe(rec.ttfbMs / 1000);
        this.#ttfbWindow.add(rec.ttfbMs, now);
        (up.byClass[cls] ??= this.#upstreamResponses.labels({
          upstream: rec.upstream,
          status_class: STATUS_CLASSES[cls] as string,
        })).inc();
        up.lastStatus = rec.status;
      }
      if (failed) up.lastFailure = now;
    }
    if (rec.failovers > 0) {
      this.#failovers.inc(rec.failovers);
      t.failovers += rec.failovers;
    }
    if (rec.attempts > 1) {
      this.#retries.inc(rec.attempts - 1);
      t.retries += rec.attempts - 1;
    }

    const code = rec.errorCode;
    if (code !== undefined) {
      this.#cell(this.#errorCells, this.#errors, code).inc();
      this.#errorsByCode[code] = (this.#errorsByCode[code] ?? 0) + 1;
      if (code === "client_closed") t.clientClosed++;
      if (RATE_LIMIT_CODES.has(code)) {
        this.#cell(this.#rateLimitedCells, this.#rateLimited, code).inc();
        t.rateLimited++;
      }
    }

    const u = rec.usage;
    if (u !== undefined) {
      const m = this.#model(u.model);
      if (u.inputTokens !== undefined) m.input.inc(u.inputTokens);
      if (u.outputTokens !== undefined) m.output.inc(u.outputTokens);
      if (u.cacheReadTokens !== undefined) m.cacheRead.inc(u.cacheReadTokens);
      if (u.cacheWriteTokens !== undefined) m.cacheWrite.inc(u.cacheWriteTokens);
      const total = u.totalTokens ?? (u.inputTokens ?? 0) + (u.outputTokens ?? 0);
      if (u.inputTokens !== undefined) m.inputPerSec.add(u.inputTokens, now);
      if (u.outputTokens !== undefined) m.outputPerSec.add(u.outputTokens, now);
      if (total > 0) {
        m.totalPerSec.add(total, now);
        this.#tokensPerSec.add(total, now);
        t.tokens += total;
      }
    }

    this.#recent[this.#recentNext] = rec;
    this.#recentNext = (this.#recentNext + 1) % this.#recent.length;
  }

  #routeLabel(id: string | undefined): string {
    if (id === undefined) return "default";
    return this.#isRoute(id) ? id : "unknown";
  }

  #route(id: string | undefined): RouteCells {
    const label = this.#routeLabel(id);
    let cells = this.#routeCells.get(label);
    if (cells === undefined) {
      cells = {
        byClass: [],
        duration: [],
        requestBytes: this.#requestBytes.labels({ route: label }),
        responseBytes: this.#responseBytes.labels({ route: label }),
      };
      this.#routeCells.set(label, cells);
    }
    return cells;
  }

  #upstream(url: string): UpstreamCells {
    let cells = this.#upstreamCells.get(url);
    if (cells === undefined) {
      cells = {
        ttfb: this.#ttfb.labels({ upstream: url }),
        byClass: [],
        lastStatus: undefined,
        lastSeen: undefined,
        lastFailure: undefined,
      };
      this.#upstreamCells.set(url, cells);
    }
    return cells;
  }

  #model(raw: string | undefined): ModelCells {
    const key = raw ?? "";
    const cached = this.#modelByName.get(key);
    if (cached !== undefined) return cached;
    let label = raw === undefined ? "unknown" : cleanModel(raw);
    let cells = this.#modelCells.get(label);
    if (cells === undefined && this.#modelCells.size >= MAX_MODELS) {
      label = "other";
      cells = this.#modelCells.get(label);
    }
    if (cells === undefined) {
      cells = {
        input: this.#tokens.labels({ model: label, kind: "input" }),
        output: this.#tokens.labels({ model: label, kind: "output" }),
        cacheRead: this.#tokens.labels({ model: label, kind: "cache_read" }),
        cacheWrite: this.#tokens.labels({ model: label, kind: "cache_write" }),
        inputPerSec: new SecondBuckets(WINDOW_SEC),
        outputPerSec: new SecondBuckets(WINDOW_SEC),
        totalPerSec: new SecondBuckets(WINDOW_SEC),
      };
      this.#modelCells.set(label, cells);
    }
    // A lookup cache from the name as A wrote it; bounded so odd names cannot grow it forever.
    if (this.#modelByName.size < MAX_MODELS * 4) this.#modelByName.set(key, cells);
    return cells;
  }

  /** The Prometheus text exposition of every metric. */
  render(): string {
    return this.registry.render();
  }

  /**
   * The live numbers. `recent` and `series` (the dashboard's table and charts) are included unless
   * switched off, as `/debug/info` does.
   */
  /** Requests by status class, the classes seen so far only. */
  #statusClasses(): Record<string, number> {
    const out: Record<string, number> = {};
    this.#byStatusClass.forEach((n, i) => {
      if (n > 0) out[STATUS_CLASSES[i] as string] = n;
    });
    return out;
  }

  /** A request arrived (counted before anything else is known about it). */
  arrived(): void {
    this.#arrived++;
  }

  /** A request passed the relay's checks and is being sent towards Server A. */
  forwarded(): void {
    this.#forwarded++;
  }

  /**
   * The counters `/debug/info` shows, from the same totals as `/metrics`: statuses and error codes
   * as each request finished (a stream the client left counts as 499, not as A's 200).
   */
  counters(): Counters {
    const t = this.#totals;
    const byStatusClass = this.#statusClasses();
    return {
      requests: this.#arrived,
      forwarded: this.#forwarded,
      byStatusClass,
      errorsByCode: { ...this.#errorsByCode },
      failovers: t.failovers,
      staleRetries: t.retries,
    };
  }

  snapshot(options: { recent?: boolean; series?: boolean } = {}): TelemetrySnapshot {
    const now = this.#now();
    const since = now - WINDOW_SEC * 1000;
    const state = this.#state();
    const requests = this.#requestsPerSec.sum(WINDOW_SEC, now);
    const failures = this.#failuresPerSec.sum(WINDOW_SEC, now);
    const t = this.#totals;
    const byStatusClass = this.#statusClasses();
    const snap: TelemetrySnapshot = {
      time: now,
      version: this.#version,
      startedAt: this.#startedAt,
      windowSec: WINDOW_SEC,
      inFlight: state.inFlight,
      openStreams: state.openStreams,
      totals: { ...t, byStatusClass, errorsByCode: { ...this.#errorsByCode } },
      requestsPerSec: round3(this.#requestsPerSec.sum(RATE_WINDOW_SEC, now) / RATE_WINDOW_SEC),
      errorRate: requests === 0 ? 0 : round3(failures / requests),
      latency: {
        ttfbMs: percentiles(this.#ttfbWindow, since),
        relayMs: percentiles(this.#relayWindow, since),
        durationMs: percentiles(this.#durationWindow, since),
      },
      tokensPerMin: this.#tokensPerMin(now),
      upstreams: this.#upstreamView(),
    };
    if (options.series !== false) {
      snap.series = {
        stepSec: 1,
        end: Math.floor(now / 1000),
        requests: this.#requestsPerSec.series(now),
        failures: this.#failuresPerSec.series(now),
        tokens: this.#tokensPerSec.series(now),
      };
    }
    if (options.recent !== false) snap.recent = this.recent();
    return snap;
  }

  /** The last requests, newest first, reduced to what the dashboard may show. */
  recent(): RecentRequest[] {
    const out: RecentRequest[] = [];
    const n = this.#recent.length;
    for (let k = 1; k <= n; k++) {
      const rec = this.#recent[(this.#recentNext - k + n) % n];
      if (rec === undefined) break;
      out.push(toRecent(rec));
    }
    return out;
  }

  #tokensPerMin(now: number): TelemetrySnapshot["tokensPerMin"] {
    const out: TelemetrySnapshot["tokensPerMin"] = [];
    for (const [model, cells] of this.#modelCells) {
      const total = cells.totalPerSec.sum(WINDOW_SEC, now);
      if (total === 0) continue;
      out.push({
        model,
        input: cells.inputPerSec.sum(WINDOW_SEC, now),
        output: cells.outputPerSec.sum(WINDOW_SEC, now),
        total,
      });
    }
    return out.sort((a, b) => b.total - a.total);
  }

  #upstreamView(): TelemetrySnapshot["upstreams"] {
    let health: readonly HealthView[];
    try {
      health = this.health();
    } catch {
      health = this.#upstreamUrls.map((url) => ({ url, state: "unknown" as const }));
    }
    return health.map((h) => {
      const cells = this.#upstreamCells.get(h.url);
      return {
        ...h,
        lastStatus: cells?.lastStatus ?? null,
        lastSeen: cells?.lastSeen ?? null,
        lastFailure: cells?.lastFailure ?? null,
      };
    });
  }
}

function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}

function percentiles(window: RecentWindow, since: number): Percentiles {
  const p = (q: number): number | null => {
    const v = window.percentile(q, since);
    return v === undefined ? null : round3(v);
  };
  const p50 = p(50);
  if (p50 === null) return { p50: null, p95: null, p99: null, count: 0 };
  return { p50, p95: p(95), p99: p(99), count: window.countSince(since) };
}

function toRecent(rec: RequestRecord): RecentRequest {
  const q = rec.path.indexOf("?");
  const path = q === -1 ? rec.path : rec.path.slice(0, q);
  return {
    time: rec.time,
    id: rec.id,
    clientIp: rec.clientIp,
    method: rec.method,
    path: path.length > 160 ? `${path.slice(0, 159)}\u2026` : path,
    route: rec.route ?? null,
    upstream: rec.upstream ?? null,
    status: rec.status,
    ttfbMs: rec.ttfbMs === undefined ? null : round3(rec.ttfbMs),
    durationMs: round3(rec.durationMs),
    relayMs: round3(rec.relayMs),
    requestBytes: rec.requestBytes,
    responseBytes: rec.responseBytes,
    stream: rec.stream,
    model: rec.usage?.model === undefined ? null : cleanModel(rec.usage.model),
    inputTokens: rec.usage?.inputTokens ?? null,
    outputTokens: rec.usage?.outputTokens ?? null,
    retries: Math.max(0, rec.attempts - 1),
    failovers: rec.failovers,
    error: rec.errorCode ?? null,
    failed: isFailure(rec),
  };
}
