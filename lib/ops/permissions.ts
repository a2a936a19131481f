/**
 * @module permissions
 * Least privilege: the narrow Deno permissions the relay needs for a given configuration, and the
 * start-up warnings about running with more (or listening openly).
 *
 * Owns: the `--allow-net` list (the listen address plus every configured upstream host:port, and a
 * remote KV host when one is used), the read/write lists (routes file, TLS files, log file, KV
 * file), the `deno run` argument list `deno task start` uses (`scripts/start_args.ts`, with the
 * relay's V8 setting), and the detection of `-A`.
 * Must never: grant a host that is not in the configuration, or put a secret (keys, tokens) into an
 * argument list or a warning.
 */

import type { Config, Upstream } from "../config/mod.ts";
import { isPublicBindAddress } from "../config/mod.ts";

/** `host:port` as `--allow-net` expects it (IPv6 literals in brackets). */
export function netEntry(host: string, port: number): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}

function upstreamEntries(ups: readonly Upstream[]): string[] {
  return ups.map((u) => netEntry(u.hostname, u.port));
}

/** Hosts the relay may reach or bind: listen address, upstreams, remote KV. Deduplicated, sorted. */
export function netAllowList(config: Config): string[] {
  // PORT=0 (tests) picks a port at start-up; a listener re-created after a failure must get the
  // same one back, so the whole host is allowed then.
  const listen = config.port === 0
    ? netEntry(config.host, 0).replace(/:0$/, "")
    : netEntry(config.host, config.port);
  const out = new Set<string>([listen]);
  for (const e of upstreamEntries(config.upstreams)) out.add(e);
  for (const r of config.routes.values()) for (const e of upstreamEntries(r.upstreams)) out.add(e);
  const kv = remoteKv(config);
  if (kv !== null) out.add(netEntry(kv.hostname, kv.port));
  return [...out].sort();
}

