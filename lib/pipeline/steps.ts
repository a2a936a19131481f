/**
 * @module steps
 * The order every forwarded request goes through before it is sent to Server A, written in one
 * place: {@link STEPS}. Each step reads what the ones before it decided, decides one thing more,
 * or refuses the request with a RelayError from the error table.
 *
 * Owns: the order of the checks. The checks themselves live in their own modules (guards, target,
 * credentials, body limit, headers). Must never: read the request body (only decide how it will be
 * read), or touch Server A.
 */

import type { Config, Route, Upstream } from "../config/mod.ts";
import { relayError } from "../errors.ts";
import {
  type HeaderList,
  redactHeaders,
  redactQuery,
  requestField,
  requestFieldsOf,
  requestHeaders,
  takeBodyRelease,
  takeLentBody,
} from "../http/mod.ts";
import type { LogWriter } from "../observe/record.ts";
import { announcedLength, checkAnnouncedLength, LimitedBody } from "./body_limit.ts";
import { swapKey } from "./credentials.ts";
import type { Guards } from "./guards.ts";
import { checkTarget, isApiPath, matchUidPath, type RawTarget } from "./target.ts";

/**
 * Request bodies up to this size with a `Content-Length` are forwarded from one `req.bytes()`
 * read instead of a chunk stream, waiting for the body if it has not all arrived. The own
 * server's `INLINE_BODY_MAX` (`server/`) is the same size: it reads such a body before the handler
 * runs and hands it over as bytes, so that `req.bytes()` has it at once.
 */
const READ_WHOLE_MAX = 256 * 1024;

/** What the steps know about one request: given when it arrives, then decided step by step. */
export interface Admission {
  /** The client's request; a placeholder once the response streams, so a stream keeps none of it. */
  req: Request;
  /** The configuration in force when the request arrived (a reload cannot split a request). */
  readonly cfg: Config;
  readonly id: string;
  readonly clientIp: string;
  readonly path: string;
  readonly query: string;
  /** `X-Forwarded-For` as a trusted proxy sent it; undefined when the peer is not trusted. */
  readonly forwardedFor?: string | undefined;
  /** The trusted proxy the request came through, appended to the forwarded chain. */
  readonly peerIp?: string | undefined;

  /** The UID route id, set as soon as it is read (also when the route is then refused). */
  routeId: string | undefined;
  route: Route | undefined;
  upstreams: readonly Upstream[];
  headers: HeaderList;
  target: RawTarget;
  /** Gives back the client's concurrency slot; the caller runs it once the request is over. */
  release?: (() => void) | undefined;
  /** The body's announced length (null: none, or chunked). */
  announced: number | null;
  /** The client's body as it will be read, when there is one. */
  body: LimitedBody | null;
}

/** What the steps use besides the request. */
export interface StepDeps {
  readonly guards: Guards;
  readonly log: LogWriter;
}

type Step = (a: Admission, d: StepDeps) => void | Promise<void>;

/** The client's address is allowed (`ALLOW_IPS`). */
function access(a: Admission, d: StepDeps): void {
  d.guards.checkAllowed(a.clientIp);
}

/** `/u{id}/...` picks a route and its upstreams; the path must be an API path A serves, and safe. */
function route(a: Admission): void {
  let apiPath = a.path;
  const uid = matchUidPath(a.path);
  if (uid !== null) {
    a.routeId = uid.id;
    const route = a.cfg.routes.get(uid.id);
    if (route === undefined) throw relayError("unknown_route", { id: uid.id });
    a.route = route;
    a.upstreams = route.upstreams;
    apiPath = uid.rest;
  }
  if (!isApiPath(apiPath)) throw relayError("not_found", { reason: "path" });
  const bad = checkTarget(apiPath, a.query);
  if (bad !== null) throw bad;
  a.target = { path: apiPath, query: a.query };
}

