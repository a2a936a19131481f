/**
 * @module reload
 * Configuration reload on SIGHUP: re-read `.env` and `ROUTES_FILE`, validate, swap.
 *
 * Owns: which settings a running relay takes over live (those the app reads per request: routes
 * and upstreams above all) and which need a restart; how a fresh `.env` is merged with the
 * environment the process started with (a variable set in the real environment keeps winning,
 * as with `--env-file`); the log lines an operator sees.
 * Must never: apply half of a bad configuration (a file that fails validation changes nothing),
 * or log a secret (messages come from `ConfigError`, which never quotes keys).
 */

import { type Config, ConfigError, type Env, parseConfig } from "./config.ts";
import { parseDotenv } from "./dotenv.ts";
import { VARS } from "./vars.ts";

/** Settings a reload applies to new requests at once (`live` in {@link VARS}). */
export const LIVE_SETTINGS: ReadonlySet<keyof Config> = new Set(
  VARS.filter((v) => v.live).map((v) => v.setting as keyof Config),
);

/** Operator-facing name of each setting, for log lines: `ROUTES/ROUTES_FILE` for two. */
const SETTING_NAMES: Readonly<Record<string, string>> = (() => {
  const out: Record<string, string> = {};
  for (const v of VARS) out[v.setting] = out[v.setting] ? `${out[v.setting]}/${v.name}` : v.name;
  return out;
})();
import type { LogWriter } from "../observe/record.ts";

/** The outcome of {@link planReload}. */
export interface ReloadPlan {
  /** The config to use from now on: live settings from the new one, the rest unchanged. */
  config: Config;
  /** Live settings that changed (operator names). */
  applied: string[];
  /** Settings that changed but only take effect after a restart (operator names). */
  needsRestart: string[];
}

/** Splits the differences between two configs into live ones and ones that need a restart. */
export function planReload(
  current: Config,
  next: Config,
  live: ReadonlySet<keyof Config> = LIVE_SETTINGS,
): ReloadPlan {
  const merged: Record<string, unknown> = { ...current };
  const applied: string[] = [];
  const needsRestart: string[] = [];
  const keys = new Set([...Object.keys(current), ...Object.keys(next)]) as Set<keyof Config>;
  for (const key of keys) {
    if (sameValue(current[key], next[key])) continue;
    const name = SETTING_NAMES[key] ?? key;
    if (live.has(key)) {
      merged[key] = next[key];
      applied.push(name);
    } else {
      needsRestart.push(name);
    }
  }
  return { config: merged as unknown as Config, applied, needsRestart };
}

/** Structural equality for config values: primitives, arrays, Maps and plain or class objects. */
export function sameValue(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  if (a instanceof Map) {
    const m = b as Map<unknown, unknown>;
    if (a.size !== m.size) return false;
    for (const [k, v] of a) if (!m.has(k) || !sameValue(v, m.get(k))) return false;
    return true;
  }
  if (Array.isArray(a)) {
    const l = b as unknown[];
    return a.length === l.length && a.every((v, i) => sameValue(v, l[i]));
  }
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  const ra = a as Record<string, unknown>;
  const rb = b as Record<string, unknown>;
  return ka.every((k) => Object.hasOwn(rb, k) && sameValue(ra[k], rb[k]));
}

/**
 * The environment for a reload. `startEnv` is the process environment at start, which already
 * contains what `--env-file` (or systemd's `EnvironmentFile`) loaded from `startFile`. A variable
 * whose start value equals the file's value is taken to come from the file: it follows the new
 * file (changed, or removed when the file drops it). Any other variable came from the real
 * environment and keeps its value, as `--env-file` never overrides one.
 */
export function envForReload(
  startEnv: Env,
  startFile: Readonly<Record<string, string>> | null,
  newFile: Readonly<Record<string, string>> | null,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(startEnv)) if (v !== undefined) out[k] = v;
  const fromFile = (k: string) => startFile !== null && startFile[k] === startEnv[k];
  if (startFile !== null) {
    for (const k of Object.keys(startFile)) if (fromFile(k)) delete out[k];
  }
  if (newFile !== null) {
    for (const [k, v] of Object.entries(newFile)) {
      if (startEnv[k] === undefined || fromFile(k)) out[k] = v;
    }
  }
  return out;
}