function remoteKv(config: Config): { hostname: string; port: number } | null {
  const url = config.rateLimit !== null && config.rateLimitStore === "kv"
    ? config.rateLimitKvUrl
    : undefined;
  if (url === undefined || !/^https?:\/\//i.test(url)) return null;
  try {
    const u = new URL(url);
    const hostname = u.hostname.startsWith("[") ? u.hostname.slice(1, -1) : u.hostname;
    return { hostname, port: u.port !== "" ? Number(u.port) : u.protocol === "https:" ? 443 : 80 };
  } catch {
    return null;
  }
}

function localKvPath(config: Config): string | null {
  const path = config.rateLimit !== null && config.rateLimitStore === "kv"
    ? config.rateLimitKvUrl
    : undefined;
  if (path === undefined || /^https?:\/\//i.test(path) || path === ":memory:") return null;
  return path;
}

/** Files the relay reads: `.env` (re-read on SIGHUP), routes file, TLS files, the KV file. */
export function readAllowList(
  config: Config,
  env: Readonly<Record<string, string | undefined>>,
): string[] {
  const out: string[] = [".env"];
  const routesFile = env.ROUTES_FILE?.trim();
  if (routesFile) out.push(routesFile);
  if (config.tlsCertFile !== undefined) out.push(config.tlsCertFile);
  if (config.tlsKeyFile !== undefined) out.push(config.tlsKeyFile);
  const kv = localKvPath(config);
  if (kv !== null) out.push(kv);
  return [...new Set(out)];
}

/** Files the relay writes: the access-log file and the KV file. */
export function writeAllowList(config: Config): string[] {
  const out: string[] = [];
  if (config.logFile !== undefined) out.push(config.logFile);
  const kv = localKvPath(config);
  if (kv !== null) out.push(kv);
  return [...new Set(out)];
}

/** Whether the relay needs Deno KV (and so `--unstable-kv`). */
export function needsKv(config: Config): boolean {
  return config.rateLimit !== null && config.rateLimitStore === "kv";
}

/**
 * The V8 settings every way of starting the relay passes (`deno task start`, the Dockerfile, the
 * systemd unit, `deno task compile`; Deno Deploy takes no flags).
 *
 * `--initial-old-space-size=64`: an old generation of 64 MB from
 * the start: while hundreds of streams open, V8 otherwise runs a full mark-compact each time the
 * streams' state outgrows a limit set just above the relay's few idle megabytes, 13-15 times in a
 * 4-round `bench/sse_cpu.ts` run against 2. Measured (docs/BENCHMARKS_LOG.md, eighth sitting): CPU
 * per SSE event 1.50 x deno-minimal against 1.73 x, and 1.72 x against 1.77 x in a second run; p99
 * event delay lower in 5 of 6 rounds both times; CPU per short request no higher (0.98 and
 * 0.89 x in paired runs; 0.91 x at 1 MB bodies); memory per stream at 5,000 streams and idle RSS
 * within noise. The price: garbage now waits for the larger limit, so
 * RSS under load is higher (~20 MB after a c=50 load, up to ~40 MB at 1,000 streams).
 *
 * `--no-concurrent-recompilation`: hot functions are optimised on the main thread, not on V8's
 * helper thread. The helper's compilations left ~17 MB freed but never returned in a glibc arena of
 * its own (`malloc_stats`: 17.6 MB held, 0.15 MB in use; only `malloc_trim` gives it back, which
 * the relay cannot call), so after a burst of traffic RSS settled at ~75 MiB; with the flag ~59
 * (docs/BENCHMARKS_LOG.md, fourteenth sitting). Measured with the relay on one core, where the
 * helper shared that core anyway: CPU per request and per SSE event within noise, and a fresh
 * relay's first 3,000 requests at c=1 took 1.08 s against 1.21 s (slowest 16 against 13 ms). With
 * a spare core, the warm-up's compilations now wait on the main thread instead of running beside it.
 *
 * `--expose-gc`: gives the relay V8's `gc`, which `idle_gc.ts` calls once when the relay goes idle
 * after traffic, so that the heap is given back on the `Deno.serve` path too (~115 -> ~61 MiB).
 */
export const RELAY_V8_FLAGS =
  "--v8-flags=--initial-old-space-size=64,--no-concurrent-recompilation,--expose-gc";

/**
 * The other runtime flag every way of starting the relay passes (the same ones as
 * {@link RELAY_V8_FLAGS}). Deno keeps V8's compiled code of every module it ran in a cache under
 * DENO_DIR and loads all of it at each start; compiled from source instead, only what runs, the
 * relay starts ~1.3 MiB smaller (12 s after start, four alternating starts: 46.9-47.2 against
 * 48.2-48.8 MiB RSS; 0.5 of it its own memory, the rest the cache's mapped file), ~13 ms slower, and
 * with the same CPU per request under load (docs/BENCHMARKS_LOG.md, thirteenth sitting). It also
 * makes idle memory the same whether or not the cache was written, e.g. in a new container.
 */
export const RELAY_NO_CODE_CACHE = "--no-code-cache";

/**
 * The `deno` arguments that run `main` with only the permissions `config` needs: `--allow-net`
 * for the listen address and upstreams, `--allow-env`, read/write for the files it uses.
 * A path with a comma in it cannot be expressed; `scripts/start_args.ts` refuses it.
 */
export function relayDenoArgs(
  config: Config,
  env: Readonly<Record<string, string | undefined>>,
  main: string,
): string[] {
  // The relay reads nothing from deno.json (its imports are relative or `node:`), and the npm
  // packages listed there for the tests would start Deno's npm resolver: ~1.4 MB at idle.
  const args = [
    "run",
    "--no-config",
    RELAY_NO_CODE_CACHE,
    "--unstable-no-legacy-abort",
    RELAY_V8_FLAGS,
  ];
  if (needsKv(config)) args.push("--unstable-kv");
  args.push(`--allow-net=${netAllowList(config).join(",")}`, "--allow-env");
  const read = readAllowList(config, env);
  if (read.length > 0) args.push(`--allow-read=${read.join(",")}`);
  const write = writeAllowList(config);
  if (write.length > 0) args.push(`--allow-write=${write.join(",")}`);
  args.push(main);
  return args;
}

/**
 * Permissions the relay never needs (non-empty when started with `-A`). Unscoped `--allow-net`
 * alone is not reported: Docker and systemd use it on purpose, with their own sandbox around.
 */
export function broadPermissions(
  query: (d: Deno.PermissionDescriptor) => Deno.PermissionState = (d) =>
    Deno.permissions.querySync(d).state,
): string[] {
  const probes: Array<[string, Deno.PermissionDescriptor]> = [
    ["run", { name: "run" }],
    ["ffi", { name: "ffi" }],
    ["write", { name: "write" }],
  ];
  return probes.filter(([, d]) => {
    try {
      return query(d) === "granted";
    } catch {
      return false;
    }
  }).map(([name]) => name);
}

/** A start-up warning: a message and safe fields. */
export interface Warning {
  msg: string;
  fields: Record<string, unknown>;
}

/**
 * Warnings to log once at start-up: broad permissions, a relay started without its V8 flags
 * (`gcExposed` false: V8's `gc`, which only {@link RELAY_V8_FLAGS} gives, is missing), and an open
 * relay on a public address.
 */
export function startupWarnings(
  config: Config,
  broad: readonly string[],
  gcExposed: boolean,
): Warning[] {
  const out: Warning[] = [];
  if (broad.length > 0) {
    out.push({
      msg: "running with broad permissions: start with `deno task start` (narrow --allow-net, " +
        "no run/ffi/write) or run the command below",
      fields: {
        broad,
        narrow: `deno ${relayDenoArgs(config, {}, "main.ts").join(" ")}`,
      },
    });
  }
  if (!gcExposed) {
    // Of the three flags only --expose-gc can be seen from inside; they are always passed together.
    out.push({
      msg: "started without the relay's V8 flags: memory after traffic stays higher (~75 MiB " +
        "instead of ~60, ~115 on Deno.serve); add them to your `deno run` line, or start " +
        "with `deno task start`, the Docker image or the systemd unit (docs/DEPLOY.md)",
      fields: { flags: RELAY_V8_FLAGS },
    });
  }
  if (config.tlsCertFile !== undefined && config.httpServer === "deno") {
    // Deno 2.9.6 leaves Nagle on for sockets accepted with TLS and has no way to turn it off
    // (measured: bench/tls_delay.ts, docs/BENCHMARKS.md).
    out.push({
      msg: "TLS on Deno.serve (HTTP_SERVER=deno) is slower: Deno keeps Nagle's algorithm on for " +
        "these sockets, so an HTTP/1.1 client waits ~40 ms more for each answer with " +
        "content-length and some stream events wait up to 40 ms; unset HTTP_SERVER (the relay's " +
        "own server serves TLS without it) or terminate TLS in a reverse proxy (docs/DEPLOY.md)",
      fields: { tlsCertFile: config.tlsCertFile },
    });
  }
  const anyAccessKey = [...config.routes.values()].some((r) => r.accessKey !== undefined);
  if (isPublicBindAddress(config.host) && config.allowIps === null && !anyAccessKey) {
    out.push({
      msg: "OPEN RELAY: listening on a public address with neither ALLOW_IPS nor any route " +
        "access key; anyone who can reach this port can use Server A through it. Set ALLOW_IPS, " +
        "give routes an accessKey, or bind HOST=127.0.0.1 behind your reverse proxy",
      fields: { host: config.host, port: config.port },
    });
  }
  return out;
}
