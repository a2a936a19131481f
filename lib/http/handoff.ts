/**
 * @module handoff
 * What a handler and the own HTTP/1.1 server (`server/`) tell each other beside the standard
 * `Request` and `Response`, through symbol-keyed properties of those objects ({@link Slot}; public
 * API only; nothing is kept once the object is gone):
 * - the request target exactly as the client sent it ({@link sentUrl}): `new Request` normalises
 *   dot-segments and escapes, `Deno.serve` does not, and the relay's own path checks depend on
 *   seeing the target as sent;
 * - a forwarded response's field lines in A's order with repeated fields apart
 *   ({@link withFieldLines}): iterating `Headers` joins two `www-authenticate` lines into one and
 *   sorts names, where `Deno.serve` sends them as they were appended.
 *
 * - a response body that can be read without a stream ({@link withDirectBody}): the upstream
 *   client's reader goes straight to A's socket, so the own server's write loop costs no stream
 *   machinery per chunk.
 *
 * - a small request body that the server read whole ({@link withWholeBody}): the handler takes the
 *   bytes as they are, where a Request made with them copies them and `req.bytes()` may copy again
 *   (7.7 against 2.1 µs for `new Request` with 128 KB); `req.body` is a stream of the same bytes,
 *   made for a handler that reads it.
 *
 * - how to give back the buffers under a streamed request body ({@link withBodyRelease}): the
 *   server reads a large body into pooled buffers and lends them as the stream's chunks; the
 *   upstream client releases them once the body was sent and answered (at 1 MB bodies, fresh
 *   buffers made GC 23.5 % of busy time).
 *
 * - a request's field lines as they arrived ({@link withRequestFields}): iterating `Headers` costs
 *   a sorted, joined copy (about 14 KB of garbage for a typical request), and A should get the
 *   lines as the client sent them.
 *
 * - that a Request's or Response's `Headers` are made only when something reads them
 *   ({@link lazyRequestFields}, {@link lazyFieldLines}): filling one costs ~1 µs and ~1 KB per
 *   side per request, and on the forwarding path nothing reads them (the relay reads the lines,
 *   {@link requestField}; the own server writes the lines).
 *
 * Handlers served by `Deno.serve` need none of them: there `req.url` is already as sent and a
 * Response's own header list is written.
 */

import { appendAll, fieldValue, type HeaderList } from "./headers.ts";

/** The reading half of a `ReadableStreamDefaultReader`, which also satisfies it. */
export interface BodyReaderLike {
  read(): Promise<ReadableStreamReadResult<Uint8Array>>;
  cancel(reason?: unknown): Promise<void>;
  /**
   * False when the next read must wait for I/O; then the writer sends what it gathered without
   * first letting microtask turns pass in case a chunk is produced without I/O.
   */
  ready?(): boolean;
  /**
   * True when a chunk read is only lent: valid until the next `read()` (it is a view of the
   * reader's buffer). The reader must then be done with every chunk before reading again.
   */
  readonly lent?: boolean;
}

/**
 * A value attached to a Request or Response under a symbol of its own: gone with the object, as a
 * WeakMap entry would be, and cheaper to set on every request. A WeakMap set cost ~0.6 µs in the
 * relay under load (it gives the object an identity hash, and the GC one more ephemeron to trace);
 * a property added the same way to every such object is one cached hidden-class transition.
 */
class Slot<T extends object, V> {
  readonly #key: symbol;

  constructor(name: string) {
    this.#key = Symbol(name);
  }

