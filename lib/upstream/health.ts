/**
 * @module upstream
 * Upstream health, failover order and keep-warm.
 *
 * Owns: which upstream a request tries first (healthy ones in configured order, then the rest),
 * passive health (transport failures mark an upstream down for a back-off period), active health
 * (a probe of `HEALTH_CHECK_PATH` brings a down upstream back), and keep-warm (a light request on
 * an interval so the first client request after a quiet spell finds a live connection to A, whose
 * own keep-alive is only ~5 s). The pools ask {@link UpstreamSet.live} before opening spare
 * connections, and use {@link UpstreamSet.probe} as their keep-warm request.
 * Must never: send a client's request or credentials in a probe, hold a request waiting on a
 * known-dead upstream while a live one exists, or keep the process alive by its timers.
 */

import type { Upstream } from "../http/mod.ts";
import { exchangeOptions, type UpstreamErrorKind } from "./http1.ts";
import type { Origin } from "./pools.ts";
import type { LogWriter } from "../observe/record.ts";
import { Watchdog } from "../http/mod.ts";

/** One upstream's health, as shown in diagnostics. */
export interface UpstreamHealth {
  url: string;
  state: "up" | "down" | "unknown";
  /** Seconds until a down upstream is tried again by requests (a probe may bring it back first). */
  downForSec: number;
  consecutiveFailures: number;
  totalFailures: number;
  failovers: number;
  lastError: string | undefined;
  /** Round-trip of the last probe or keep-warm request, ms. */
  lastProbeMs: number | undefined;
  lastProbeAt: string | undefined;
  pool: ReturnType<Origin["stats"]>;
}

interface State {
  upstream: Upstream;
  state: "up" | "down" | "unknown";
  downUntil: number;
  consecutiveFailures: number;
  totalFailures: number;
  failovers: number;
  lastError: string | undefined;
  lastProbeMs: number | undefined;
  lastProbeAt: number | undefined;
  probing: boolean;
}

/** Options for {@link UpstreamSet}. */
export interface UpstreamSetOptions {
  /** Returns the pool for an upstream. */
  pool: (upstream: Upstream) => Origin;
  healthPath: string;
  healthIntervalMs: number;
  downBackoffMs: number;
  /** 0 = keep-warm off. */
  keepWarmMs: number;
  /** Longest wait for a probe's answer. */
  probeTimeoutMs: number;
  log: LogWriter;
  now?: () => number;
}

/** Transport failures that say the upstream itself is in trouble (not the client, not slowness). */
const MARKS_DOWN: ReadonlySet<UpstreamErrorKind> = new Set([
  "connect",
  "connect_timeout",
  "reset",
  "protocol",
]);

/** Health and keep-warm for every configured upstream. */
export class UpstreamSet {
  readonly #states = new Map<string, State>();
  readonly #opts: UpstreamSetOptions;
  readonly #now: () => number;
  readonly #probeWatchdog: Watchdog;
  #timers: Array<ReturnType<typeof setInterval>> = [];
  #closed = false;

  constructor(upstreams: Iterable<Upstream>, options: UpstreamSetOptions) {
    this.#opts = options;
    this.#now = options.now ?? Date.now;
    this.#probeWatchdog = new Watchdog(options.probeTimeoutMs);
    this.add(upstreams);
  }

