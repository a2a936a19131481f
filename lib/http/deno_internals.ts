/**
 * @module deno_internals
 * The only place the relay reads Deno's private state. Three internals are used, by the own
 * HTTP/1.1 server (`server/`) and the HTTP/1.1 client (`upstream/http1.ts`); each is probed with
 * known objects (the read op on the first connection), and when a Deno upgrade changes it the
 * public-API fallback takes over (same behaviour, slower). `internalsFound` and
 * `directReadAvailable` say which were found; a test asserts all three, so an upgrade that
 * changes one is noticed.
 *
 * Each is kept because a number justifies it (`deno bench bench/deno_internals.ts`, Deno 2.9.6,
 * this project's 2-core machine; the own server spends ~55 µs of CPU per relayed request):
 *
 * | internal | saves per request | fallback |
 * | --- | --- | --- |
 * | {@link staticBody}: the bytes of a body given as bytes or text | 4-5 µs: no stream made, locked, read twice and released for a JSON answer | read the body's stream |
 * | {@link attachCancel}: a Request's lazy signal driven through its inner `onCancel` | ~3.7 µs: no AbortController and dependent signal per request | `signal` in `RequestInit` |
 * | {@link readConn}: a socket read through Deno's op, by the connection's resource id | ~0.5 µs per read (3-4 per request, 1 per SSE event), and ~1 KB of memory per open stream (`bench/stream_mem.ts`: 48 -> 41 KB) | `conn.read` |
 *
 * Not used any more, and why: Deno's private header list (repeated response fields are handed over
 * through `handoff.ts`, public API, ~1.3 µs); `Object.defineProperty` on `req.url` (the raw target
 * is handed over through `handoff.ts`).
 */

const utf8 = new TextEncoder();

interface ResponseKeys {
  inner: symbol;
  lazy: symbol | undefined;
}

function staticBodyWith(res: Response, keys: ResponseKeys): Uint8Array | null {
  const r = res as unknown as Record<symbol, unknown>;
  const inner = r[keys.inner] as { body?: unknown } | undefined;
  const body = inner?.body as { streamOrStatic?: unknown } | null | undefined;
  if (body === null || body === undefined) {
    const lazy = keys.lazy === undefined ? undefined : r[keys.lazy];
    if (typeof lazy === "string") return utf8.encode(lazy);
    if (lazy instanceof Uint8Array) return lazy;
    return null;
  }
  const sos = body.streamOrStatic as { body?: unknown; consumed?: unknown } | undefined;
  if (
    sos === undefined || sos === null || sos instanceof ReadableStream || sos.consumed !== false
  ) {
    return null;
  }
  return sos.body instanceof Uint8Array ? sos.body : null;
}

/** Where Deno keeps a Response's inner state and its lazily made static body; null if changed. */
const RESPONSE_KEYS: ResponseKeys | null = (() => {
  try {
    const probe = new Response(new Uint8Array([7, 8]));
    const syms = Object.getOwnPropertySymbols(probe);
    const inner = syms.find((x) => x.description === "response");
    const lazy = syms.find((x) => x.description === "lazy static body");
    if (inner === undefined) return null;
    const keys = { inner, lazy };
    const bytes = staticBodyWith(probe, keys);
    if (bytes === null || bytes.byteLength !== 2 || bytes[1] !== 8) return null;
    const text = staticBodyWith(new Response("hé"), keys);
    if (text !== null && (text.byteLength !== 3 || text[2] !== 0xa9)) return null;
    if (staticBodyWith(new Response(new ReadableStream()), keys) !== null) return null;
    return keys;
  } catch {
    return null;
  }
})();

/**
 * The response's body when it was given as bytes or text and not read yet, else null (then the
 * caller reads `res.body`). Lets a JSON answer go out with its head in one write, no stream made.
 */
export function staticBody(res: Response): Uint8Array | null {
  if (RESPONSE_KEYS === null) return null;
  // `bodyUsed` covers a body someone already read through the public API.
  if (res.bodyUsed) return null;
  return staticBodyWith(res, RESPONSE_KEYS);
}

type InnerRequest = { onCancel?: (abort: () => void) => void };

