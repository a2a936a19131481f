/**
 * proxy-forwarder entry point: environment → config → app → `Deno.serve`, plus signals.
 * Everything else lives in `lib/` and imports without side effects.
 */

import { createApp } from "./lib/app.ts";
import { ConfigError, parseConfig } from "./lib/config.ts";
import { Logger } from "./lib/log.ts";
import { VERSION } from "./lib/version.ts";

/** Starts the relay; resolves when the server has shut down. */
export async function main(): Promise<number> {
  let config;
  try {
    config = parseConfig(Deno.env.toObject(), { readFile: (p) => Deno.readTextFileSync(p) });
  } catch (err) {
    if (err instanceof ConfigError) {
      // deno-lint-ignore no-console
      console.error(`proxy-forwarder: configuration error: ${err.message}`);
      return 2;
    }
    throw err;
  }
  const log = new Logger({ level: config.debugLog ? "debug" : "info" });
  const app = createApp(config, { log });
  const server = Deno.serve({
    hostname: config.host,
    port: config.port,
    // DENO_SERVE_AUTOMATIC_COMPRESSION=1 would otherwise re-encode A's bodies.
    automaticCompression: false,
    onListen: (addr) => {
      log.info("listening", {
        version: VERSION,
        address: `http://${
          addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname
        }:${addr.port}`,
        upstreams: config.upstreams.map((u) => u.url),
        routes: config.routes.size,
      });
    },
    onError: (err) => {
      log.error("unhandled error", { detail: err instanceof Error ? err.message : String(err) });
      return new Response(
        JSON.stringify({
          error: {
            message: "Internal relay error.",
            type: "internal_server_error",
            code: "internal_error",
          },
        }),
        { status: 500, headers: { "content-type": "application/json" } },
      );
    },
  }, (req, info) => app.fetch(req, info));

  let stopping = false;
  const stop = (signal: Deno.Signal) => {
    if (stopping) {
      log.warn("second signal: exiting now", { signal });
      log.flush();
      Deno.exit(130);
    }
    stopping = true;
    log.info("shutting down", {
      signal,
      inFlight: app.inFlight,
      graceSec: config.shutdownGraceMs / 1000,
    });
    const timer = setTimeout(() => {
      log.warn("grace period over: closing remaining requests", { inFlight: app.inFlight });
      log.flush();
      Deno.exit(0);
    }, config.shutdownGraceMs);
    app.closeIdle();
    server.shutdown().then(() => {
      clearTimeout(timer);
      app.close();
      log.info("stopped");
      log.flush();
    });
  };
  for (const sig of ["SIGTERM", "SIGINT"] as const) Deno.addSignalListener(sig, () => stop(sig));
  await server.finished;
  return 0;
}

if (import.meta.main) {
  const code = await main();
  if (code !== 0) Deno.exit(code);
  Deno.exit(0);
}
