/**
 * @module config
 * Turns the environment into a validated, immutable {@link Config}.
 *
 * Owns: every environment variable's name, default, parsing and error message. `parseConfig` is
 * pure: the environment and file reader are passed in, so tests drive it with plain objects.
 * Must never: read `Deno.env` or the file system itself, log, or accept a value it cannot explain.
 * Error messages may quote values, except secrets (API keys, access keys), which they never repeat.
 */

/** One upstream base URL, pre-split for the HTTP client. */
export interface Upstream {
  /** The base URL as configured, minus any trailing slash; safe to show (no credentials allowed). */
  readonly url: string;
  readonly protocol: "http:" | "https:";
  readonly hostname: string;
  readonly port: number;
  /** Value of the `Host` header sent to this upstream. */
  readonly hostHeader: string;
  /** Path prefix without trailing slash: "" or e.g. "/api". */
  readonly prefix: string;
}

/** A UID route: `/u{id}/v1/...` goes to `upstreams` with optional key swap. */
export interface Route {
  readonly id: string;
  readonly upstreams: readonly Upstream[];
  /** Server A key the relay sends instead of the client's access key. */
  readonly apiKey?: string;
  /** The key clients must present on this route (required when `apiKey` is set). */
  readonly accessKey?: string;
}

/** Everything the relay needs to run, validated. */
export interface Config {
  readonly upstreams: readonly Upstream[];
  readonly host: string;
  readonly port: number;
  readonly debugLog: boolean;
  /** Longest wait for A's response headers, and longest silence between body chunks. */
  readonly upstreamTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly shutdownGraceMs: number;
  /** Request bodies up to this size are kept so a request on a stale connection can be resent. */
  readonly retryBodyMaxBytes: number;
  /** Idle pooled upstream connections are closed after this long (A drops them after ~5 s). */
  readonly poolIdleMs: number;
  readonly routes: ReadonlyMap<string, Route>;
}

/** A start-up configuration problem; its message is one line meant for the operator. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** The environment as a plain record (e.g. `Deno.env.toObject()`). */
export type Env = Readonly<Record<string, string | undefined>>;

/** Options for {@link parseConfig}. */
export interface ParseOptions {
  /** Reads `ROUTES_FILE`; defaults to refusing, so pure callers must pass one to use the file. */
  readFile?: (path: string) => string;
}

const MISSING_UPSTREAM = "UPSTREAM_SERVER_A is not set: it must be the base URL of Server A " +
  "(e.g. https://hub.example.com). Run `cp .env.example .env` and edit it, or set it in the " +
  "environment. For a first look without a Server A, run `deno task demo`.";

/** Parses and validates the relay's configuration. Throws {@link ConfigError}. */
export function parseConfig(env: Env, options: ParseOptions = {}): Config {
  const rawUpstream = value(env, "UPSTREAM_SERVER_A");
  if (rawUpstream === undefined) throw new ConfigError(MISSING_UPSTREAM);
  const upstreams = parseUpstreamList(rawUpstream, "UPSTREAM_SERVER_A");
  const upstreamTimeoutMs = seconds(env, "UPSTREAM_TIMEOUT_SEC", 600);
  return {
    upstreams,
    host: value(env, "HOST") ?? "0.0.0.0",
    port: port(env, "PORT", 8000),
    debugLog: bool(env, "DEBUG_LOG", false),
    upstreamTimeoutMs,
    connectTimeoutMs: seconds(env, "CONNECT_TIMEOUT_SEC", 10),
    shutdownGraceMs: seconds(env, "SHUTDOWN_GRACE_SEC", 30, { allowZero: true }),
    retryBodyMaxBytes: megabytes(env, "RETRY_BODY_MAX_MB", 8),
    poolIdleMs: seconds(env, "UPSTREAM_POOL_IDLE_SEC", 4),
    routes: parseRoutes(env, upstreams, options),
  };
}

function value(env: Env, name: string): string | undefined {
  const v = env[name]?.trim();
  return v === undefined || v === "" ? undefined : v;
}

function fail(name: string, raw: string, expected: string): never {
  throw new ConfigError(`${name}=${JSON.stringify(raw)} is invalid: expected ${expected}.`);
}

function seconds(
  env: Env,
  name: string,
  fallback: number,
  opts: { allowZero?: boolean } = {},
): number {
  const raw = value(env, name);
  if (raw === undefined) return fallback * 1000;
  const n = /^\d+(\.\d+)?$/.test(raw) ? Number(raw) : NaN;
  const ok = Number.isFinite(n) && (opts.allowZero ? n >= 0 : n > 0) && n <= 86_400 * 7;
  if (!ok) {
    fail(name, raw, `a number of seconds${opts.allowZero ? "" : " greater than 0"}, e.g. 30`);
  }
  return Math.round(n * 1000);
}

function megabytes(env: Env, name: string, fallback: number): number {
  const raw = value(env, name);
  if (raw === undefined) return fallback * 1024 * 1024;
  const n = /^\d+(\.\d+)?$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isFinite(n) || n > 1024 * 1024) fail(name, raw, "a size in megabytes, e.g. 8");
  return Math.round(n * 1024 * 1024);
}

function port(env: Env, name: string, fallback: number): number {
  const raw = value(env, name);
  if (raw === undefined) return fallback;
  const n = /^\d{1,5}$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= 0 && n <= 65535)) fail(name, raw, "a TCP port from 1 to 65535 (0 picks a free one)");
  return n;
}

