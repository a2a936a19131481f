/// <reference lib="deno.unstable" />
/**
 * @module guards
 * The checks a forwarded request passes before it may reach Server A: client identity and
 * allow-list, header-section size, the lockout after repeated bad access keys, the per-client rate
 * limit and the per-client concurrency cap.
 *
 * Owns: which key a client is counted under (a SHA-256 digest of the UID route's access key when
 * the route has one, else the client IP), turning limit decisions into {@link RelayError}s with
 * `Retry-After` / `X-RateLimit-*`, and opening the rate-limit store (memory or Deno KV).
 * Must never: use a raw access key as a map or KV key, believe forwarding headers from a peer that
 * is not a trusted proxy (the caller resolves the client IP with `clientIpFrom`), or do per-request
 * work for a feature that is off.
 */

import type { Config, Route } from "../config/mod.ts";
import { RelayError, relayError } from "../errors.ts";
import type { LogWriter } from "../observe/record.ts";
import {
  ConcurrencyLimiter,
  KvRateStore,
  MemoryRateStore,
  rateLimitHeaders,
  type RateLimitStore,
} from "./rate_limit.ts";

/**
 * Largest request header section the relay accepts (names + values + separators). Deno.serve's own
 * parser answers 400 (plain text) from 64 KiB or 128 fields on; below that, the relay answers 431.
 */
export const MAX_HEADER_BYTES = 32 * 1024;

/** Failed access-key checks allowed per client IP within {@link AUTH_FAIL_WINDOW_MS}. */
export const AUTH_FAIL_LIMIT = 20;
/** Window (and lockout length) for {@link AUTH_FAIL_LIMIT}; the same numbers Server A uses. */
export const AUTH_FAIL_WINDOW_MS = 300_000;
const AUTH_FAIL_MAX_KEYS = 50_000;

/** Options for {@link Guards}. */
export interface GuardDeps {
  /** Milliseconds clock. */
  now?: () => number;
  log?: LogWriter;
  /** A ready store (tests inject one); otherwise built from the config. */
  rateStore?: RateLimitStore;
}

/** What a request that passed the limits holds until it ends. */
export interface Admission {
  /** Gives the concurrency slot back; safe to call more than once. */
  release: () => void;
}

const NO_RELEASE: Admission = { release: () => {} };

/** Sum of the sizes of a header section as it was on the wire (approximately: `name: value\r\n`). */
export function headerBytes(headers: ReadonlyArray<readonly [string, string]>): number {
  let n = 0;
  // Indexed: an iterator with destructuring allocated ~1 KB per request.
  for (let i = 0; i < headers.length; i++) n += headers[i]![0].length + headers[i]![1].length + 4;
  return n;
}

/** Lowercase hex SHA-256 of a string. */
export async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  let out = "";
  for (const b of new Uint8Array(digest)) out += b.toString(16).padStart(2, "0");
  return out;
}

/**
 * Counts failed access-key checks per client IP in fixed windows. A client with
 * {@link AUTH_FAIL_LIMIT} failures is locked out (even with a valid key, as Server A does) until
 * its window ends, so a key cannot be guessed through the relay faster than that.
 */
export class AuthFailures {
  readonly #limit: number;
  readonly #windowMs: number;
  readonly #maxKeys: number;
  readonly #byIp = new Map<string, { count: number; until: number }>();

  constructor(
    limit = AUTH_FAIL_LIMIT,
    windowMs = AUTH_FAIL_WINDOW_MS,
    maxKeys = AUTH_FAIL_MAX_KEYS,
  ) {
    this.#limit = limit;
    this.#windowMs = windowMs;
    this.#maxKeys = maxKeys;
  }

  /** Seconds until `ip` may try again, or 0 when it is not locked out. */
  lockedFor(ip: string, now: number): number {
    const e = this.#byIp.get(ip);
    if (e === undefined) return 0;
    if (now >= e.until) {
      this.#byIp.delete(ip);
      return 0;
    }
    return e.count >= this.#limit ? Math.max(1, Math.ceil((e.until - now) / 1000)) : 0;
  }

  /** Records one failed check for `ip`. */
  fail(ip: string, now: number): void {
    let e = this.#byIp.get(ip);
    if (e === undefined || now >= e.until) {
      if (e !== undefined) this.#byIp.delete(ip);
      // Oldest first: drop one entry when full, so a flood of addresses cannot grow the map.
      if (this.#byIp.size >= this.#maxKeys) {
        const oldest = this.#byIp.keys().next();
        if (oldest.done !== true) this.#byIp.delete(oldest.value);
      }
      e = { count: 0, until: now + this.#windowMs };
      this.#byIp.set(ip, e);
    }
    e.count++;
  }

  /** Number of addresses tracked. */
  get size(): number {
    return this.#byIp.size;
  }
}

/** The per-request guards, built once from the config. */
export class Guards {
  readonly #config: Config;
  readonly #now: () => number;
  readonly #log: LogWriter | undefined;
  readonly #concurrency: ConcurrencyLimiter | null;
  readonly #authFailures = new AuthFailures();
  /** Null when RATE_LIMIT is off. */
  readonly #store: Promise<RateLimitStore> | null;
  #storeReady: RateLimitStore | null = null;
  #storeFailed = false;
  /** The configuration in force now: a reload swaps it (ALLOW_IPS, TRUSTED_PROXIES, routes). */
  readonly #current: () => Config;
  /** Route -> digest of its access key (computed once, on first use; a reload makes new routes). */
  readonly #routeKeys = new WeakMap<Route, Promise<string>>();