  get(obj: T): V | undefined {
    return (obj as unknown as Record<symbol, V | undefined>)[this.#key];
  }

  /** `undefined` clears it: deleting the property would cost the object its fast properties. */
  set(obj: T, value: V | undefined): void {
    (obj as unknown as Record<symbol, V | undefined>)[this.#key] = value;
  }

  /** The value, once: it is cleared when there was one. */
  take(obj: T): V | undefined {
    const value = this.get(obj);
    if (value !== undefined) this.set(obj, undefined);
    return value;
  }
}

const sentUrls = new Slot<Request, string>("sent url");
const directBodies = new Slot<Response, BodyReaderLike>("direct body");
const fieldLines = new Slot<Response, HeaderList>("field lines");
const requestFields = new Slot<Request, HeaderList>("request fields");
const wholeBodies = new Slot<Request, LentBytes>("whole body");
const bodyReleases = new Slot<Request, () => void>("body release");

/**
 * Registers `lines` as the field lines `req` was made from, as they arrived (names as sent,
 * values without surrounding whitespace). Contract: `req.headers` is not changed afterwards.
 */
export function withRequestFields(req: Request, lines: HeaderList): void {
  requestFields.set(req, lines);
}

/**
 * The accessor that stands in for `headers` on one Request or Response until it is first read:
 * then the registered lines are appended to the object's own (empty) `Headers`, which from then on
 * is a plain property. One shared getter per class, so every object gets the same hidden-class
 * transition. Null when Deno's class has no `headers` getter to call (the caller then fills the
 * Headers at once); the probe below also checks the lines come out.
 */
function lazyHeadersAccessor<T extends Request | Response>(
  proto: T,
  lines: Slot<T, HeaderList>,
): PropertyDescriptor | null {
  const own = Object.getOwnPropertyDescriptor(proto, "headers")?.get;
  if (own === undefined) return null;
  return {
    configurable: true,
    enumerable: true,
    get(this: T): Headers {
      const headers = own.call(this) as Headers;
      // Replaced first: were an append to throw, a second read must not append the lines again.
      Object.defineProperty(this, "headers", {
        value: headers,
        configurable: true,
        enumerable: true,
      });
      const registered = lines.get(this);
      if (registered !== undefined) appendAll(headers, registered);
      return headers;
    },
  };
}

/** `accessor`, if it works on an object `make` gives (two lines in, joined out, made once). */
function probed<T extends Request | Response>(
  accessor: PropertyDescriptor | null,
  make: () => T,
  lines: Slot<T, HeaderList>,
): PropertyDescriptor | null {
  if (accessor === null) return null;
  try {
    const probe = make();
    lines.set(probe, [["X-Probe", "1"], ["x-probe", "2"]]);
    Object.defineProperty(probe, "headers", accessor);
    const first = probe.headers;
    return first.get("x-probe") === "1, 2" && probe.headers === first ? accessor : null;
  } catch {
    return null;
  }
}

const lazyRequest = probed(
  lazyHeadersAccessor(Request.prototype, requestFields),
  () => new Request("http://probe/"),
  requestFields,
);
const lazyResponse = probed(
  lazyHeadersAccessor(Response.prototype, fieldLines),
  () => new Response(null),
  fieldLines,
);

/**
 * Registers `lines` as the field lines `req` arrived with (as {@link withRequestFields}) and
 * leaves `req.headers` unmade until something reads it, when the lines are appended. For a Request
 * made with no headers, whose lines Deno's `Headers` accepts as they are (checked when parsed).
 * Only public reads see the lines: Deno's own uses of the inner list (`new Request(req)`,
 * `fetch(req)`) would not, and the relay makes none. Returns false when Deno's Request cannot be
 * stood in for; then nothing was registered and the caller appends the lines itself.
 */
export function lazyRequestFields(req: Request, lines: HeaderList): boolean {
  if (lazyRequest === null) return false;
  requestFields.set(req, lines);
  Object.defineProperty(req, "headers", lazyRequest);
  return true;
}

/**
 * Registers `lines` as the exact field lines of `res` (as {@link withFieldLines}) and leaves
 * `res.headers` unmade until something reads it. Only for a Response the own server writes: it
 * writes the registered lines, where `Deno.serve` reads the Response's inner header list, which
 * stays empty. Returns false when Deno's Response cannot be stood in for; then nothing was
 * registered and the caller appends the lines itself.
 */
export function lazyFieldLines(res: Response, lines: HeaderList): boolean {
  if (lazyResponse === null) return false;
  fieldLines.set(res, lines);
  Object.defineProperty(res, "headers", lazyResponse);
  return true;
}

/**
 * `req.headers.get(name)` (`name` lower-case), read from the lines `req` arrived with when the
 * server registered them, so that reading one field does not make the whole `Headers`.
 */
export function requestField(req: Request, name: string): string | null {
  const lines = requestFields.get(req);
  return lines === undefined ? req.headers.get(name) : fieldValue(lines, name);
}

/** The field lines `req` arrived with, or its `Headers` when the server did not register them. */
export function requestFieldsOf(req: Request): HeaderList | Headers {
  return requestFields.get(req) ?? req.headers;
}

/** Records the URL as sent, when `new Request` changed it (the server calls this). */
export function keepSentUrl(req: Request, url: string): void {
  sentUrls.set(req, url);
}

/** `req.url` as the client sent the target (no dot-segment or escape normalisation). */
export function sentUrl(req: Request): string {
  return sentUrls.get(req) ?? req.url;
}

/**
 * Registers `lines` as the exact field lines of `res` (the headers it was made from) and returns
 * `res`. Contract: `res.headers` is not changed afterwards, since the own server writes `lines`;
 * whoever needs another header adds it to `lines` before making the Response.
 */
export function withFieldLines(res: Response, lines: HeaderList): Response {
  fieldLines.set(res, lines);
  return res;
}

/**
 * Appends a field line to `res` that must stay a line of its own (a second `www-authenticate`
 * challenge: a browser reads two challenges joined into one line as one bad challenge) and
 * returns `res`, registered for the own server. Only for a Response not handed over yet.
 */
export function appendLine(res: Response, name: string, value: string): Response {
  const lines: HeaderList = [];
  res.headers.forEach((v, n) => lines.push([n, v]));
  lines.push([name.toLowerCase(), value]);
  res.headers.append(name, value);
  return withFieldLines(res, lines);
}

/** Calls `fn` for each field line of `res` as it goes on the wire (lower-case names). */
export function eachFieldLine(res: Response, fn: (value: string, name: string) => void): void {
  const lines = fieldLines.get(res);
  if (lines === undefined) {
    res.headers.forEach(fn);
    return;
  }
  for (let i = 0; i < lines.length; i++) fn(lines[i]![1], lines[i]![0]);
}

/**
 * Registers `reader` as another way to read the body of `res` and returns `res`. Contract: it
 * reads the same bytes as `res.body`, and only one of the two is ever read.
 */
export function withDirectBody(res: Response, reader: BodyReaderLike): Response {
  directBodies.set(res, reader);
  return res;
}

/**
 * The direct reader of `res`'s body, once (the registration is removed), or null when there is
 * none or the body stream was already taken.
 */
export function takeDirectBody(res: Response): BodyReaderLike | null {
  const reader = directBodies.take(res);
  if (reader === undefined) return null;
  return res.bodyUsed || res.body?.locked ? null : reader;
}

/**
 * A request body stream of `bytes`, made lazily: a Request given it does not copy the bytes, as one
 * given the bytes themselves does. Pair it with {@link withWholeBody}.
 */
export function streamOf(bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    pull(ctrl) {
      ctrl.enqueue(bytes);
      ctrl.close();
    },
  }, { highWaterMark: 0 });
}

