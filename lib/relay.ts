/**
 * @module app
 * Builds the relay's request handler from a config and injected dependencies.
 *
 * Owns: the route table (the relay's own endpoints, forwarded API paths, UID routes), the order of
 * checks before forwarding, request ids, and the per-request record observers receive (access log,
 * metrics, dashboard). The handler is a plain `(Request, info) => Promise<Response>` so tests call
 * it in memory or behind `Deno.serve`.
 * Must never: read the environment, forward a path outside `/v1` and `/v1beta`, or expose a
 * secret in diagnostics or records.
 */

import { checkAdmin } from "./pipeline/mod.ts";
import { connectionCap, isOutOfDescriptors, overloaded, readFdLimit } from "./server/mod.ts";
import { Guards } from "./pipeline/mod.ts";
import { clientIpFrom } from "./config/mod.ts";
import type { Config, Route, Upstream } from "./config/mod.ts";
import { errorResponse, relayError, toRelayError } from "./errors.ts";
import {
  appendLine,
  fieldValue,
  isEventStream,
  redactHeaders,
  redactQuery,
  requestField,
  sentUrl,
} from "./http/mod.ts";
import { type BodyTap, type Connector, UpstreamError } from "./upstream/mod.ts";
import { Logger } from "./observe/mod.ts";
import { forward, relayErrorFor } from "./pipeline/mod.ts";
import { PoolSet } from "./upstream/mod.ts";
import { type RawTarget, splitRequestUrl } from "./pipeline/mod.ts";
import { type Counters, Telemetry } from "./observe/mod.ts";
import { dashboardAsset } from "./observe/mod.ts";
import { PROM_CONTENT_TYPE } from "./observe/mod.ts";
import { UpstreamSet } from "./upstream/mod.ts";
import { UsageTap } from "./observe/mod.ts";
import type { RequestRecord } from "./observe/record.ts";
import { VERSION } from "./observe/mod.ts";
import { planReload, type ReloadPlan } from "./config/mod.ts";
import { SendTimeoutError, SendWatch } from "./server/mod.ts";
import { listen, type Listener, type ListenOptions } from "./server/mod.ts";
import { type AccessLogHandle, openAccessLog } from "./observe/mod.ts";
import { Watchdog } from "./http/mod.ts";
import { isWebSocketUpgrade, relayWebSocket } from "./pipeline/mod.ts";
import { type Admission, admit, type StepDeps } from "./pipeline/mod.ts";
import type { HeaderList } from "./http/mod.ts";
import type { ClientInfo, Upgrader } from "./http/mod.ts";

export type { ClientInfo, RequestRecord };

/** What the app shows about the client-facing server (`listen.ts`'s Listener fits). */
export interface ServerView {
  readonly kind: string;
  /** Open client sockets, or null when the server does not count them. */
  readonly connections: number | null;
}

/** Injected side effects. */
export interface AppDeps {
  log?: Logger;
  /** Milliseconds clock. */
  now?: () => number;
  /** Opens upstream connections (tests inject failures). */
  connector?: Connector;
  /** Extra CA certificates (PEM) to trust for HTTPS upstreams, besides the system's and DENO_CERT. */
  caCerts?: string[];
  /** Request ids when the client sent none usable. */
  newId?: () => string;
  /** Called once per finished request. Must be cheap and must not throw. */
  observers?: Array<(record: RequestRecord) => void>;
  /**
   * Start keep-warm, health probes and spare connections (default true; tests that count upstream
   * requests or connections say false).
   */
  background?: boolean;
  /**
   * The process's open-files limit, when the caller learnt it (`deno task start` passes it: Deno
   * lets no process read /proc/self/limits without --allow-all); otherwise `readFdLimit` tries.
   * Sizes MAX_CONNECTIONS when that is unset. Null or absent: unknown.
   */
  fdLimit?: number | null;
}

