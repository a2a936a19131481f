/**
 * @module pools
 * One pool per upstream origin, made on first use: HTTP/1.1 (`http1.ts`), with HTTP/2
 * (`http2.ts`) as the alternative an HTTPS upstream may choose by ALPN, and spare connections when
 * configured. `http2.ts` (with `h2_session.ts` and `hpack.ts` behind it) is imported only when an
 * upstream first picks `h2`: loaded at start it added ~4 MB to idle RSS. Must never: share a pool
 * between origins, or open connections for an upstream the caller says is down.
 */

import type { Endpoint, Upstream } from "../http/mod.ts";
import {
  type AltTransport,
  type Connector,
  exchange,
  type ExchangeOptions,
  type ExchangeRequest,
  Pool,
  type TransportStats,
  type UpstreamResponse,
} from "./http1.ts";

/** Makes the alternative transport for an origin that chose it by ALPN. */
type AltFactory = (endpoint: Endpoint) => Promise<AltTransport>;

/**
 * One upstream origin: its HTTP/1.1 pool, and the HTTP/2 client once the upstream chose it. The
 * choice is made here, once, by the first TLS handshake: it offers `h2` and `http/1.1` by ALPN;
 * that connection becomes the first HTTP/2 session or joins the HTTP/1.1 pool, so no handshake is
 * wasted. A failed
 * connect leaves the question open for the next request.
 */
export class Origin {
  readonly h1: Pool;
  readonly #alternate: AltFactory | null;
  #alt: AltTransport | null = null;
  #negotiating: Promise<AltTransport | null> | null = null;
  /** Whether the protocol is settled (plain HTTP, or no alternative, settles it at once). */
  negotiated: boolean;

  constructor(h1: Pool, alternate: AltFactory | null) {
    this.h1 = h1;
    this.#alternate = alternate;
    this.negotiated = h1.endpoint.protocol === "http:" || alternate === null;
    h1.carrying = this.negotiated;
  }

  /** "http/1.1", "h2", or "unknown" before the first TLS handshake. */
  get protocol(): string {
    return this.#alt?.protocol ?? (this.negotiated ? "http/1.1" : "unknown");
  }

  /** When a request last went to this origin (ms since the epoch): keep-warm reads it. */
  get lastActivity(): number {
    return this.h1.lastActivity;
  }

  /** Sends one request over whichever protocol the origin speaks; resolves with A's head. */
  async exchange(req: ExchangeRequest, options: ExchangeOptions): Promise<UpstreamResponse> {
    // A connect failure here leaves the body untouched: the caller may try another upstream.
    const alt = this.negotiated ? this.#alt : await this.#transport();
    if (alt === null) return await exchange(this.h1, req, options);
    this.h1.lastActivity = Date.now();
    return await alt.exchange(req, options);
  }

  #transport(): Promise<AltTransport | null> {
    this.#negotiating ??= this.#negotiate().finally(() => (this.#negotiating = null));
    return this.#negotiating;
  }

  async #negotiate(): Promise<AltTransport | null> {
    const c = await this.h1.connect(["h2", "http/1.1"]);
    if (this.negotiated) {
      c.close();
      return this.#alt;
    }
    if (c.alpn === "h2") {
      let alt: AltTransport;
      try {
        alt = await this.#alternate!(this.h1.endpoint);
      } catch (err) {
        c.close();
        throw err;
      }
      // The connection that asked becomes the first session: no second handshake on a request
      // that already waited for one.
      alt.adopt(c.detach());
      this.#alt = alt;
    } else {
      this.h1.adopt(c);
    }
    this.negotiated = true;
    this.h1.carrying = this.#alt === null;
    return this.#alt;
  }

  /** Counters for diagnostics, from the transport in use. */
  stats(): TransportStats & { protocol: string } {
    if (this.#alt !== null) return { ...this.#alt.stats(), protocol: this.#alt.protocol };
    return { ...this.h1.stats(), protocol: this.protocol };
  }

  closeIdle(): void {
    this.h1.closeIdle();
    this.#alt?.closeIdle();
  }

  close(): void {
    this.h1.close();
    this.#alt?.close();
  }
}

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
  readonly #pools = new Map<string, Origin>();
  readonly #opts: PoolSetOptions;

  constructor(opts: PoolSetOptions) {
    this.#opts = opts;
  }

  get(up: Upstream): Origin {
    const key = `${up.protocol}//${up.hostHeader}`;
    let origin = this.#pools.get(key);
    if (origin === undefined) {
      const o = this.#opts;
      // The pool is per origin; the upstream that created it speaks for its health.
      const spares = (o.spares ?? 0) > 0
        ? {
          count: o.spares!,
          ...(o.live ? { live: () => o.live!(up) } : {}),
          ...(o.warm ? { warm: () => o.warm!(up) } : {}),
        }
        : undefined;
      const h1 = new Pool(up, {
        connectTimeoutMs: o.connectTimeoutMs,
        idleTimeoutMs: o.idleTimeoutMs,
        ...(o.connector ? { connector: o.connector } : {}),
        ...(o.caCerts ? { caCerts: o.caCerts } : {}),
        ...(spares ? { spares } : {}),
      });
      origin = new Origin(
        h1,
        o.http2 === false ? null : async (endpoint) => {
          // Loaded here, not at start: a relay whose upstreams never pick h2 keeps ~4 MB of RSS.
          const { H2Pool } = await import("./http2.ts");
          return new H2Pool(endpoint, {
            connectTimeoutMs: o.connectTimeoutMs,
            idleTimeoutMs: o.idleTimeoutMs,
            caCerts: o.caCerts,
            spares,
          });
        },
      );
      this.#pools.set(key, origin);
    }
    return origin;
  }

  /** Per-upstream pool counters for diagnostics. */
  stats(): Record<string, ReturnType<Origin["stats"]>> {
    const out: Record<string, ReturnType<Origin["stats"]>> = {};
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