/** Bytes lent by their owner, and how to give them back once nothing reads them any more. */
export interface LentBytes {
  readonly bytes: Uint8Array;
  /** Call at most once, when nothing will read `bytes` again; they may be overwritten after. */
  readonly release: (() => void) | null;
}

/**
 * Registers `bytes` as the whole body of `req` and returns `req`. Contract: `req.body` is a stream
 * of the same bytes ({@link streamOf}), and only one of the two is ever read. With `release`, the
 * bytes are lent: the server reuses their buffer once {@link takeLentBody}'s taker releases them.
 */
export function withWholeBody(req: Request, bytes: Uint8Array, release?: () => void): Request {
  wholeBodies.set(req, { bytes, release: release ?? null });
  return req;
}

/**
 * Registers how to give back the memory under the chunks of `req.body`, a stream the server reads
 * into buffers it lends. Contract: call it only once the stream was read to its end and nothing
 * reads any chunk of it any more; the buffers may be overwritten after.
 */
export function withBodyRelease(req: Request, release: () => void): void {
  bodyReleases.set(req, release);
}

/** The release registered by {@link withBodyRelease}, once; null when there is none. */
export function takeBodyRelease(req: Request): (() => void) | null {
  return bodyReleases.take(req) ?? null;
}

/**
 * The whole body of `req` registered by {@link withWholeBody}, once (the registration is removed),
 * or null when there is none or its stream was already taken; with the release to call once
 * nothing reads the bytes any more (null when they are not lent). A caller that cannot tell when
 * that is must not call it.
 */
export function takeLentBody(req: Request): LentBytes | null {
  const lent = wholeBodies.take(req);
  if (lent === undefined) return null;
  return req.bodyUsed || req.body?.locked ? null : lent;
}
