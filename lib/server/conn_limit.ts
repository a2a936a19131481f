/**
 * @module conn_limit
 * Surviving file-descriptor exhaustion: the connection cap and a listener that comes back.
 *
 * What Deno.serve does (2.9.6, measured): it has no accept hook and no connection count. When
 * `accept` fails with EMFILE ("Too many open files") its serve loop ends, `server.finished`
 * rejects and the listening socket is closed; connections already accepted keep being served to the
 * end. An unhandled rejection of `finished` kills the process, and with it every stream.
 *
 * Owns: `MAX_CONNECTIONS` (its default from the descriptor limit, leaving room for one upstream
 * socket per client plus a reserve) enforced as a cap on client requests in flight, answered with
 * 503 before anything is opened upstream; `MAX_CONNECTIONS_PER_IP` ({@link PerIpCap}, answered with
 * 429 `too_many_connections`), so that one address cannot take every slot; and
 * {@link serveResilient}, which serves like
 * `Deno.serve` but, when the serve loop dies on an accept error, logs it and listens again with
 * back-off while the requests in flight finish. Between the failure and the new listener, new
 * connections are refused by the kernel.
 * Must never: let a listener failure become an unhandled rejection, restart after `shutdown()`,
 * or do more than a counter comparison per request.
 */

import { type RelayError, relayError } from "../errors.ts";
import type { LogWriter } from "../observe/record.ts";

/** Descriptors kept back from the cap for the listener, logs, KV, TLS files and slack. */
export function fdReserve(fdLimit: number): number {
  return Math.max(64, Math.ceil(fdLimit / 20));
}

/**
 * The default `MAX_CONNECTIONS` for a descriptor limit: each streaming client needs two descriptors
 * (its own socket and one to Server A), after a reserve. Never below 1.
 */
export function defaultMaxConnections(fdLimit: number): number {
  return Math.max(1, Math.floor((fdLimit - fdReserve(fdLimit)) / 2));
}

/** Used when neither MAX_CONNECTIONS nor the descriptor limit is known. */
export const FALLBACK_MAX_CONNECTIONS = 4096;

/**
 * This process's open-files limit, or null when it cannot be found. Deno raises its soft limit to
 * the hard limit at start-up, so the hard limit is what counts. Read from `/proc/self/limits`
 * (Linux; Deno asks for `--allow-all` to read `/proc/self`), else from `ulimit`'s output when the
 * caller passes it ({@link ulimitHard}: `scripts/start_args.ts`, which may run `sh` and passes the
 * limit to the relay as `--fd-limit`; the relay itself may not run programs).
 */
export function readFdLimit(
  read: (path: string) => string = Deno.readTextFileSync,
  ulimit?: () => string,
): number | null {
  // Ask first: an ungranted read or run would prompt on a terminal.
  try {
    const state = Deno.permissions.querySync({ name: "read", path: "/proc/self/limits" }).state;
    const limit = state === "granted" ? parseFdLimit(read("/proc/self/limits")) : null;
    if (limit !== null) return limit;
  } catch { /* not Linux: try the shell */ }
  if (ulimit === undefined) return null;
  try {
    if (Deno.permissions.querySync({ name: "run", command: "sh" }).state !== "granted") return null;
    return parseUlimit(ulimit());
  } catch {
    return null;
  }
}

/** What `sh -c "ulimit -Hn"` prints: the hard open-files limit of a child, hence of this process. */
export function ulimitHard(): string {
  const out = new Deno.Command("sh", { args: ["-c", "ulimit -Hn"], stdout: "piped" }).outputSync();
  return new TextDecoder().decode(out.stdout);
}

/** The number `ulimit -Hn` printed, or null for `unlimited` or anything else. */
export function parseUlimit(text: string): number | null {
  const n = Number(text.trim());
  return /^\d+$/.test(text.trim()) && n > 0 ? n : null;
}

