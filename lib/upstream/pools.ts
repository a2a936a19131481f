/**
 * @module pools
 * One pool per upstream origin, made on first use: HTTP/1.1 (`http1.ts`), with HTTP/2
 * (`http2.ts`) as the alternative an HTTPS upstream may choose by ALPN, and spare connections when
 * configured. Must never: share a pool between origins, or open connections for an upstream the
 * caller says is down.
 */

import type { Upstream } from "../http/mod.ts";
import { type Connector, Pool } from "./http1.ts";
import { H2Pool } from "./http2.ts";

/** Options for {@link PoolSet}. */
export interface PoolSetOptions {
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  connector?: Connector | undefined;
  caCerts?: string[] | undefined;
  /** Use HTTP/2 with HTTPS upstreams that offer it (default true). */
  http2?: boolean | undefined;
  /** Connections (HTTP/2: stream slots) kept ready per upstream; 0 or absent = off. */
  spares?: number | undefined;
  /** Whether an upstream may get connections opened in the background (not marked down). */
  live?: ((upstream: Upstream) => boolean) | undefined;
  /** Sends one keep-warm request to an upstream; absent when keep-warm is off. */
  warm?: ((upstream: Upstream) => Promise<unknown>) | undefined;
}

/** The pools for every upstream, created on first use. */
export class PoolSet {
  readonly #pools = new Map<string, Pool>();
  readonly #opts: PoolSetOptions;

  constructor(opts: PoolSetOptions) {
    this.#opts = opts;
  }

  get(up: Upstream): Pool {
    const key = `${up.protocol}//${up.hostHeader}`;
    let pool = this.#pools.get(key);
    if (pool === undefined) {
      const o = this.#opts;
      // The pool is per origin; the upstream that created it speaks for its health.
      const spares = (o.spares ?? 0) > 0
        ? {
          count: o.spares!,
          ...(o.live ? { live: () => o.live!(up) } : {}),
          ...(o.warm ? { warm: () => o.warm!(up) } : {}),
        }
        : undefined;
      pool = new Pool(up, {
        connectTimeoutMs: this.#opts.connectTimeoutMs,
        idleTimeoutMs: this.#opts.idleTimeoutMs,
        ...(this.#opts.connector ? { connector: this.#opts.connector } : {}),
        ...(this.#opts.caCerts ? { caCerts: this.#opts.caCerts } : {}),
        ...(spares ? { spares } : {}),
        ...(this.#opts.http2 === false ? {} : {
          alternate: (endpoint) =>
            new H2Pool(endpoint, {
              connectTimeoutMs: this.#opts.connectTimeoutMs,
              idleTimeoutMs: this.#opts.idleTimeoutMs,
              caCerts: this.#opts.caCerts,
              spares,
            }),
        }),
      });
      this.#pools.set(key, pool);
    }
    return pool;
  }

  /** Per-upstream pool counters for diagnostics. */
  stats(): Record<string, ReturnType<Pool["stats"]>> {
    const out: Record<string, ReturnType<Pool["stats"]>> = {};
    for (const [key, pool] of this.#pools) out[key] = pool.stats();
    return out;
  }

  closeIdle(): void {
    for (const pool of this.#pools.values()) pool.closeIdle();
  }

  close(): void {
    for (const pool of this.#pools.values()) pool.close();
  }
}
