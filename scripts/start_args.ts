/**
 * `deno task start`, first half: prints the `deno run` arguments (after `run`) that run the relay
 * with the narrowest permissions its configuration allows; the task hands them to the Deno that
 * runs main.ts (`deno run ... $(deno run ... scripts/start_args.ts)`).
 *
 * Reads the configuration exactly as the relay will and computes `--allow-net` (listen address
 * and upstream hosts only), the read/write lists and `--unstable-kv` when needed
 * (`relayDenoArgs`). The command goes to stderr as a log line; stdout carries only the arguments.
 *
 * Why not a launcher that spawns the relay and waits: it stayed resident as the relay's parent for
 * the relay's whole life, a second Deno: the task's processes held 118 MB of RSS (72 MB of PSS)
 * at idle, now 73 MB (56 MB). `deno task` already passes SIGTERM, SIGINT and SIGHUP to the relay
 * and exits with its status, so this script ends before the relay starts.
 *
 * The task shell splits the output at white space, with no quoting, and expands file patterns in
 * it, and Deno splits an allow list at commas, so a configured path with white space, a comma,
 * `*`, `?` or `[` in it is refused here. On any refusal the message goes to stderr and the
 * arguments printed run `start_failed.ts`, which exits with status 2 without starting the relay.
 */

import { ConfigError, parseConfig } from "../lib/config/mod.ts";
import { readFdLimit, ulimitHard } from "../lib/server/mod.ts";
import { Logger, stderrSink } from "../lib/observe/mod.ts";
import { readAllowList, relayDenoArgs, writeAllowList } from "../lib/ops/mod.ts";

/** What the task's `deno run` gets when the relay must not start: a script that exits with 2. */
export const FAILED_ARGS = ["--no-config", "scripts/start_failed.ts"];

/**
 * The arguments for `env`, or an error message for the user. `fdLimit` is the open-files limit
 * (null: unknown), passed on as `--fd-limit`: Deno lets no process read /proc/self/limits without
 * --allow-all, so this script asks `sh -c "ulimit -Hn"` and the relay, which may run nothing, is
 * told. (The task runs both with the same limits.)
 */
export function startArgs(
  env: Readonly<Record<string, string | undefined>>,
  readFile: (path: string) => string,
  fdLimit: number | null,
): { args: string[] } | { error: string } {
  let config;
  try {
    config = parseConfig(env, { readFile });
  } catch (err) {
    if (err instanceof ConfigError) return { error: `configuration error: ${err.message}` };
    throw err;
  }
  // Deno splits an allow list at commas, and the task shell splits the arguments at white space
  // and expands `*`, `?` and `[` in them as file patterns: any of these in a path would grant
  // other paths than the one configured.
  const bad = [...readAllowList(config, env), ...writeAllowList(config)].find((p) =>
    /[\s,*?[]/.test(p)
  );
  if (bad !== undefined) {
    return {
      error: `deno task start cannot grant access to a path with a comma, white space, "*", "?" ` +
        `or "[" in it (${JSON.stringify(bad)}): rename or move the file`,
    };
  }
  const args = relayDenoArgs(config, env, "main.ts").slice(1);
  if (config.maxConnections === 0 && fdLimit !== null) args.push(`--fd-limit=${fdLimit}`);
  return { args };
}

if (import.meta.main) {
  const result = startArgs(
    Deno.env.toObject(),
    (p) => Deno.readTextFileSync(p),
    readFdLimit(undefined, ulimitHard),
  );
  if ("error" in result) {
    // deno-lint-ignore no-console
    console.error(`proxy-forwarder: ${result.error}`);
  } else {
    const log = new Logger({ sink: stderrSink });
    log.info("starting relay with narrow permissions", {
      command: `deno run --no-prompt --env-file=.env ${result.args.join(" ")}`,
    });
    log.flush();
  }
  // deno-lint-ignore no-console
  console.log(("args" in result ? result.args : FAILED_ARGS).join(" "));
}