  /** Starts tracking upstreams not seen before (a configuration reload); known ones are kept. */
  add(upstreams: Iterable<Upstream>): void {
    for (const u of upstreams) {
      if (!this.#states.has(u.url)) {
        this.#states.set(u.url, {
          upstream: u,
          state: "unknown",
          downUntil: 0,
          consecutiveFailures: 0,
          totalFailures: 0,
          failovers: 0,
          lastError: undefined,
          lastProbeMs: undefined,
          lastProbeAt: undefined,
          probing: false,
        });
      }
    }
  }

  /**
   * The order to try `list` in: upstreams not known to be down keep their configured order; those
   * marked down (and still in their back-off) go last, so a live one is never kept waiting.
   */
  order(list: readonly Upstream[]): readonly Upstream[] {
    if (list.length < 2) return list;
    const now = this.#now();
    let anyDown = false;
    for (const u of list) {
      const s = this.#states.get(u.url);
      if (s !== undefined && s.state === "down" && s.downUntil > now) {
        anyDown = true;
        break;
      }
    }
    if (!anyDown) return list;
    const live: Upstream[] = [];
    const down: Upstream[] = [];
    for (const u of list) {
      const s = this.#states.get(u.url);
      (s !== undefined && s.state === "down" && s.downUntil > now ? down : live).push(u);
    }
    return [...live, ...down];
  }

  /** False while `upstream` is marked down: no connections are opened for it in the background. */
  live(upstream: Upstream): boolean {
    return this.#states.get(upstream.url)?.state !== "down";
  }

  /** A request got a response head from `upstream`. */
  success(upstream: Upstream): void {
    const s = this.#states.get(upstream.url);
    if (s === undefined || (s.state === "up" && s.consecutiveFailures === 0)) return;
    if (s.state === "down") {
      this.#opts.log.info("upstream up", { upstream: upstream.url, via: "request" });
    }
    s.state = "up";
    s.consecutiveFailures = 0;
  }

  /** A request to `upstream` failed with `kind`; `failedOver` when the next upstream was tried. */
  failure(upstream: Upstream, kind: UpstreamErrorKind, failedOver: boolean): void {
    const s = this.#states.get(upstream.url);
    if (s === undefined) return;
    if (failedOver) s.failovers++;
    if (!MARKS_DOWN.has(kind)) return;
    s.totalFailures++;
    s.consecutiveFailures++;
    s.lastError = kind;
    s.downUntil = this.#now() + this.#opts.downBackoffMs;
    if (s.state !== "down") {
      this.#opts.log.warn("upstream down", {
        upstream: upstream.url,
        reason: kind,
        backoffSec: this.#opts.downBackoffMs / 1000,
      });
    }
    s.state = "down";
  }

  /** Starts keep-warm and health probes; the first round runs now (warming the pools). */
  start(): void {
    if (this.#closed) return;
    this.#round(true);
    const every = (ms: number, fn: () => void) => {
      const t = setInterval(fn, ms);
      Deno.unrefTimer(t);
      this.#timers.push(t);
    };
    every(this.#opts.healthIntervalMs, () => this.#round(false));
    if (this.#opts.keepWarmMs > 0) every(this.#opts.keepWarmMs, () => this.#keepWarm());
  }

  /** Probes down upstreams (and, on the first round, all of them). */
  #round(all: boolean): void {
    for (const s of this.#states.values()) {
      if (all || s.state === "down") void this.probe(s.upstream);
    }
  }

  /** Keeps one connection per live upstream fresh, unless real traffic already does. */
  #keepWarm(): void {
    const now = this.#now();
    for (const s of this.#states.values()) {
      if (s.state === "down") continue;
      const pool = this.#opts.pool(s.upstream);
      const stats = pool.stats();
      if (stats.active > 0 || (stats.idle > 0 && now - pool.lastActivity < this.#opts.keepWarmMs)) {
        continue;
      }
      void this.probe(s.upstream);
    }
  }

  /**
   * Sends `GET HEALTH_CHECK_PATH` over the upstream's pool. Any HTTP answer below 500 means A is
   * reachable. Resolves with the round-trip in ms, or null on failure.
   */
  async probe(upstream: Upstream): Promise<number | null> {
    const s = this.#states.get(upstream.url);
    if (s === undefined || s.probing || this.#closed) return null;
    s.probing = true;
    const t0 = performance.now();
    try {
      const res = await this.#opts.pool(upstream).exchange({
        method: "GET",
        target: upstream.prefix + this.#opts.healthPath,
        headers: [["user-agent", "proxy-forwarder-health"], ["accept", "application/json"]],
        body: null,
      }, exchangeOptions(this.#probeWatchdog, undefined, undefined, true));
      if (res.body !== null) {
        // Reading to the end returns the connection to the pool: that is the keep-warm. A health
        // path that streams forever is cut off instead.
        const reader = res.body.getReader();
        let seen = 0;
        while (true) {
          const { value, done } = await reader.read();
          if (done) break;
          seen += value.byteLength;
          if (seen > 64 * 1024) {
            await reader.cancel();
            break;
          }
        }
      }
      const ms = performance.now() - t0;
      s.lastProbeMs = Math.round(ms * 100) / 100;
      s.lastProbeAt = this.#now();
      if (res.status >= 500) throw new Error(`status ${res.status}`);
      if (s.state !== "up") {
        if (s.state === "down") {
          this.#opts.log.info("upstream up", { upstream: upstream.url, via: "probe" });
        }
        s.state = "up";
        s.consecutiveFailures = 0;
      }
      return ms;
    } catch (err) {
      s.lastProbeAt = this.#now();
      const kind = (err as { kind?: UpstreamErrorKind }).kind ?? "protocol";
      if (s.state === "unknown") {
        this.#opts.log.warn("upstream unreachable at start-up", {
          upstream: upstream.url,
          reason: kind,
        });
      }
      this.failure(upstream, kind, false);
      return null;
    } finally {
      s.probing = false;
    }
  }

  /** Health of every upstream, for `/debug/info` and the dashboard. */
  snapshot(): UpstreamHealth[] {
    const now = this.#now();
    return [...this.#states.values()].map((s) => ({
      url: s.upstream.url,
      state: s.state,
      downForSec: s.state === "down" ? Math.max(0, Math.round((s.downUntil - now) / 100) / 10) : 0,
      consecutiveFailures: s.consecutiveFailures,
      totalFailures: s.totalFailures,
      failovers: s.failovers,
      lastError: s.lastError,
      lastProbeMs: s.lastProbeMs,
      lastProbeAt: s.lastProbeAt === undefined ? undefined : new Date(s.lastProbeAt).toISOString(),
      pool: this.#opts.pool(s.upstream).stats(),
    }));
  }

  /** Stops probes and keep-warm. */
  close(): void {
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    this.#probeWatchdog.close();
  }
}
