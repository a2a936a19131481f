/**
 * proxy-forwarder entry point: environment -> config -> relay (`createRelay`, `serveRelay`), plus
 * start-up errors, signals, shutdown and reload.
 * Everything else lives in `lib/` and imports without side effects.
 */

import { createRelay, type Relay, serveRelay } from "./lib/relay.ts";
import { ConfigError, parseConfig } from "./lib/config/mod.ts";
import { fdLimitArg, type Listener } from "./lib/server/mod.ts";
import { broadPermissions, exposedGc, startIdleGc, startupWarnings } from "./lib/ops/mod.ts";
import { createReloader } from "./lib/config/mod.ts";
import { loadTlsFiles } from "./lib/config/mod.ts";
import { VERSION } from "./lib/observe/mod.ts";

/** Starts the relay; resolves when the server has shut down. */
export async function main(): Promise<number> {
  const startEnv = Deno.env.toObject();
  const readFile = (p: string) => Deno.readTextFileSync(p);
  let config;
  let tls;
  let relay: Relay;
  try {
    config = parseConfig(startEnv, { readFile });
    tls = loadTlsFiles(config, readFile);
    relay = createRelay(config, { fdLimit: fdLimitArg(Deno.args) });
  } catch (err) {
    if (err instanceof ConfigError) {
      // deno-lint-ignore no-console
      console.error(`proxy-forwarder: configuration error: ${err.message}`);
      return 2;
    }
    throw err;
  }
  const { app, log, accessLog } = relay;

  const gc = exposedGc();
  for (const w of startupWarnings(config, broadPermissions(), gc !== null)) {
    log.warn(w.msg, w.fields);
  }

  // V8 gives its heap back after traffic only once a full collection re-armed it (ops/idle_gc.ts).
  const idleGc = gc === null
    ? null
    : startIdleGc({ requests: () => app.counters.requests, inFlight: () => app.inFlight, gc });

  // The relay's own server (header and idle timeouts, socket cap), plain HTTP or TLS.
  // HTTP_SERVER=deno: Deno.serve, re-created if it dies on "too many open files" (listen.ts).
  let server: Listener;
  try {
    server = serveRelay(relay, config, {
      // TLS_CERT_FILE/TLS_KEY_FILE: HTTPS (HTTP/2 offered to clients only by Deno.serve).
      tls,
      onListen: (addr) => {
        log.info("listening", {
          version: VERSION,
          address: `${tls ? "https" : "http"}://${
            addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname
          }:${addr.port}`,
          server: config.httpServer === "deno" ? "Deno.serve" : "relay",
          upstreams: config.upstreams.map((u) => u.url),
          routes: config.routes.size,
        });
      },
    });
  } catch (err) {
    const where = `${config.host}:${config.port}`;
    const why = err instanceof Deno.errors.AddrInUse
      ? "the port is already in use (another relay?): stop it or set PORT to a free port"
      : err instanceof Deno.errors.PermissionDenied
      ? "permission denied (ports below 1024 need privileges): use a port such as 8000"
      : err instanceof Deno.errors.AddrNotAvailable
      ? "no such address on this machine: check HOST"
      : null;
    if (why === null) throw err;
    app.close();
    // deno-lint-ignore no-console
    console.error(`proxy-forwarder: cannot listen on ${where}: ${why}.`);
    return 2;
  }

  let stopping = false;
  let stopped: Promise<void> | null = null;
  const stop = (signal: Deno.Signal) => {
    if (stopping) {
      log.warn("second signal: exiting now", { signal });
      accessLog?.flushSync();
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
      accessLog?.flushSync();
      log.flush();
      Deno.exit(0);
    }, config.shutdownGraceMs);
    app.closeIdle();
    stopped = server.shutdown().then(async () => {
      clearTimeout(timer);
      idleGc?.stop();
      app.close();
      await accessLog?.close();
      log.info("stopped");
      log.flush();
    });
  };
  for (const sig of ["SIGTERM", "SIGINT"] as const) Deno.addSignalListener(sig, () => stop(sig));
  if (Deno.build.os !== "windows") {
    // SIGHUP (systemctl reload, docker kill -s HUP): re-read .env and ROUTES_FILE; a bad file
    // keeps the running configuration. Connections and requests in flight are not touched.
    const reload = createReloader({
      startEnv,
      envFile: ".env",
      readFile,
      apply: (next) => app.reload(next),
      log,
    });
    Deno.addSignalListener("SIGHUP", () => void reload());
    // logrotate's postrotate `kill -HUP` too: reopen LOG_FILE by name.
    const logFile = config.logFile !== undefined ? accessLog : null;
    if (logFile) Deno.addSignalListener("SIGHUP", () => void logFile.reopen());
  }
  await server.finished;
  // `finished` resolves before shutdown()'s own continuation: let it flush the logs first.
  if (stopped !== null) await stopped;
  return 0;
}

if (import.meta.main) {
  const code = await main();
  if (code !== 0) Deno.exit(code);
  Deno.exit(0);
}
