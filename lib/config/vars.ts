/**
 * @module vars
 * The one list of the relay's environment variables: name, default, the `Config` setting it
 * feeds, whether a reload (SIGHUP) applies it live, and whether it means anything on Deno
 * Deploy. `parseConfig` takes its defaults from here; reload and the Deploy entry derive their
 * lists from it, so a new variable is added in one place.
 *
 * Pure data: no I/O. Must never: hold a secret's value (secrets have no default).
 */

/** One environment variable. */
export interface Var {
  readonly name: string;
  /** The value used when the variable is unset or empty, written as in `.env`; none = unset. */
  readonly default?: string;
  /** The `Config` field it feeds (a string, so this leaf imports nothing; a test checks them). */
  readonly setting: string;
  /**
   * A reload applies it to new requests at once: the app reads it from the current config when a
   * request arrives, so a request already in flight keeps the values it started with. Any other
   * setting needs a restart.
   */
  readonly live?: true;
  /** Meaningless on Deno Deploy, which listens, terminates TLS and writes no files itself. */
  readonly notOnDeploy?: true;
}

/** Every variable `parseConfig` reads, in the order of `.env.example`'s sections. */
export const VARS: readonly Var[] = [
  { name: "UPSTREAM_SERVER_A", setting: "upstreams", live: true },
  { name: "ROUTES", setting: "routes", live: true },
  { name: "ROUTES_FILE", setting: "routes", live: true },
  { name: "HOST", default: "0.0.0.0", setting: "host", notOnDeploy: true },
  { name: "PORT", default: "8000", setting: "port", notOnDeploy: true },
  { name: "DEBUG_LOG", default: "0", setting: "debugLog" },
  { name: "UPSTREAM_TIMEOUT_SEC", default: "600", setting: "upstreamTimeoutMs" },
  { name: "CONNECT_TIMEOUT_SEC", default: "10", setting: "connectTimeoutMs" },
  { name: "SHUTDOWN_GRACE_SEC", default: "30", setting: "shutdownGraceMs" },
  { name: "RETRY_BODY_MAX_MB", default: "8", setting: "retryBodyMaxBytes", live: true },
  { name: "UPSTREAM_POOL_IDLE_SEC", default: "4", setting: "poolIdleMs" },
  // Upstream health and keep-warm.
  { name: "UPSTREAM_KEEPWARM_SEC", default: "2", setting: "keepWarmMs" },
  { name: "UPSTREAM_SPARE_CONNECTIONS", default: "1", setting: "spareConnections" },
  { name: "HEALTH_CHECK_PATH", default: "/v1/_ping", setting: "healthPath" },
  { name: "HEALTH_CHECK_SEC", default: "5", setting: "healthIntervalMs" },
  { name: "UPSTREAM_DOWN_SEC", default: "10", setting: "downBackoffMs" },
  { name: "UPSTREAM_HTTP2", default: "auto", setting: "upstreamHttp2" },
  // Access control and limits.
  { name: "ALLOW_IPS", setting: "allowIps", live: true },
  { name: "TRUSTED_PROXIES", setting: "trustedProxies", live: true },
  { name: "RATE_LIMIT", setting: "rateLimit" },
  { name: "RATE_LIMIT_STORE", default: "memory", setting: "rateLimitStore" },
  { name: "RATE_LIMIT_KV_URL", setting: "rateLimitKvUrl" },
  { name: "MAX_CONCURRENT_PER_CLIENT", default: "0", setting: "maxConcurrentPerClient" },
  { name: "MAX_BODY_MB", default: "100", setting: "maxBodyBytes", live: true },
  { name: "CLIENT_BODY_TIMEOUT_SEC", default: "60", setting: "clientBodyTimeoutMs" },
  { name: "MAX_CONNECTIONS", default: "0", setting: "maxConnections", notOnDeploy: true },
  {
    name: "MAX_CONNECTIONS_PER_IP",
    default: "0",
    setting: "maxConnectionsPerIp",
    notOnDeploy: true,
  },
  { name: "HTTP_SERVER", default: "relay", setting: "httpServer" },
  { name: "CLIENT_HEADER_TIMEOUT_SEC", default: "20", setting: "clientHeaderTimeoutMs" },
  { name: "CLIENT_IDLE_TIMEOUT_SEC", default: "75", setting: "clientIdleTimeoutMs" },
  { name: "CLIENT_SEND_TIMEOUT_SEC", default: "60", setting: "clientSendTimeoutMs" },
  { name: "ADMIN_TOKEN", setting: "adminToken", live: true },
  // Observability.
  { name: "ACCESS_LOG", default: "1", setting: "accessLog" },
  { name: "LOG_FORMAT", default: "json", setting: "logFormat" },
  { name: "LOG_FILE", setting: "logFile", notOnDeploy: true },
  // Serving.
  { name: "TLS_CERT_FILE", setting: "tlsCertFile", notOnDeploy: true },
  { name: "TLS_KEY_FILE", setting: "tlsKeyFile", notOnDeploy: true },
];

const BY_NAME = new Map(VARS.map((v) => [v.name, v]));

/** The default of a variable, as written in `.env`; undefined when it has none. */
export function defaultOf(name: string): string | undefined {
  const v = BY_NAME.get(name);
  if (v === undefined) throw new Error(`${name} is not in VARS`);
  return v.default;
}
