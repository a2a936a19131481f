/**
 * @module app
 * Builds the relay's request handler from a config and injected dependencies.
 *
 * Owns: the route table (the relay's own endpoints, forwarded API paths, UID routes), the order of
 * checks before forwarding, and the counters behind `/debug/info`. The handler is a plain
 * `(Request, info) => Promise<Response>` so tests call it in memory or behind `Deno.serve`.
 * Must never: read the environment, forward a path outside `/v1` and `/v1beta`, or expose a
 * secret in diagnostics.
 */

import type { Config, Route, Upstream } from "./config.ts";
import { swapKey } from "./credentials.ts";
import { errorResponse, RelayError, toRelayError } from "./errors.ts";
import { redactHeaders, redactQuery, requestHeaders } from "./headers.ts";
import type { Connector } from "./http1.ts";
import { Logger } from "./log.ts";
import { forward, PoolSet } from "./proxy.ts";
import { checkTarget, isApiPath, matchUidPath, splitRequestUrl } from "./target.ts";
import { VERSION } from "./version.ts";
import { Watchdog } from "./watchdog.ts";

/** Connection facts about the client, as `Deno.serve` passes them. */
export interface ClientInfo {
  remoteAddr: { hostname: string; port?: number };
}

/** Injected side effects. */
export interface AppDeps {
  log?: Logger;
  /** Milliseconds clock. */
  now?: () => number;
  /** Opens upstream connections (tests inject failures). */
  connector?: Connector;
}

/** The relay's counters, as shown by `/debug/info`. */
export interface Counters {
  requests: number;
  forwarded: number;
  byStatusClass: Record<string, number>;
  errorsByCode: Record<string, number>;
  failovers: number;
  staleRetries: number;
}

/** A built relay. */
export interface App {
  /** The request handler for `Deno.serve`. */
  fetch(req: Request, info: ClientInfo): Promise<Response>;
  /** In-flight client requests (including streaming bodies). */
  readonly inFlight: number;
  readonly counters: Readonly<Counters>;
  /** Diagnostics, safe to show (no secrets). */
  debugInfo(): Record<string, unknown>;
  /** Closes idle upstream connections (used on shutdown so in-flight work can finish). */
  closeIdle(): void;
  /** Releases timers and connections. */
  close(): void;
}

const JSON_TYPE = "application/json; charset=utf-8";

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": JSON_TYPE } });
}

/** Builds the relay. */
export function createApp(config: Config, deps: AppDeps = {}): App {
  const log = deps.log ?? new Logger({ level: config.debugLog ? "debug" : "info" });
  const now = deps.now ?? Date.now;
  const started = now();
  const watchdog = new Watchdog(config.upstreamTimeoutMs);
  const pools = new PoolSet({
    connectTimeoutMs: config.connectTimeoutMs,
    idleTimeoutMs: config.poolIdleMs,
    connector: deps.connector,
  });
  let inFlight = 0;
  let openStreams = 0;
  const counters: Counters = {
    requests: 0,
    forwarded: 0,
    byStatusClass: {},
    errorsByCode: {},
    failovers: 0,
    staleRetries: 0,
  };

  const countStatus = (status: number): void => {
    const cls = `${Math.floor(status / 100)}xx`;
    counters.byStatusClass[cls] = (counters.byStatusClass[cls] ?? 0) + 1;
  };

  const fail = (err: RelayError): Response => {
    counters.errorsByCode[err.code] = (counters.errorsByCode[err.code] ?? 0) + 1;
    countStatus(err.status);
    return errorResponse(err);
  };

  const upstreamView = (u: Upstream) => u.url;

  function debugInfo(): Record<string, unknown> {
    return {
      version: VERSION,
      deno: Deno.version.deno,
      uptimeSec: Math.round((now() - started) / 1000),
      upstreams: config.upstreams.map(upstreamView),
      routes: [...config.routes.values()].map((r: Route) => ({
        id: r.id,
        upstreams: r.upstreams.map(upstreamView),
        keySwap: r.apiKey !== undefined,
      })),
      timeouts: {
        upstreamSec: config.upstreamTimeoutMs / 1000,
        connectSec: config.connectTimeoutMs / 1000,
        shutdownGraceSec: config.shutdownGraceMs / 1000,
        poolIdleSec: config.poolIdleMs / 1000,
      },
      inFlight,
      openStreams,
      counters,
      pools: pools.stats(),
    };
  }

  async function relay(
    req: Request,
    path: string,
    query: string,
    info: ClientInfo,
  ): Promise<Response> {
    let upstreams = config.upstreams;
    let route: Route | undefined;
    let apiPath = path;
    const uid = matchUidPath(path);
    if (uid !== null) {
      route = config.routes.get(uid.id);
      if (route === undefined) {
        throw new RelayError(
          404,
          "unknown_route",
          `No route /u${uid.id} is configured on this relay.`,
        );
      }
      apiPath = uid.rest;
      upstreams = route.upstreams;
    }
    if (!isApiPath(apiPath)) {
      throw new RelayError(
        404,
        "not_found",
        "Not found: this relay forwards /v1/... and /v1beta/... only.",
      );
    }
    const bad = checkTarget(apiPath, query);
    if (bad !== null) throw bad;
    let headers = requestHeaders(req.headers, { clientIp: info.remoteAddr.hostname });
    let target = apiPath + query;
    if (route?.apiKey !== undefined && route.accessKey !== undefined) {
      const swapped = swapKey(headers, query, { accessKey: route.accessKey, apiKey: route.apiKey });
      headers = swapped.headers;
      target = apiPath + swapped.query;
    }
    if (log.enabled("debug")) {
      log.debug("forward", {
        method: req.method,
        path: redactQuery(path + query),
        headers: redactHeaders(headers),
      });
    }
    counters.forwarded++;
    const result = await forward(req, {
      upstreams,
      target,
      headers,
      pools,
      watchdog,
      retryBodyMaxBytes: config.retryBodyMaxBytes,
    });
    counters.failovers += result.failovers;
    const up = result.upstreamResponse!;
    if (up.attempts > 1) counters.staleRetries++;
    countStatus(up.status);
    if (log.enabled("debug")) {
      log.debug("response", { status: up.status, headers: redactHeaders(up.headers) });
    }
    if (up.body !== null) {
      openStreams++;
      inFlight++;
      up.observer = {
        chunk() {},
        end(error) {
          openStreams--;
          inFlight--;
          if (error !== null && error.kind !== "aborted") {
            log.warn("upstream body broke", { kind: error.kind, detail: error.message });
          }
        },
      };
    }
    return result.response;
  }

  async function handle(req: Request, info: ClientInfo): Promise<Response> {
    counters.requests++;
    const { path, query } = splitRequestUrl(req.url);
    if (path === "/" && (req.method === "GET" || req.method === "HEAD")) {
      return json({ ok: true, proxy: "Server B → Server A", version: VERSION });
    }
    if (path === "/debug/info" && req.method === "GET") return json(debugInfo());
    inFlight++;
    try {
      return await relay(req, path, query, info);
    } catch (err) {
      const e = toRelayError(err);
      if (e.status >= 500) {
        const cause = e.cause instanceof Error ? e.cause.message : undefined;
        log.warn("relay error", { code: e.code, status: e.status, path: redactQuery(path), cause });
      }
      return fail(e);
    } finally {
      inFlight--;
    }
  }

  return {
    fetch: handle,
    get inFlight() {
      return inFlight;
    },
    counters,
    debugInfo,
    closeIdle: () => pools.closeIdle(),
    close() {
      pools.close();
      watchdog.close();
    },
  };
}