/** A built relay. */
export interface App {
  /** The request handler for `Deno.serve`. */
  fetch(req: Request, info: ClientInfo): Promise<Response>;
  /** In-flight client requests (including streaming bodies). */
  readonly inFlight: number;
  /** Response bodies still streaming. */
  readonly openStreams: number;
  /** The effective `MAX_CONNECTIONS` (configured, or derived from the descriptor limit). */
  readonly maxConnections: number;
  /** Tells the app which server it runs behind, for `/debug/info` and `/metrics`. */
  attachServer(server: ServerView): void;
  /** Counts a client connection the server closed on its own (header timeout, idle, cap...). */
  clientDropped(reason: string): void;
  readonly counters: Readonly<Counters>;
  /** Metrics, dashboard numbers and recent requests (`/metrics`, `/dashboard`). */
  readonly telemetry: Telemetry;
  /** Diagnostics, safe to show (no secrets). */
  debugInfo(): Record<string, unknown>;
  /** Adds an observer of finished requests. */
  observe(observer: (record: RequestRecord) => void): void;
  /**
   * Swaps in a new configuration for requests that arrive from now on (SIGHUP); requests in
   * flight finish with the one they started with. Only live settings change (see `reload.ts`).
   */
  reload(next: Config): ReloadPlan;
  /** Closes idle upstream connections (used on shutdown so in-flight work can finish). */
  closeIdle(): void;
  /** Releases timers and connections. */
  close(): void;
}

const JSON_TYPE = "application/json; charset=utf-8";

let clockBase = Date.now() - performance.now();

/**
 * Milliseconds since the epoch with sub-millisecond resolution: the monotonic clock, re-anchored
 * to the wall clock if the two drift more than a second apart (the system clock was set).
 */
export function preciseNow(): number {
  const mono = performance.now();
  const wall = Date.now();
  if (Math.abs(clockBase + mono - wall) > 1000) clockBase = wall - mono;
  return clockBase + mono;
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": JSON_TYPE } });
}

const SAFE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** The client's `x-request-id` if short and safe, else a new one. */
export function requestIdFor(req: Request, newId: () => string): string {
  const given = requestField(req, "x-request-id");
  return given !== null && SAFE_ID.test(given) ? given : newId();
}

/** Per-request state while it is handled. */
/** No headers or target yet: the steps build the ones A gets. */
const NO_HEADERS: HeaderList = [];
const NO_TARGET: RawTarget = { path: "", query: "" };
/** Stands in for a request whose response streams (see relay): its record keeps no Request alive. */
const SPENT = new Request("http://spent.invalid/");

/** One request as the relay handles it: what the steps decided, then what came back. */
interface Ctx extends Admission {
  start: number;
  method: string;
  upstream: Upstream | undefined;
  headAt: number | undefined;
  exchangeStart: number | undefined;
  returnedAt: number | undefined;
  requestBytes: number;
  responseBytes: number;
  stream: boolean;
  usage: UsageTap | null;
  attempts: number;
  failovers: number;
  /** A's status, once its head arrived. */
  status: number;
  /** A streamed body was handed on: it counts as open until the tap's end. */
  streaming: boolean;
  requestHeaders?: Record<string, string>;
  responseHeaders?: Record<string, string>;
  upstreamRequestId?: string;
  /** The client's server can hand over its socket (WebSocket tunnel). */
  upgrade?: Upgrader | undefined;
}

