/// <reference lib="deno.unstable" />
/**
 * @module rate_limit
 * Request-rate and concurrency limits per key (client IP, API key id, route...).
 *
 * Owns: parsing rate settings such as `60/minute`, the token-bucket arithmetic, two bucket stores
 * (in memory for one process, Deno KV for several), the `X-RateLimit-*` / `Retry-After` headers,
 * and the in-flight request counter.
 * Must never: read the clock itself (callers pass `now` in milliseconds so tests drive time), grow
 * without bound as new keys arrive, or grant more than `limit` tokens in a burst, including when
 * several processes take from the same KV bucket at once. Keys are stored as given: callers hash
 * anything secret (such as API keys) before using it as a key.
 */

import { relayError } from "../errors.ts";
import { parseRate, type Rate } from "../config/mod.ts";

export { parseRate };
export type { Rate };

/** The outcome of taking one token from a bucket. */
export interface RateDecision {
  /** Whether the request may proceed (a token was taken). */
  allowed: boolean;
  /** Bucket capacity, i.e. the configured limit. */
  limit: number;
  /** Whole tokens left after this take. */
  remaining: number;
  /** Seconds (rounded up) until the bucket is full again. */
  resetSec: number;
  /** 0 when allowed, else seconds (rounded up) until one token is available. */
  retryAfterSec: number;
}

/** Somewhere token buckets live. `now` is a timestamp in milliseconds from the injected clock. */
export interface RateLimitStore {
  /** Takes one token from `key`'s bucket, if there is one. */
  take(key: string, now: number): Promise<RateDecision> | RateDecision;
}

function assertRate(rate: Rate): void {
  const { limit, windowSec } = rate;
  if (
    !Number.isInteger(limit) || !Number.isInteger(windowSec) || limit < 1 || windowSec < 1 ||
    limit * windowSec * 1000 > Number.MAX_SAFE_INTEGER
  ) {
    throw new RangeError(
      `rate limit: invalid rate ${limit}/${windowSec}s; limit and windowSec must be positive ` +
        `integers`,
    );
  }
}

/**
 * One bucket. Tokens are kept in units of 1/windowMs of a token so that with integer timestamps
 * the arithmetic is exact: each millisecond adds `limit` units, each take costs `windowMs` units,
 * and a full bucket holds `limit * windowMs`. `limit`/`windowMs` record the rate the level was
 * measured in, so a bucket persisted in KV survives a configuration change.
 */
interface BucketState {
  level: number;
  at: number;
  limit: number;
  windowMs: number;
}

function isBucketState(v: unknown): v is BucketState {
  if (typeof v !== "object" || v === null) return false;
  const b = v as Record<string, unknown>;
  return [b.level, b.at, b.limit, b.windowMs].every((n) => typeof n === "number" && isFinite(n)) &&
    (b.limit as number) > 0 && (b.windowMs as number) > 0 && (b.level as number) >= 0;
}

interface Step {
  next: BucketState;
  decision: RateDecision;
  /** Milliseconds until `next` is full, after which it can be forgotten without changing anything. */
  msUntilFull: number;
}

/** The token-bucket step: refill for the time elapsed since `state.at`, then try to take one. */
function step(rate: Rate, state: BucketState | undefined, now: number): Step {
  if (!Number.isFinite(now)) throw new RangeError(`rate limit: clock returned ${now}`);
  const windowMs = rate.windowSec * 1000;
  const cap = rate.limit * windowMs;
  let level = cap;
  let at = now;
  if (state !== undefined) {
    const prior = state.limit === rate.limit && state.windowMs === windowMs
      ? state.level
      // Rate changed since this bucket was saved: keep the same fraction of a full bucket.
      : Math.floor(state.level / (state.limit * state.windowMs) * cap);
    // A clock that steps backwards must not refill the same interval twice, so time only moves on.
    at = Math.max(now, state.at);
    level = Math.min(cap, prior + Math.max(0, now - state.at) * rate.limit);
  }
  const allowed = level >= windowMs;
  if (allowed) level -= windowMs;
  const msUntilFull = (cap - level) / rate.limit;
  return {
    next: { level, at, limit: rate.limit, windowMs },
    msUntilFull,
    decision: {
      allowed,
      limit: rate.limit,
      remaining: Math.floor(level / windowMs),
      resetSec: Math.ceil((cap - level) / (rate.limit * 1000)),
      retryAfterSec: allowed ? 0 : Math.ceil((windowMs - level) / (rate.limit * 1000)),
    },
  };
}

/** Options for {@linkcode MemoryRateStore}. */
export interface MemoryRateStoreOptions {
  /** Hard cap on tracked keys; the least recently used bucket is dropped beyond it. Default 100 000. */
  maxKeys?: number;
}

