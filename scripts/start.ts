/**
 * `deno task start`: runs the relay with the narrowest permissions its configuration allows.
 *
 * Reads the configuration exactly as the relay will, computes `--allow-net` (listen address and
 * upstream hosts only), read/write lists and `--unstable-kv` when needed, derives MAX_CONNECTIONS
 * from the descriptor limit when it is not set, then runs `deno run <those flags> main.ts` as a
 * child, passing signals (SIGTERM, SIGINT, SIGHUP) through and exiting with its status.
 * This launcher needs --allow-run to start Deno; the relay itself gets no run permission.
 */

import { ConfigError, parseConfig } from "../lib/config/mod.ts";
import { connectionCap, readFdLimit, ulimitHard } from "../lib/server/mod.ts";
import { Logger } from "../lib/observe/mod.ts";
import { relayDenoArgs } from "../lib/ops/mod.ts";

async function run(): Promise<number> {
  const env = Deno.env.toObject();
  let config;
  try {
    config = parseConfig(env, { readFile: (p) => Deno.readTextFileSync(p) });
  } catch (err) {
    if (err instanceof ConfigError) {
      // deno-lint-ignore no-console
      console.error(`proxy-forwarder: configuration error: ${err.message}`);
      return 2;
    }
    throw err;
  }
  const log = new Logger({ level: config.debugLog ? "debug" : "info" });
  const main = new URL("../main.ts", import.meta.url).pathname;
  const args = relayDenoArgs(config, env, main);
  const childEnv: Record<string, string> = {};
  if (config.maxConnections === 0) {
    // The child inherits this limit and, like every Deno process, raises its soft limit to it.
    const cap = connectionCap(0, readFdLimit(undefined, ulimitHard));
    childEnv.MAX_CONNECTIONS = String(cap.max);
  }
  log.info("starting relay with narrow permissions", {
    command: `deno ${args.join(" ")}`,
    ...(childEnv.MAX_CONNECTIONS ? { maxConnections: Number(childEnv.MAX_CONNECTIONS) } : {}),
  });
  log.flush();
  const child = new Deno.Command(Deno.execPath(), {
    args,
    env: childEnv,
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    try {
      Deno.addSignalListener(sig, () => {
        try {
          child.kill(sig);
        } catch { /* already exited */ }
      });
    } catch { /* signal not supported here */ }
  }
  const status = await child.status;
  return status.signal !== null ? 128 + (status.signal === "SIGTERM" ? 15 : 2) : status.code;
}

if (import.meta.main) Deno.exit(await run());