/**
 * The key of a Request's inner state when its signal can be driven through it, else null.
 *
 * Deno's Request (2.9) makes its signal lazily on first access and then registers it with its
 * inner request's `onCancel`, which is how `Deno.serve` aborts it; clones (`new Request(req)`,
 * `fetch(req)`) follow it. Checked once with a probe request.
 */
const REQUEST_KEY: symbol | null = (() => {
  try {
    const req = new Request("http://probe.invalid/");
    const key = Object.getOwnPropertySymbols(req).find((s) => s.description === "request");
    if (key === undefined) return null;
    const inner = (req as unknown as Record<symbol, InnerRequest | undefined>)[key];
    if (typeof inner !== "object" || inner === null || "onCancel" in inner) return null;
    let abort: (() => void) | undefined;
    inner.onCancel = (f) => (abort = f);
    const signal = req.signal;
    const clone = new Request(req);
    if (signal.aborted || abort === undefined) return null;
    abort();
    return signal.aborted && clone.signal.aborted ? key : null;
  } catch {
    return null;
  }
})();

/** Whether {@link attachCancel} works on this Deno; when false, pass `signal` to `new Request`. */
export const cancelHookAvailable: boolean = REQUEST_KEY !== null;

/**
 * Registers `onCancel` as the way `req.signal` gets aborted: when the signal is made (on first
 * access), `onCancel` receives the function that aborts it. Only when {@link cancelHookAvailable}.
 */
export function attachCancel(req: Request, onCancel: (abort: () => void) => void): void {
  (req as unknown as Record<symbol, InnerRequest>)[REQUEST_KEY!]!.onCancel = onCancel;
}

interface CoreRead {
  read(rid: number, buf: Uint8Array): Promise<number>;
}

/** Deno's op layer, whose `read` every `Conn.read` calls; null if not found. */
const CORE: CoreRead | null = (() => {
  try {
    const ns = Deno as unknown as Record<symbol, { core?: Partial<CoreRead> } | undefined> & {
      internal?: symbol;
    };
    const core = ns.internal === undefined ? undefined : ns[ns.internal]?.core;
    return typeof core?.read === "function" ? core as CoreRead : null;
  } catch {
    return null;
  }
})();

/** The key of a connection's resource id, found on the first connection read. */
let ridKey: symbol | null | undefined = CORE === null ? null : undefined;

function ridOf(conn: Deno.Conn): number | undefined {
  if (ridKey === null) return undefined;
  if (ridKey === undefined) {
    const key = Object.getOwnPropertySymbols(conn).find((s) =>
      s.description === "Deno.internal.rid"
    );
    // Not one of Deno's connections (a TLS socket of `node:tls`, server/tls_listener.ts): the next
    // one is asked, so that such a first read does not turn the op off for every other.
    if (key === undefined) return undefined;
    ridKey = key;
  }
  const rid = (conn as unknown as Record<symbol, unknown>)[ridKey];
  return typeof rid === "number" ? rid : undefined;
}

/**
 * Reads from `conn` into `buf` (not empty): the number of bytes read, or 0 or null at the end of
 * the stream. `conn.read` runs the same op inside an async function that also records each read
 * in a Set (for `unref`, which the relay never calls): per read one more suspended frame, three
 * more promises, and, for a stream waiting on its next event, their memory all the while.
 */
export function readConn(conn: Deno.Conn, buf: Uint8Array): Promise<number | null> {
  const rid = ridOf(conn);
  return rid === undefined ? conn.read(buf) : CORE!.read(rid, buf);
}

/** Whether {@link readConn} reads through the op directly (else through `conn.read`). */
export function directReadAvailable(conn: Deno.Conn): boolean {
  return ridOf(conn) !== undefined;
}

/**
 * Which internals were found on this Deno version. For tests and diagnostics: a Deno upgrade that
 * changes one shows up here first.
 */
export const internalsFound: Readonly<
  { staticBody: boolean; cancelHook: boolean; readOp: boolean }
> = {
  staticBody: RESPONSE_KEYS !== null,
  cancelHook: cancelHookAvailable,
  readOp: CORE !== null,
};