/**
 * Token buckets in a `Map`, for a single process.
 *
 * Memory stays bounded: the map is kept in least-recently-used order, and every take first drops
 * buckets untouched for a whole window (they have refilled completely, so forgetting them changes
 * nothing), which costs O(1) amortised. Past `maxKeys`, the least recently used bucket is dropped
 * even if not yet full; that key then starts again with a full bucket, a deliberate leniency so a
 * flood of new keys cannot exhaust memory.
 */
export class MemoryRateStore implements RateLimitStore {
  /** The rate every bucket in this store follows. */
  readonly rate: Rate;
  readonly #maxKeys: number;
  readonly #windowMs: number;
  readonly #buckets = new Map<string, BucketState>();

  /** Creates an empty store for `rate`. */
  constructor(rate: Rate, options: MemoryRateStoreOptions = {}) {
    assertRate(rate);
    const maxKeys = options.maxKeys ?? 100_000;
    if (!Number.isInteger(maxKeys) || maxKeys < 1) {
      throw new RangeError(`rate limit: maxKeys must be a positive integer, got ${maxKeys}`);
    }
    this.rate = { limit: rate.limit, windowSec: rate.windowSec };
    this.#maxKeys = maxKeys;
    this.#windowMs = rate.windowSec * 1000;
  }

  /** Number of buckets currently held. */
  get size(): number {
    return this.#buckets.size;
  }

  /** Takes one token from `key`'s bucket at time `now` (ms). */
  take(key: string, now: number): RateDecision {
    this.#sweep(now);
    const prev = this.#buckets.get(key);
    const { next, decision } = step(this.rate, prev, now);
    if (prev !== undefined) {
      this.#buckets.delete(key); // re-inserted below, which moves it to the most-recent end
    } else if (this.#buckets.size >= this.#maxKeys) {
      const oldest = this.#buckets.keys().next();
      if (oldest.done !== true) this.#buckets.delete(oldest.value);
    }
    this.#buckets.set(key, next);
    return decision;
  }

  /** Forgets every bucket. */
  clear(): void {
    this.#buckets.clear();
  }

  #sweep(now: number): void {
    // Oldest first; stop at the first bucket touched within the window, so a take pays only for
    // what it removes.
    for (const [key, b] of this.#buckets) {
      if (now - b.at < this.#windowMs) break;
      this.#buckets.delete(key);
    }
  }
}

/** Options for {@linkcode KvRateStore}. */
export interface KvRateStoreOptions {
  /** Key prefix for the buckets, so several limits can share one database. Default `["rate_limit"]`. */
  prefix?: Deno.KvKey;
  /** Commit attempts under contention before giving up with a 503. Default 64. */
  maxAttempts?: number;
}

/** Options for {@linkcode KvRateStore.open}. */
export interface KvRateStoreOpenOptions extends KvRateStoreOptions {
  /** Database path or URL for `Deno.openKv`; omitted means Deno's default database. */
  path?: string;
}

/**
 * Token buckets in Deno KV, shared by every process that opens the same database.
 *
 * Each take reads the bucket and commits the new state with an atomic check on the version it read,
 * retrying on conflict, so concurrent takes never grant more tokens than the bucket holds. Refusals
 * write nothing. Entries carry `expireIn` set to the moment the bucket would be full again (plus a
 * little slack): a missing entry and a full bucket mean the same thing, so expiry only reclaims
 * space. This assumes the injected clock runs at real-time speed.
 */
export class KvRateStore implements RateLimitStore {
  /** The rate every bucket in this store follows. */
  readonly rate: Rate;
  readonly #kv: Deno.Kv;
  readonly #prefix: Deno.KvKey;
  readonly #maxAttempts: number;
  // Only open() sets this: a caller-supplied database stays the caller's to close.
  #ownsKv = false;

  /** Wraps an already opened database; the caller keeps ownership of `kv`. */
  constructor(kv: Deno.Kv, rate: Rate, options: KvRateStoreOptions = {}) {
    assertRate(rate);
    const maxAttempts = options.maxAttempts ?? 64;
    if (!Number.isInteger(maxAttempts) || maxAttempts < 1) {
      throw new RangeError(
        `rate limit: maxAttempts must be a positive integer, got ${maxAttempts}`,
      );
    }
    this.rate = { limit: rate.limit, windowSec: rate.windowSec };
    this.#kv = kv;
    this.#prefix = options.prefix ?? ["rate_limit"];
    this.#maxAttempts = maxAttempts;
  }