  /**
   * `current` returns the configuration in force (it changes on reload); limits that hold state
   * (rate store, concurrency) are built once from the configuration at start.
   */
  constructor(current: () => Config, deps: GuardDeps = {}) {
    const config = current();
    this.#config = config;
    this.#current = current;
    this.#now = deps.now ?? Date.now;
    this.#log = deps.log;
    this.#concurrency = config.maxConcurrentPerClient > 0
      ? new ConcurrencyLimiter(config.maxConcurrentPerClient)
      : null;
    this.#store = this.#openStore(deps.rateStore);
    this.#store?.catch(() => {}); // reported in #openStore; requests then get 503
  }

  /** Whether any per-client limit (rate or concurrency) is on. */
  get limiting(): boolean {
    return this.#store !== null || this.#concurrency !== null;
  }

  #openStore(given: RateLimitStore | undefined): Promise<RateLimitStore> | null {
    const rate = this.#config.rateLimit;
    if (rate === null) return null;
    if (given !== undefined) {
      this.#storeReady = given;
      return Promise.resolve(given);
    }
    if (this.#config.rateLimitStore === "memory") {
      const store = new MemoryRateStore(rate);
      this.#storeReady = store;
      return Promise.resolve(store);
    }
    const path = this.#config.rateLimitKvUrl;
    return KvRateStore.open(rate, path === undefined ? {} : { path }).then((store) => {
      this.#storeReady = store;
      return store;
    }, (err) => {
      this.#storeFailed = true;
      // The path or URL is not a secret, but the error text may carry a token-bearing URL: name only.
      this.#log?.error("rate-limit store unavailable", {
        store: "kv",
        detail: err instanceof Error ? `${err.name}: ${err.message.slice(0, 200)}` : "error",
      });
      throw err;
    });
  }

  /** Throws 403 when an allow-list (ALLOW_IPS, as currently configured) excludes `clientIp`. */
  checkAllowed(clientIp: string): void {
    const allow = this.#current().allowIps;
    if (allow !== null && !allow.contains(clientIp)) {
      throw relayError("forbidden", { reason: "allow_ips" });
    }
  }

  /** Throws 431 when the header section is larger than {@link MAX_HEADER_BYTES}. */
  checkHeaders(headers: ReadonlyArray<readonly [string, string]>): void {
    if (headerBytes(headers) > MAX_HEADER_BYTES) {
      throw relayError("headers_too_large", { reason: "parsed", maxBytes: MAX_HEADER_BYTES });
    }
  }

  /**
   * Runs `check` (the route's access-key check) unless `clientIp` is locked out after too many
   * failures; counts a failure when `check` throws a 401.
   */
  checkKey<T>(clientIp: string, check: () => T): T {
    const now = this.#now();
    const locked = this.#authFailures.lockedFor(clientIp, now);
    if (locked > 0) {
      throw relayError("rate_limited", {
        reason: "auth_failures",
        headers: { "Retry-After": String(locked) },
      });
    }
    try {
      return check();
    } catch (err) {
      if (err instanceof RelayError && err.status === 401) this.#authFailures.fail(clientIp, now);
      throw err;
    }
  }

  /** The key a client is limited under: its route's access key (digested) or its IP. */
  async clientKey(clientIp: string, route: Route | undefined): Promise<string> {
    if (route?.accessKey === undefined) return `ip:${clientIp}`;
    let digest = this.#routeKeys.get(route);
    if (digest === undefined) {
      digest = sha256Hex(route.accessKey);
      this.#routeKeys.set(route, digest);
    }
    return `key:${await digest}`;
  }

  /**
   * Applies the rate limit and then the concurrency cap for `key`. Throws 429 when over either;
   * otherwise returns the admission whose `release` must run when the request ends.
   */
  async admit(key: string): Promise<Admission> {
    if (this.#store !== null) {
      const store = this.#storeReady ?? await this.#storeOrFail();
      const d = await store.take(key, this.#now());
      if (!d.allowed) {
        throw relayError("rate_limited", {
          reason: "rate_limit",
          limit: d.limit,
          windowSec: this.#config.rateLimit!.windowSec,
          retryAfterSec: d.retryAfterSec,
          headers: rateLimitHeaders(d),
        });
      }
    }
    if (this.#concurrency === null) return NO_RELEASE;
    const release = this.#concurrency.tryAcquire(key);
    if (release === null) {
      throw relayError("too_many_concurrent", { max: this.#concurrency.maxPerKey });
    }
    return { release };
  }

  async #storeOrFail(): Promise<RateLimitStore> {
    if (this.#storeFailed) throw storeUnavailable();
    try {
      return await this.#store!;
    } catch {
      throw storeUnavailable();
    }
  }

  /** Diagnostics (no keys, no addresses). */
  stats(): Record<string, unknown> {
    return {
      allowIps: this.#current().allowIps?.size ?? null,
      trustedProxies: this.#current().trustedProxies?.size ?? null,
      rateLimit: this.#config.rateLimit,
      rateLimitStore: this.#config.rateLimit === null ? null : this.#config.rateLimitStore,
      maxConcurrentPerClient: this.#config.maxConcurrentPerClient,
      clientsInFlight: this.#concurrency?.size ?? 0,
      lockedOutTracked: this.#authFailures.size,
    };
  }

  /** Closes the KV database if this opened one. */
  close(): void {
    const store = this.#storeReady;
    if (store instanceof KvRateStore) store.close();
  }
}

function storeUnavailable(): RelayError {
  return relayError("overloaded", { reason: "rate_limit_store" });
}
