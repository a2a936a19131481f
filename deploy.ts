/**
 * Deno Deploy entry (also `deno serve deploy.ts`): `export default { fetch }`.
 *
 * The relay is built from `Deno.env` alone on the first request. Deploy listens and terminates
 * TLS itself, so HOST, PORT, TLS_CERT_FILE and TLS_KEY_FILE are ignored; LOG_FILE is ignored too
 * (access log lines go to the platform's log; nothing is written to disk). With RATE_LIMIT set,
 * buckets live in Deno KV unless RATE_LIMIT_STORE says otherwise, since Deploy runs several
 * isolates that do not share memory. There is no SIGHUP: redeploy (or change the environment,
 * which restarts the isolates) to change the configuration.
 */

import { createRelay, type Relay } from "./lib/relay.ts";
import { ConfigError, type Env, parseConfig } from "./lib/config/mod.ts";
import { Logger } from "./lib/observe/mod.ts";
import { VARS } from "./lib/config/mod.ts";

/** Variables that have no meaning on Deno Deploy; they are dropped before parsing. */
export const IGNORED_ON_DEPLOY: readonly string[] = VARS.filter((v) => v.notOnDeploy).map((v) =>
  v.name
);

/** The environment as the relay sees it on Deno Deploy (pure: tests call it with plain objects). */
export function deployEnv(env: Env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    if (v !== undefined && !IGNORED_ON_DEPLOY.includes(k)) out[k] = v;
  }
  const rate = out.RATE_LIMIT?.trim().toLowerCase();
  if (rate && rate !== "0" && rate !== "off" && !out.RATE_LIMIT_STORE) out.RATE_LIMIT_STORE = "kv";
  return out;
}

let built: { relay: Relay | null } | null = null;
const log = new Logger();

function build(): { relay: Relay | null } {
  const env = Deno.env.toObject();
  const ignored = IGNORED_ON_DEPLOY.filter((k) => env[k] !== undefined && env[k] !== "");
  try {
    // ROUTES_FILE may name a file deployed with the code (read-only); nothing is ever written.
    const config = parseConfig(deployEnv(env), { readFile: (p) => Deno.readTextFileSync(p) });
    const relay = createRelay(config, { log });
    log.info("relay ready (Deno Deploy entry)", {
      upstreams: config.upstreams.map((u) => u.url),
      routes: config.routes.size,
      ...(ignored.length > 0 ? { ignored } : {}),
    });
    return { relay };
  } catch (err) {
    // The operator reads this in the deployment's logs; clients get a generic answer.
    log.error("configuration error", {
      detail: err instanceof ConfigError ? err.message : String(err),
    });
    return { relay: null };
  }
}

const NOT_CONFIGURED = JSON.stringify({
  error: {
    message: "The relay is not configured yet; see the deployment's logs.",
    type: "service_unavailable_error",
    code: "not_configured",
  },
});

/** The request handler Deno Deploy (and `deno serve`) call. */
export function handle(req: Request, info?: Deno.ServeHandlerInfo): Promise<Response> {
  built ??= build();
  if (built.relay === null) {
    return Promise.resolve(
      new Response(NOT_CONFIGURED, {
        status: 503,
        headers: { "content-type": "application/json; charset=utf-8" },
      }),
    );
  }
  const addr = info?.remoteAddr as Deno.NetAddr | undefined;
  return built.relay.app.fetch(req, { remoteAddr: { hostname: addr?.hostname ?? "0.0.0.0" } });
}

/** Drops the built relay (tests; the next request builds a new one from the environment). */
export async function resetForTests(): Promise<void> {
  const b = built;
  built = null;
  b?.relay?.app.close();
  await b?.relay?.accessLog?.close();
}

export default { fetch: handle } satisfies Deno.ServeDefaultExport;