  /**
   * Opens a database with `Deno.openKv(options.path)` and wraps it; {@linkcode close} closes it.
   *
   * @throws {Error} when Deno KV is unavailable (the process was started without `--unstable-kv`).
   */
  static async open(rate: Rate, options: KvRateStoreOpenOptions = {}): Promise<KvRateStore> {
    const openKv = (Deno as { openKv?: unknown }).openKv;
    if (typeof openKv !== "function") {
      throw new Error(
        "rate limit: Deno KV is not available in this process; start Deno with --unstable-kv " +
          '(or add "unstable": ["kv"] to deno.json), or use the in-memory rate-limit store',
      );
    }
    const kv = options.path === undefined ? await Deno.openKv() : await Deno.openKv(options.path);
    const storeOptions: KvRateStoreOptions = {};
    if (options.prefix !== undefined) storeOptions.prefix = options.prefix;
    if (options.maxAttempts !== undefined) storeOptions.maxAttempts = options.maxAttempts;
    let store: KvRateStore;
    try {
      store = new KvRateStore(kv, rate, storeOptions);
    } catch (err) {
      kv.close();
      throw err;
    }
    store.#ownsKv = true;
    return store;
  }

  /** Closes the database if this store opened it (via {@linkcode open}); otherwise does nothing. */
  close(): void {
    if (this.#ownsKv) this.#kv.close();
  }

  /** Takes one token from `key`'s bucket at time `now` (ms). */
  async take(key: string, now: number): Promise<RateDecision> {
    const kvKey: Deno.KvKey = [...this.#prefix, key];
    for (let attempt = 1; attempt <= this.#maxAttempts; attempt++) {
      const entry = await this.#kv.get<unknown>(kvKey);
      // Anything we did not write (or an older layout) is treated as a fresh, full bucket.
      const prev = isBucketState(entry.value) ? entry.value : undefined;
      const { next, decision, msUntilFull } = step(this.rate, prev, now);
      if (!decision.allowed) return decision;
      const res = await this.#kv.atomic()
        .check(entry)
        .set(kvKey, next, { expireIn: Math.ceil(msUntilFull) + EXPIRY_SLACK_MS })
        .commit();
      if (res.ok) return decision;
      // Lost a race with another take on the same key. Back off a little, with jitter (timing only,
      // never the outcome), so a hot key does not turn into a retry storm.
      await new Promise((r) => setTimeout(r, Math.random() * Math.min(2 ** attempt, 25)));
    }
    throw relayError("overloaded", { reason: "rate_limit_busy" });
  }
}

const EXPIRY_SLACK_MS = 1000;

/**
 * Response headers describing a decision: `X-RateLimit-Limit`, `X-RateLimit-Remaining`,
 * `X-RateLimit-Reset` (seconds until the bucket is full) and, when refused, `Retry-After`.
 */
export function rateLimitHeaders(d: RateDecision): Record<string, string> {
  const h: Record<string, string> = {
    "X-RateLimit-Limit": String(d.limit),
    "X-RateLimit-Remaining": String(d.remaining),
    "X-RateLimit-Reset": String(d.resetSec),
  };
  if (!d.allowed) h["Retry-After"] = String(Math.max(1, d.retryAfterSec));
  return h;
}

/**
 * Caps requests in flight per key. Keys with nothing in flight are removed, so the map only ever
 * holds keys that currently have work running.
 */
export class ConcurrencyLimiter {
  /** Most requests one key may have in flight. */
  readonly maxPerKey: number;
  readonly #active = new Map<string, number>();

  /** Creates a limiter allowing `maxPerKey` concurrent holders per key. */
  constructor(maxPerKey: number) {
    if (!Number.isInteger(maxPerKey) || maxPerKey < 1) {
      throw new RangeError(`concurrency limit must be a positive integer, got ${maxPerKey}`);
    }
    this.maxPerKey = maxPerKey;
  }

  /**
   * Takes a slot for `key`, returning its release function, or null when `key` is at the limit.
   * Releasing twice is harmless (the second call does nothing), so callers can release from both
   * a `finally` and a stream's cancel hook.
   */
  tryAcquire(key: string): (() => void) | null {
    const n = this.#active.get(key) ?? 0;
    if (n >= this.maxPerKey) return null;
    this.#active.set(key, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#active.get(key) ?? 1) - 1;
      if (left <= 0) this.#active.delete(key);
      else this.#active.set(key, left);
    };
  }

  /** Requests currently in flight for `key`. */
  active(key: string): number {
    return this.#active.get(key) ?? 0;
  }

  /** Number of keys with at least one request in flight. */
  get size(): number {
    return this.#active.size;
  }
}