/**
 * The `--fd-limit=N` argument `deno task start` gives main.ts (the limit it read with `ulimit`),
 * or null when absent or not a positive integer.
 */
export function fdLimitArg(args: readonly string[]): number | null {
  const arg = args.findLast((a) => a.startsWith("--fd-limit="));
  return arg === undefined ? null : parseUlimit(arg.slice("--fd-limit=".length));
}

/** The hard "Max open files" value of a `/proc/<pid>/limits` text, or null. */
export function parseFdLimit(text: string): number | null {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(text);
  if (m === null) return null;
  const hard = m[2] === "unlimited" ? Infinity : Number(m[2]);
  const soft = m[1] === "unlimited" ? Infinity : Number(m[1]);
  const v = Math.max(soft, hard);
  return Number.isFinite(v) && v > 0 ? v : null;
}

/** Where the effective cap came from, for the start-up log. */
export interface ConnectionCap {
  max: number;
  source: "MAX_CONNECTIONS" | "descriptor limit" | "fallback";
  fdLimit: number | null;
}

/** Resolves the cap: the configured value, else derived from the descriptor limit, else fallback. */
export function connectionCap(configured: number, fdLimit: number | null): ConnectionCap {
  if (configured > 0) return { max: configured, source: "MAX_CONNECTIONS", fdLimit };
  if (fdLimit !== null) {
    return { max: defaultMaxConnections(fdLimit), source: "descriptor limit", fdLimit };
  }
  return { max: FALLBACK_MAX_CONNECTIONS, source: "fallback", fdLimit };
}

/** The 503 answered when the relay sheds a request. */
export function overloaded(): RelayError {
  return relayError("overloaded", { reason: "connections" });
}

/** The 429 answered to an address that already holds `MAX_CONNECTIONS_PER_IP` connections. */
export function tooManyConnections(max: number): RelayError {
  return relayError("too_many_connections", { max });
}

/**
 * Counts what each client address holds (sockets on the relay's own server, requests in flight on
 * `Deno.serve`) against `MAX_CONNECTIONS_PER_IP`. The address is the socket's peer: behind a
 * reverse proxy every client shares the proxy's address.
 */
export class PerIpCap {
  /** The cap; 0 = off (every take succeeds and nothing is counted). */
  readonly max: number;
  readonly #held = new Map<string, number>();

  constructor(max: number) {
    this.max = max;
  }

  /** Takes a slot for `ip`; false (nothing taken) when it already holds `max`. */
  take(ip: string): boolean {
    if (this.max <= 0) return true;
    const n = this.#held.get(ip) ?? 0;
    if (n >= this.max) return false;
    this.#held.set(ip, n + 1);
    return true;
  }

  /** Gives back a slot taken with {@link take}; call once per successful take. */
  release(ip: string): void {
    if (this.max <= 0) return;
    const n = this.#held.get(ip);
    if (n === undefined) return;
    // Addresses that hold nothing are forgotten: the map never grows with past clients.
    if (n <= 1) this.#held.delete(ip);
    else this.#held.set(ip, n - 1);
  }

  /** Slots `ip` holds now. */
  held(ip: string): number {
    return this.#held.get(ip) ?? 0;
  }

  /** Addresses holding at least one slot. */
  get addresses(): number {
    return this.#held.size;
  }
}

/**
 * Whether an error (or anything in its `cause` chain) is the process running out of descriptors,
 * e.g. opening the upstream connection failed with EMFILE. That is the relay's overload, not A
 * being unreachable, and is answered as such (503, not 502).
 */
export function isOutOfDescriptors(err: unknown): boolean {
  let e: unknown = err;
  for (let depth = 0; depth < 6 && e instanceof Error; depth++) {
    if (/too many open files|os error 24|\bEMFILE\b/i.test(e.message)) return true;
    e = e.cause;
  }
  return false;
}