function bool(env: Env, name: string, fallback: boolean): boolean {
  const raw = value(env, name);
  if (raw === undefined) return fallback;
  const v = raw.toLowerCase();
  if (["1", "true", "yes", "on"].includes(v)) return true;
  if (["0", "false", "no", "off"].includes(v)) return false;
  fail(name, raw, "1 or 0 (true/false, yes/no, on/off)");
}

/** Parses a comma-separated list of upstream base URLs in failover order. */
export function parseUpstreamList(raw: string, name: string): Upstream[] {
  const parts = raw.split(",").map((p) => p.trim()).filter((p) => p !== "");
  if (parts.length === 0) fail(name, raw, "one or more base URLs such as https://hub.example.com");
  return parts.map((p) => parseUpstream(p, name));
}

function parseUpstream(raw: string, name: string): Upstream {
  const expected = "an http:// or https:// base URL such as https://hub.example.com or " +
    "https://hub.example.com/api (a comma-separated list for failover)";
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    fail(name, raw, expected);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") fail(name, raw, expected);
  if (url.username !== "" || url.password !== "") {
    throw new ConfigError(
      `${name} must not contain a user name or password: the relay never adds credentials of its own.`,
    );
  }
  if (url.search !== "" || url.hash !== "" || raw.includes("?") || raw.includes("#")) {
    fail(name, raw, `${expected}, without query string or fragment`);
  }
  const prefix = url.pathname.replace(/\/+$/, "");
  if (prefix.split("/").some((s) => s === "." || s === "..")) fail(name, raw, expected);
  const defaultPort = url.protocol === "https:" ? 443 : 80;
  const portNum = url.port === "" ? defaultPort : Number(url.port);
  const hostname = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
  return {
    url: `${url.protocol}//${url.host}${prefix}`,
    protocol: url.protocol,
    hostname,
    port: portNum,
    hostHeader: url.host,
    prefix,
  };
}

function parseRoutes(env: Env, defaults: Upstream[], options: ParseOptions): Map<string, Route> {
  const inline = value(env, "ROUTES");
  const file = value(env, "ROUTES_FILE");
  if (inline !== undefined && file !== undefined) {
    throw new ConfigError("Set either ROUTES or ROUTES_FILE, not both.");
  }
  if (inline === undefined && file === undefined) return new Map();
  let text: string;
  let source: string;
  if (file !== undefined) {
    source = `ROUTES_FILE (${file})`;
    if (options.readFile === undefined) {
      throw new ConfigError(`ROUTES_FILE is set but this environment cannot read files.`);
    }
    try {
      text = options.readFile(file);
    } catch (err) {
      const why = err instanceof Error ? err.name : "unreadable";
      throw new ConfigError(`ROUTES_FILE=${JSON.stringify(file)} cannot be read (${why}).`);
    }
  } else {
    source = "ROUTES";
    text = inline!;
  }
  return parseRoutesJson(text, source, defaults);
}

/** Parses the UID route table: `{"1": {"upstream": "...", "apiKey": "...", "accessKey": "..."}}`. */
export function parseRoutesJson(
  text: string,
  source: string,
  defaults: Upstream[],
): Map<string, Route> {
  const shape = `a JSON object such as {"1": {"upstream": "https://a2.example.com", ` +
    `"apiKey": "sk-...", "accessKey": "..."}}`;
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    throw new ConfigError(`${source} is not valid JSON: expected ${shape}.`);
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw new ConfigError(`${source} must be ${shape}.`);
  }
  const routes = new Map<string, Route>();
  for (const [id, spec] of Object.entries(data as Record<string, unknown>)) {
    const where = `${source} route "${id}"`;
    if (!/^\d{1,9}$/.test(id)) {
      throw new ConfigError(`${where}: route ids must be numbers (used as /u${"{id}"}/v1/...).`);
    }
    if (typeof spec !== "object" || spec === null || Array.isArray(spec)) {
      throw new ConfigError(`${where} must be an object with "upstream", "apiKey", "accessKey".`);
    }
    const s = spec as Record<string, unknown>;
    for (const key of Object.keys(s)) {
      if (!["upstream", "apiKey", "accessKey"].includes(key)) {
        throw new ConfigError(
          `${where}: unknown key "${key}" (allowed: upstream, apiKey, accessKey).`,
        );
      }
    }
    for (const key of ["upstream", "apiKey", "accessKey"]) {
      if (s[key] !== undefined && (typeof s[key] !== "string" || s[key] === "")) {
        throw new ConfigError(`${where}: "${key}" must be a non-empty string.`);
      }
    }
    const upstreams = typeof s.upstream === "string"
      ? parseUpstreamList(s.upstream, `${where} "upstream"`)
      : defaults;
    const apiKey = s.apiKey as string | undefined;
    const accessKey = s.accessKey as string | undefined;
    if (apiKey !== undefined && accessKey === undefined) {
      throw new ConfigError(
        `${where} has an "apiKey" but no "accessKey": anyone could use the key. Add an ` +
          `"accessKey" that clients must send instead.`,
      );
    }
    if (accessKey !== undefined && apiKey === undefined) {
      throw new ConfigError(
        `${where} has an "accessKey" but no "apiKey": the access key is swapped for the apiKey, ` +
          `so both are needed (or neither, to pass clients' own keys through).`,
      );
    }
    if (accessKey !== undefined && accessKey.length < 8) {
      throw new ConfigError(`${where}: "accessKey" must be at least 8 characters long.`);
    }
    const route: Route = apiKey !== undefined && accessKey !== undefined
      ? { id, upstreams, apiKey, accessKey }
      : { id, upstreams };
    routes.set(id, route);
  }
  return routes;
}