/** Builds the relay. */
export function createApp(config: Config, deps: AppDeps = {}): App {
  const log = deps.log ?? new Logger({ level: config.debugLog ? "debug" : "info" });
  const now = deps.now ?? preciseNow;
  const newId = deps.newId ?? (() => crypto.randomUUID());
  const observers = [...(deps.observers ?? [])];
  const started = now();
  const watchdog = new Watchdog(config.upstreamTimeoutMs);
  const pools: PoolSet = new PoolSet({
    connectTimeoutMs: config.connectTimeoutMs,
    idleTimeoutMs: config.poolIdleMs,
    connector: deps.connector,
    caCerts: deps.caCerts,
    http2: config.upstreamHttp2 === "auto",
    // Spares are background connections, like the probes: off when the caller counts connections.
    spares: deps.background === false ? 0 : config.spareConnections,
    live: (u): boolean => health.live(u),
    warm: config.keepWarmMs > 0 ? (u): Promise<unknown> => health.probe(u) : undefined,
  });
  const allUpstreams = [
    ...config.upstreams,
    ...[...config.routes.values()].flatMap((r) => r.upstreams),
  ];
  const health = new UpstreamSet(allUpstreams, {
    pool: (u) => pools.get(u),
    healthPath: config.healthPath,
    healthIntervalMs: config.healthIntervalMs,
    downBackoffMs: config.downBackoffMs,
    keepWarmMs: config.keepWarmMs,
    probeTimeoutMs: Math.min(config.upstreamTimeoutMs, Math.max(config.connectTimeoutMs, 5000)),
    log,
    now,
  });
  if (deps.background !== false) health.start();
  let inFlight = 0;
  let openStreams = 0;
  /** The client-facing server, once attached: its socket count shows in metrics. */
  let server: ServerView | null = null;
  const dropped: Record<string, number> = {};
  const clientDropped = (reason: string): void => {
    dropped[reason] = (dropped[reason] ?? 0) + 1;
    telemetry.clientDropped(reason);
  };
  // The relay's own server watches its socket writes; behind Deno.serve (or with no server
  // attached: Deno Deploy) the send deadline watches the response body instead.
  const sendWatch = new SendWatch(config.clientSendTimeoutMs);
  const watchBody = (body: ReadableStream<Uint8Array>) =>
    sendWatch.wrap(body, () => clientDropped("send_timeout"));
  // Access control and abuse limits: built once; ALLOW_IPS is read live from `config`.
  const guards = new Guards(() => config, { now: deps.now ?? Date.now, log });
  const cap = connectionCap(
    config.maxConnections,
    config.maxConnections > 0 ? null : deps.fdLimit ?? readFdLimit(),
  );
  const stepDeps: StepDeps = { guards, log };
  const telemetry = new Telemetry({
    upstreams: allUpstreams.map((u) => u.url),
    isRoute: (id) => config.routes.has(id),
    state: () => ({ inFlight, openStreams, clientConnections: server?.connections ?? null }),
    health: () => health.snapshot(),
    pools: () => pools.stats(),
    now,
    version: VERSION,
  });
  observers.unshift(telemetry.observe);

  /** Gives the client's concurrency slot back (once). */
  function freeSlot(ctx: Ctx): void {
    ctx.release?.();
    ctx.release = undefined;
  }

  /** Emits the record for a finished request. */
  function finish(ctx: Ctx, status: number, errorCode: string | undefined): void {
    freeSlot(ctx);
    const end = now();
    const ttfb = ctx.headAt !== undefined && ctx.exchangeStart !== undefined
      ? ctx.headAt - ctx.exchangeStart
      : undefined;
    const untilReturn = (ctx.returnedAt ?? end) - ctx.start;
    // A's share: from sending the request until its head came (or the wait ended without one).
    const waitedForA = ctx.exchangeStart === undefined
      ? 0
      : (ctx.headAt ?? ctx.returnedAt ?? end) - ctx.exchangeStart;
    const record: RequestRecord = {
      id: ctx.id,
      time: ctx.start,
      clientIp: ctx.clientIp,
      method: ctx.method,
      path: redactQuery(ctx.path + ctx.query),
      route: ctx.routeId,
      upstream: ctx.upstream?.url,
      status,
      ttfbMs: ttfb,
      durationMs: end - ctx.start,
      relayMs: Math.max(0, untilReturn - waitedForA),
      // Counted bytes when the body streamed without a length (chunked uploads).
      requestBytes: ctx.requestBytes || (ctx.body?.bytes ?? 0),
      responseBytes: ctx.responseBytes,
      stream: ctx.stream,
      usage: ctx.usage?.finish(),
      attempts: ctx.attempts,
      failovers: ctx.failovers,
      errorCode,
    };
    if (ctx.requestHeaders !== undefined) record.requestHeaders = ctx.requestHeaders;
    if (ctx.responseHeaders !== undefined) record.responseHeaders = ctx.responseHeaders;
    if (ctx.upstreamRequestId !== undefined) record.upstreamRequestId = ctx.upstreamRequestId;
    for (const observe of observers) {
      try {
        observe(record);
      } catch (err) {
        log.error("observer failed", { detail: err instanceof Error ? err.message : String(err) });
      }
    }
  }

  const upstreamView = (u: Upstream) => u.url;

  function debugInfo(): Record<string, unknown> {
    return {
      version: VERSION,
      deno: Deno.version.deno,
      uptimeSec: Math.round((now() - started) / 1000),
      memory: Deno.memoryUsage(),
      upstreams: config.upstreams.map(upstreamView),
      upstreamHealth: health.snapshot(),
      keepWarmSec: config.keepWarmMs / 1000,
      spareConnections: config.spareConnections,
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
      clientConnections: server === null
        ? null
        : { server: server.kind, open: server.connections, closedByRelay: { ...dropped } },
      counters: telemetry.counters(),
      pools: pools.stats(),
      limits: {
        ...guards.stats(),
        maxConnections: cap.max,
        maxConnectionsFrom: cap.source,
        maxConnectionsPerIp: config.maxConnectionsPerIp,
        clientSendTimeoutSec: config.clientSendTimeoutMs / 1000,
        maxBodyBytes: config.maxBodyBytes,
        clientBodyTimeoutSec: config.clientBodyTimeoutMs / 1000,
      },
      metrics: telemetry.snapshot({ recent: false, series: false }),
    };
  }

  /** `/metrics` and the dashboard, for a client `checkAdmin` allowed. */
  async function diagnostics(path: string): Promise<Response> {
    const noStore = { "cache-control": "no-store" };
    if (path === "/metrics") {
      return new Response(telemetry.render(), {
        headers: { "content-type": PROM_CONTENT_TYPE, ...noStore },
      });
    }
    if (path === "/dashboard/data") {
      return new Response(JSON.stringify(telemetry.snapshot()), {
        headers: { "content-type": JSON_TYPE, ...noStore },
      });
    }
    return (await dashboardAsset(path)) ??
      errorResponse(relayError("not_found", { reason: "dashboard" }));
  }

  /**
   * Forwards an API request; resolves with the response whose body may still be streaming. `cfg`
   * is the configuration taken when the request arrived: a reload during one of its awaits must
   * not give it half of each.
   */
  async function relay(
    req: Request,
    ctx: Ctx,
    cfg: Config,
    info: ClientInfo,
  ): Promise<Response> {
    // Shed before opening anything upstream: this request is already counted in `inFlight`.
    if (inFlight > cap.max) throw overloaded();
    const admitting = admit(ctx, stepDeps);
    if (admitting !== undefined) await admitting;
    const { upstreams, target, headers, announced, body: limited } = ctx;
    telemetry.forwarded();
    if (isWebSocketUpgrade(req)) {
      inFlight++;
      openStreams++;
      ctx.exchangeStart = now();
      ctx.stream = true;
      return await relayWebSocket(req, {
        upgrade: ctx.upgrade,
        upstreams,
        target,
        headers,
        pools,
        health,
        timeoutMs: cfg.upstreamTimeoutMs,
        log,
        onHead: (upstream) => {
          // The 101 (or A's refusal) is the session's first byte; the session may last hours.
          ctx.headAt = now();
          ctx.upstream = upstream;
        },
        onEnd: (end) => {
          inFlight--;
          openStreams--;
          ctx.requestBytes = end.bytesUp;
          ctx.responseBytes = end.bytesDown;
          // A client that drops the socket is a client leaving (499), as with an HTTP stream:
          // not a failure of A.
          if (end.outcome === "client_gone") finish(ctx, 499, "client_closed");
          else if (end.outcome === "upstream_broken") {
            finish(ctx, end.status, "upstream_stream_broken");
          } else finish(ctx, end.status, undefined);
        },
      }).catch((err) => {
        inFlight--;
        openStreams--;
        throw relayErrorFor(err);
      });
    }
    if (announced !== null) ctx.requestBytes = announced || 0;
    ctx.exchangeStart = now();
    const ownServer = server?.kind === "relay";
    const result = await forward(req, {
      length: announced,
      upstreams,
      target,
      headers,
      pools,
      watchdog,
      retryBodyMaxBytes: cfg.retryBodyMaxBytes,
      health,
      body: limited,
      // The own server watches its own writes and writes the registered field lines.
      watchBody: ownServer ? undefined : watchBody,
      writesFieldLines: ownServer,
      tap: bodyTap(ctx),
      requestId: ctx.id,
    }).catch((err) => {
      // A body cut by a limit aborts the exchange; answer with why, not as a client abort. Out of
      // descriptors, the upstream connect fails: that is the relay's overload (503), not A (502).
      throw limited?.error ?? (isOutOfDescriptors(err) ? overloaded() : err);
    });
    ctx.headAt = now();
    ctx.failovers = result.failovers;
    ctx.upstream = result.upstream;
    ctx.attempts = result.attempts;
    ctx.status = result.status;
    if (log.enabled("debug")) {
      log.debug("response", {
        id: ctx.id,
        status: result.status,
        headers: redactHeaders(result.upstreamHeaders),
      });
    }
    if (cfg.debugLog) ctx.responseHeaders = redactHeaders(result.upstreamHeaders);
    const aId = result.upstreamRequestId;
    if (aId !== null && SAFE_ID.test(aId)) ctx.upstreamRequestId = aId;
    const response = result.response;
    // From A's lines: reading `response.headers` would make the Headers the own server never needs.
    const contentType = fieldValue(result.fields, "content-type");
    const contentEncoding = fieldValue(result.fields, "content-encoding");
    // Every event stream is a stream, also one that arrived whole in the first read.
    ctx.stream = isEventStream(result.upstreamHeaders);
    if (!result.streaming) {
      const whole = result.whole;
      if (whole !== null) ctx.responseBytes = whole.byteLength;
      const status = result.status;
      // The usage in a whole body and the record wait until the response was written: at
      // concurrency 1 they were ~12 us between A's answer and the client's, while after the
      // write they overlap the client reading it. The client's concurrency slot is freed now, as
      // before: its next request may come before `completed` settles (Deno.serve).
      freeSlot(ctx);
      const record = (): void => {
        if (whole !== null) {
          const tap = new UsageTap(contentType, contentEncoding);
          tap.finishWith(whole);
          ctx.usage = tap;
        }
        finish(ctx, status, undefined);
      };
      const completed = info.completed;
      if (completed === undefined) record();
      else completed.then(record, record);
      return response;
    }
    ctx.usage = new UsageTap(contentType, contentEncoding);
    ctx.streaming = true;
    // A stream can last minutes: its record needs nothing more of the request.
    ctx.req = SPENT;
    ctx.headers = NO_HEADERS;
    ctx.target = NO_TARGET;
    openStreams++;
    inFlight++;
    return response;
  }

  /** Watches a streamed body from A: bytes and usage as chunks pass, the record at its end. */
  function bodyTap(ctx: Ctx): BodyTap {
    return {
      chunk(bytes) {
        ctx.responseBytes += bytes.byteLength;
        ctx.usage?.push(bytes);
      },
      end(error) {
        // Counted open only once the response was handed on (see relay above).
        if (ctx.streaming) {
          openStreams--;
          inFlight--;
        }
        if (error !== null && error.kind !== "aborted") {
          log.warn("upstream body broke", { id: ctx.id, kind: error.kind, detail: error.message });
        }
        const code = error === null
          ? undefined
          : error.kind === "aborted"
          ? "client_closed"
          : error.kind === "timeout"
          ? "upstream_timeout"
          : "upstream_stream_broken";
        finish(ctx, error?.kind === "aborted" ? 499 : ctx.status, code);
      },
    };
  }

  async function handle(req: Request, info: ClientInfo): Promise<Response> {
    const cfg = config;
    telemetry.arrived();
    const { path, query } = splitRequestUrl(sentUrl(req));
    if (path === "/" && (req.method === "GET" || req.method === "HEAD")) {
      return json({ ok: true, proxy: "Server B \u2192 Server A", version: VERSION });
    }
    const peer = info.remoteAddr.hostname;
    const clientIp = cfg.trustedProxies === null
      ? peer
      : clientIpFrom(peer, req.headers, cfg.trustedProxies);
    if (path === "/debug/info" && req.method === "GET") {
      const denied = checkAdmin(req, clientIp, cfg);
      return denied === null ? json(debugInfo()) : errorResponse(denied);
    }
    if ((path === "/metrics" || path.startsWith("/dashboard")) && req.method === "GET") {
      const denied = checkAdmin(req, clientIp, cfg);
      if (denied === null) return diagnostics(path);
      const res = errorResponse(denied);
      // Lets a browser ask for the token (any user name, ADMIN_TOKEN as the password).
      if (denied.status === 401 && path.startsWith("/dashboard")) {
        return appendLine(
          res,
          "www-authenticate",
          'Basic realm="proxy-forwarder", charset="UTF-8"',
        );
      }
      return res;
    }
    const trusted = cfg.trustedProxies?.contains(peer) ?? false;
    const ctx: Ctx = {
      req,
      cfg,
      id: requestIdFor(req, newId),
      start: now(),
      clientIp,
      method: req.method,
      path,
      query,
      forwardedFor: trusted ? requestField(req, "x-forwarded-for") ?? undefined : undefined,
      peerIp: trusted ? peer : undefined,
      routeId: undefined,
      route: undefined,
      upstreams: cfg.upstreams,
      headers: NO_HEADERS,
      target: NO_TARGET,
      announced: null,
      body: null,
      upstream: undefined,
      headAt: undefined,
      exchangeStart: undefined,
      returnedAt: undefined,
      requestBytes: 0,
      responseBytes: 0,
      stream: false,
      usage: null,
      attempts: 0,
      failovers: 0,
      status: 0,
      streaming: false,
    };
    if (info.upgrade !== undefined) ctx.upgrade = info.upgrade;
    if (cfg.debugLog) ctx.requestHeaders = redactHeaders(req.headers);
    inFlight++;
    try {
      const res = await relay(req, ctx, cfg, info);
      ctx.returnedAt = now();
      return res;
    } catch (err) {
      const e = toRelayError(err);
      if (e.status >= 500) {
        const cause = e.cause instanceof Error ? e.cause.message : undefined;
        log.warn("relay error", {
          id: ctx.id,
          code: e.code,
          status: e.status,
          path: redactQuery(path),
          cause,
        });
      }
      finish(ctx, e.status, e.code);
      return errorResponse(e, ctx.id);
    } finally {
      inFlight--;
    }
  }

  return {
    fetch: handle,
    get inFlight() {
      return inFlight;
    },
    get openStreams() {
      return openStreams;
    },
    maxConnections: cap.max,
    attachServer: (s) => {
      server = s;
    },
    clientDropped,
    get counters() {
      return telemetry.counters();
    },
    telemetry,
    debugInfo,
    observe(observer) {
      observers.push(observer);
    },
    reload(next) {
      const plan = planReload(config, next);
      // Every request reads `config` once when it starts: this one assignment is the swap.
      config = plan.config;
      health.add([...config.upstreams, ...[...config.routes.values()].flatMap((r) => r.upstreams)]);
      return plan;
    },
    closeIdle: () => pools.closeIdle(),
    close() {
      guards.close();
      health.close();
      pools.close();
      watchdog.close();
      sendWatch.close();
    },
  };
}