/** What {@link serveResilient} adds to `Deno.serve`'s options. */
export interface ResilientOptions {
  /** Where listener failures and restarts are reported. */
  log?: LogWriter | undefined;
  /** First wait before listening again, ms (doubles up to `maxRetryMs`). Default 250. */
  retryMs?: number;
  /** Longest wait between attempts, ms. Default 4000. */
  maxRetryMs?: number;
}

/** The parts of `Deno.HttpServer` the relay uses, plus restart diagnostics. */
export interface ResilientServer {
  /** The address of the first listener; later listeners bind the same host and port. */
  readonly addr: Deno.NetAddr;
  /** Resolves after {@link shutdown} once every listener has finished. */
  readonly finished: Promise<void>;
  /** Stops accepting, lets requests in flight finish (on every listener, old and current). */
  shutdown(): Promise<void>;
}

/** `Deno.serve` TCP options (optionally with TLS `cert`/`key`) plus {@link ResilientOptions}. */
export type ResilientServeOptions =
  & Deno.ServeTcpOptions
  & Partial<Deno.TlsCertifiedKeyPem>
  & ResilientOptions;
type Handler = Deno.ServeHandler<Deno.NetAddr>;

/**
 * `Deno.serve` that survives its serve loop dying (e.g. on EMFILE): it logs the failure and
 * listens again on the same address, retrying with back-off until it can. Connections accepted by
 * an earlier listener keep being served. `onListen` runs for the first listener only.
 */
export function serveResilient(
  serveOptions: ResilientServeOptions,
  handler: Handler,
): ResilientServer {
  const { log, retryMs, maxRetryMs, ...options } = serveOptions;
  const baseDelay = retryMs ?? 250;
  const maxDelay = maxRetryMs ?? 4000;
  const servers: Deno.HttpServer<Deno.NetAddr>[] = [];
  let current: Deno.HttpServer<Deno.NetAddr> | null = null;
  let stopping = false;
  let restarts = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let resolveFinished!: () => void;
  const finished = new Promise<void>((r) => (resolveFinished = r));

  const first = Deno.serve(options, handler);
  const addr = first.addr;
  adopt(first);

  function adopt(server: Deno.HttpServer<Deno.NetAddr>): void {
    current = server;
    servers.push(server);
    server.finished.then(
      () => onEnd(server, null),
      (err) => onEnd(server, err),
    );
  }

  function onEnd(server: Deno.HttpServer<Deno.NetAddr>, err: unknown): void {
    if (stopping || server !== current) return;
    current = null;
    log?.error(
      "listener failed: new connections are refused until it is back; requests in " +
        "flight continue",
      {
        detail: err instanceof Error ? `${err.name}: ${err.message}` : "serve loop ended",
        hint: "raise the descriptor limit (systemd LimitNOFILE, docker --ulimit nofile) or lower " +
          "MAX_CONNECTIONS",
      },
    );
    schedule(baseDelay);
  }

  function schedule(delay: number): void {
    timer = setTimeout(() => {
      timer = undefined;
      if (stopping) return;
      try {
        const next = Deno.serve(
          { ...options, hostname: addr.hostname, port: addr.port, onListen: () => {} },
          handler,
        );
        restarts++;
        adopt(next);
        log?.warn("listening again", { restarts });
      } catch (err) {
        // Quiet while descriptors are short; anything else (e.g. no permission) is worth a line.
        const emfile = err instanceof Error && /too many open files/i.test(err.message);
        log?.[emfile ? "debug" : "warn"]("listening again failed; retrying", {
          detail: err instanceof Error ? `${err.name}: ${err.message.slice(0, 200)}` : "error",
          retryMs: Math.min(delay * 2, maxDelay),
        });
        schedule(Math.min(delay * 2, maxDelay));
      }
    }, delay);
  }

  return {
    addr,
    finished,
    async shutdown() {
      stopping = true;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      // Old listeners' connections are still being served: wait for them too.
      await Promise.all(servers.map((s) => s.shutdown().catch(() => {})));
      resolveFinished();
    },
  };
}