/** The headers A gets: end-to-end ones as sent, the relay's own client-IP headers. */
function headers(a: Admission, d: StepDeps): void {
  a.headers = requestHeaders(requestFieldsOf(a.req), {
    clientIp: a.clientIp,
    trustedForwardedFor: a.forwardedFor,
    peerIp: a.peerIp,
  });
  // Measured on the list already built: iterating `req.headers` again costs a sorted copy.
  d.guards.checkHeaders(a.headers);
}

/** On a route with a key swap: the client's access key is checked and replaced by A's key. */
function credentials(a: Admission, d: StepDeps): void {
  const route = a.route;
  if (route?.apiKey === undefined || route.accessKey === undefined) return;
  const keys = { accessKey: route.accessKey, apiKey: route.apiKey };
  const swapped = d.guards.checkKey(a.clientIp, () => swapKey(a.headers, a.query, keys));
  a.headers = swapped.headers;
  a.target = { path: a.target.path, query: swapped.query };
}

/** With `DEBUG_LOG=1`: what is about to be forwarded, credentials redacted. */
function trace(a: Admission, d: StepDeps): void {
  if (!d.log.enabled("debug")) return;
  d.log.debug("forward", {
    id: a.id,
    method: a.req.method,
    path: redactQuery(a.path + a.query),
    headers: redactHeaders(a.headers),
  });
}

/** The per-client rate limit and concurrency cap, when configured. */
function limits(a: Admission, d: StepDeps): Promise<void> | undefined {
  if (!d.guards.limiting) return undefined;
  return admitClient(a, d);
}

async function admitClient(a: Admission, d: StepDeps): Promise<void> {
  a.release = (await d.guards.admit(await d.guards.clientKey(a.clientIp, a.route))).release;
}

/** Whether there is a body, its announced length, and the limits it is read under. */
function body(a: Admission): void {
  const { req, cfg } = a;
  // Decided from the headers where possible: touching `req.body` creates a stream and turns off
  // Deno's full-body fast path. (HTTP/2 bodies may come with neither header.)
  const cl = requestField(req, "content-length");
  const announced = announcedLength(cl);
  a.announced = announced;
  const hasBody = cl !== null
    ? announced !== 0
    : requestField(req, "transfer-encoding") !== null || req.body !== null;
  if (!hasBody) return;
  if (req.method === "GET" || req.method === "HEAD") {
    // A Request cannot carry a GET or HEAD body (Deno.serve drops it), and one forwarded without
    // its bytes would be read by A from the next request on the connection.
    throw relayError("body_not_allowed", { method: req.method });
  }
  const tooLarge = checkAnnouncedLength(announced, cfg.maxBodyBytes);
  if (tooLarge !== null) throw tooLarge;
  // A small body of known length is taken whole: one piece, no per-chunk stream layers. The own
  // server lends the bytes it read (given back once sent); else `req.bytes()`.
  const whole = announced !== null && announced <= READ_WHOLE_MAX;
  a.body = new LimitedBody(() => req.body!, {
    maxBytes: cfg.maxBodyBytes,
    idleTimeoutMs: cfg.clientBodyTimeoutMs,
    ...(whole
      ? { whole: takeLentBody(req) ?? (() => req.bytes()) }
      : { streamRelease: takeBodyRelease(req) }),
  });
}

/** The steps, in order. */
export const STEPS: readonly Step[] = [access, route, headers, credentials, trace, limits, body];

/**
 * Runs {@link STEPS} on `a`; throws the first refusal. Only a step that has something to wait for
 * returns a promise, and so does this only then: a request that waits for nothing is admitted
 * without an extra turn of the event loop. Returns undefined when it was admitted at once.
 */
export function admit(a: Admission, deps: StepDeps): Promise<void> | undefined {
  for (let i = 0; i < STEPS.length; i++) {
    const pending = STEPS[i]!(a, deps);
    if (pending !== undefined) return pending.then(() => finish(a, deps, i + 1));
  }
  return undefined;
}

/** The steps after `from`, once a step has waited. */
async function finish(a: Admission, deps: StepDeps, from: number): Promise<void> {
  for (let i = from; i < STEPS.length; i++) {
    const pending = STEPS[i]!(a, deps);
    if (pending !== undefined) await pending;
  }
}