/** A relay built from one configuration: the app, its logger and its access log. */
export interface Relay {
  app: App;
  log: Logger;
  /** Null with `ACCESS_LOG=0`. */
  accessLog: AccessLogHandle | null;
}

/**
 * Builds the relay every entry runs (`main.ts`, `deploy.ts`, `demo.ts`): the logger the
 * configuration asks for (unless the entry brings its own), the access log, and the app with the
 * access log as an observer. Throws `ConfigError` when `LOG_FILE` cannot be opened.
 */
export function createRelay(
  config: Config,
  options: { log?: Logger; fdLimit?: number | null } = {},
): Relay {
  const log = options.log ??
    new Logger({ level: config.debugLog ? "debug" : "info", format: config.logFormat });
  const accessLog = openAccessLog(config);
  const app = createApp(config, {
    log,
    observers: accessLog ? [accessLog.observe] : [],
    fdLimit: options.fdLimit ?? null,
  });
  return { app, log, accessLog };
}

/** What an entry adds to {@link serveRelay}: TLS, and what to say once listening. */
export type ServeOptions = Pick<ListenOptions, "tls" | "onListen">;

/**
 * Serves a relay on the configured address (`listen.ts`: the relay's own HTTP/1.1 server, plain
 * HTTP or TLS, or `Deno.serve` with `HTTP_SERVER=deno`) and attaches the server to the app, which
 * reads its connection count and sheds load through it. Throws what `Deno.listen` throws.
 */
export function serveRelay(relay: Relay, config: Config, options: ServeOptions = {}): Listener {
  const { app, log } = relay;
  const server = listen(config, {
    handler: (req, info) => app.fetch(req, info),
    log,
    maxConnections: app.maxConnections,
    onDrop: (reason) => app.clientDropped(reason),
    ...options,
    onError: (err) => {
      // Deno.serve also reports a response body that broke mid-stream here; that was already
      // logged as "upstream body broke" (or counted as a send timeout) and is no relay bug.
      if (err instanceof UpstreamError || err instanceof SendTimeoutError) {
        log.debug("response body ended with an error", { detail: err.message });
      } else {
        log.error("unhandled error", { detail: err instanceof Error ? err.message : String(err) });
      }
      return errorResponse(toRelayError(err));
    },
  });
  app.attachServer(server);
  return server;
}
