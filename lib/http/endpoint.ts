/**
 * @module endpoint
 * Where Server A is: the parsed form of an upstream URL. `config/` makes these from the settings,
 * `upstream/` connects to them, and the pipeline picks among them. Types only.
 */

/** Where to connect: host, port and scheme, and the `Host` header to send. */
export interface Endpoint {
  readonly protocol: "http:" | "https:";
  readonly hostname: string;
  readonly port: number;
  readonly hostHeader: string;
}

/** One upstream base URL, pre-split for the HTTP client. */
export interface Upstream extends Endpoint {
  /** The base URL as configured, minus any trailing slash; safe to show (no credentials allowed). */
  readonly url: string;
  /** Path prefix without trailing slash: "" or e.g. "/api". */
  readonly prefix: string;
}