/** What a reload did, for tests and logs. */
export type ReloadOutcome =
  | { ok: true; plan: ReloadPlan }
  | { ok: false; reason: string };

/** Everything a reloader needs; all injectable. */
export interface ReloaderOptions {
  /** The process environment at start (`Deno.env.toObject()`). */
  startEnv: Env;
  /** The `.env` file to re-read (relative to the working directory); null to ignore `.env`. */
  envFile: string | null;
  readFile: (path: string) => string;
  /** Swaps the running app's config (`app.reload`). */
  apply: (next: Config) => ReloadPlan;
  log: LogWriter;
  /**
   * Whether this process may connect to `host:port`. Network permissions are fixed at start
   * (`deno task start` allows only the configured upstreams), so a reload naming a new host would
   * only produce 502s. Defaults to asking Deno's permission state.
   */
  canConnect?: (hostname: string, port: number) => boolean;
}

function mayConnect(hostname: string, port: number): boolean {
  try {
    const host = hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`;
    return Deno.permissions.querySync({ name: "net", host }).state === "granted";
  } catch {
    return false;
  }
}

/**
 * Returns the SIGHUP handler: re-reads `.env` and `ROUTES_FILE`, validates everything, and either
 * swaps the config for new requests or keeps the old one and logs why.
 */
export function createReloader(options: ReloaderOptions): () => ReloadOutcome {
  const { startEnv, envFile, readFile, apply, log } = options;
  const canConnect = options.canConnect ?? mayConnect;
  const lookup = (name: string) => startEnv[name];
  /** Why `.env` could not be read, when it exists but is off limits (e.g. NotCapable). */
  let unreadable: string | null = null;
  const readEnvFile = (): Record<string, string> | null => {
    unreadable = null;
    if (envFile === null) return null;
    try {
      return parseDotenv(readFile(envFile), lookup);
    } catch (err) {
      // No .env (Docker, Deno Deploy, a systemd EnvironmentFile elsewhere): environment only.
      if (!(err instanceof Deno.errors.NotFound)) {
        unreadable = err instanceof Error ? err.name : "error";
      }
      return null;
    }
  };
  const startFile = readEnvFile();
  return () => {
    const newFile = readEnvFile();
    if (unreadable !== null) {
      log.warn(".env cannot be read: reloading with the environment the relay started with", {
        file: envFile,
        reason: unreadable,
      });
    }
    const env = envForReload(startEnv, startFile, newFile);
    let next: Config;
    try {
      next = parseConfig(env, { readFile });
    } catch (err) {
      const reason = err instanceof ConfigError ? err.message : "unexpected error";
      log.warn("reload failed: keeping the current configuration", { reason });
      return { ok: false, reason };
    }
    const all = [...next.upstreams, ...[...next.routes.values()].flatMap((r) => r.upstreams)];
    const blocked = all.find((u) => !canConnect(u.hostname, u.port));
    if (blocked !== undefined) {
      const reason = `${blocked.url} is not reachable under this process's network permissions ` +
        "(fixed at start): restart the relay to use a new upstream host";
      log.warn("reload failed: keeping the current configuration", { reason });
      return { ok: false, reason };
    }
    const plan = apply(next);
    log.info("configuration reloaded", {
      upstreams: plan.config.upstreams.map((u) => u.url),
      routes: plan.config.routes.size,
      changed: plan.applied,
      ...(plan.needsRestart.length > 0 ? { needsRestart: plan.needsRestart } : {}),
    });
    if (plan.needsRestart.length > 0) {
      log.warn("some changed settings need a restart to take effect", {
        settings: plan.needsRestart,
      });
    }
    return { ok: true, plan };
  };
}
