/**
 * @module errors
 * The relay's one error type, the one table every refusal or failure it produces comes from, and
 * the JSON shape it answers with.
 *
 * Owns: status codes, stable `code` strings, types and client-safe messages for every refusal or
 * failure the relay produces itself ({@link ERRORS}). Must never: put raw error text, stack
 * traces, internal host names or secrets into a message (they reach clients). Server A's own error
 * responses never pass through here: they are relayed untouched.
 */

/** Error `type` values, the same vocabulary Server A (claude-code-hub) uses. */
export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
  | "not_found_error"
  | "request_too_large"
  | "rate_limit_error"
  | "internal_server_error"
  | "bad_gateway_error"
  | "service_unavailable_error"
  | "gateway_timeout_error"
  | "client_closed_request";

/** One answer: its client-safe message, and the headers it always carries. */
interface Answer {
  /** The text, or a function of the values it carries (a limit, a route id). */
  readonly message: string | ((params: never) => string);
  /** Headers on every answer of this kind; a call may add or override per answer. */
  readonly headers?: Readonly<Record<string, string>>;
}

/**
 * A code's entry: its status and type, then its one answer, or several answers that a call tells
 * apart with `reason` (the same refusal reached by different routes, each with its own text).
 */
type ErrorSpec =
  & { readonly status: number; readonly type: ErrorType }
  & (Answer | { readonly variants: Readonly<Record<string, Answer>> });

/**
 * Every error the relay answers with itself, by code. The codes are stable: clients and log
 * queries depend on them, so never rename one. The docs' error table is checked against this one
 * (tests/error_table_test.ts). The access log has one more code, `upstream_stream_broken`, for a
 * response that broke after its head had gone out: that is never an answer, so it is not here.
 */
export const ERRORS = {
  bad_request: {
    status: 400,
    type: "invalid_request_error",
    // A request head or framing the relay will not parse: the server closes the connection.
    variants: {
      control_character: { message: "Control character in the request head." },
      request_line: { message: "Malformed request line." },
      method: { message: "Malformed request method." },
      request_target: { message: "Malformed request target." },
      http_version: { message: "Unsupported HTTP version." },
      folded_header: { message: "Folded header lines are not accepted." },
      header_line: { message: "Malformed header line." },
      header_name: { message: "Malformed header name." },
      head: { message: "Malformed request head." },
      duplicate_host: { message: "More than one Host header." },
      missing_host: { message: "Missing Host header." },
      invalid_host: { message: "Invalid Host header." },
      target_form: { message: "Unsupported request-target form." },
      target: { message: "Bad request target." },
      unrepresentable: { message: "The request cannot be represented (method or Host)." },
      content_length: { message: "Invalid content-length." },
      conflicting_content_length: { message: "Conflicting content-length headers." },
      announced_length: { message: "Invalid or conflicting content-length." },
      length_and_chunked: { message: "Both content-length and transfer-encoding." },
      http10_transfer_encoding: { message: "Transfer-encoding on an HTTP/1.0 request." },
      transfer_encoding: {
        message: "Unsupported transfer-encoding (the last coding must be chunked).",
      },
      chunked_body: { message: "Malformed chunked request body." },
    },
  },
  invalid_path: {
    status: 400,
    type: "invalid_request_error",
    message: "The request path is not allowed.",
  },
  body_not_allowed: {
    status: 400,
    type: "invalid_request_error",
    message: ({ method }: { method: string }) =>
      `A ${method} request cannot have a body here; send it with POST.`,
  },
  bad_header_value: {
    status: 400,
    type: "invalid_request_error",
    message: "A request header has a character that cannot be sent in HTTP/1.1 (above U+00FF).",
  },
  missing_api_key: {
    status: 401,
    type: "authentication_error",
    message: "This route needs an API key: send the route's access key as your API key.",
  },
  invalid_api_key: {
    status: 401,
    type: "authentication_error",
    message: "Invalid API key for this route.",
  },
  unauthorized: {
    status: 401,
    type: "authentication_error",
    message: "This endpoint needs Authorization: Bearer <ADMIN_TOKEN>.",
    headers: { "www-authenticate": 'Bearer realm="proxy-forwarder"' },
  },
  forbidden: {
    status: 403,
    type: "permission_error",
    variants: {
      allow_ips: { message: "Your address is not allowed to use this relay (ALLOW_IPS)." },
      diagnostics: {
        message:
          "Diagnostics are served to loopback and ALLOW_IPS clients only; set ADMIN_TOKEN to use them remotely.",
      },
    },
  },
  not_found: {
    status: 404,
    type: "not_found_error",
    variants: {
      path: { message: "Not found: this relay forwards /v1/... and /v1beta/... only." },
      dashboard: { message: "No such dashboard resource." },
    },
  },
  unknown_route: {
    status: 404,
    type: "not_found_error",
    message: ({ id }: { id: string }) => `No route /u${id} is configured on this relay.`,
  },
  body_timeout: {
    status: 408,
    type: "invalid_request_error",
    message: ({ idleTimeoutMs }: { idleTimeoutMs: number }) =>
      `The request body stopped arriving for ${
        idleTimeoutMs / 1000
      } s (CLIENT_BODY_TIMEOUT_SEC); the request was aborted.`,
    // The rest of the body is never read: the connection cannot be reused.
    headers: { connection: "close" },
  },
  request_header_timeout: {
    status: 408,
    type: "invalid_request_error",
    message: "The request headers did not arrive in time.",
    headers: { connection: "close" },
  },
  body_too_large: {
    status: 413,
    type: "invalid_request_error",
    message: ({ maxBytes }: { maxBytes: number }) =>
      `Request body too large: the limit is ${formatSize(maxBytes)} (MAX_BODY_MB).`,
    // The rest of the body is never read: the connection cannot be reused.
    headers: { connection: "close" },
  },
  rate_limited: {
    status: 429,
    type: "rate_limit_error",
    // `Retry-After` (and `X-RateLimit-*`) depend on the moment: each call adds them.
    variants: {
      rate_limit: {
        message: (p: { limit: number; windowSec: number; retryAfterSec: number }) =>
          `Rate limit exceeded (${p.limit} requests per ${describeWindow(p.windowSec)}); ` +
          `retry after ${Math.max(1, p.retryAfterSec)} s.`,
      },
      auth_failures: {
        message: "Too many failed API key attempts from your address; try again later.",
      },
    },
  },
  too_many_concurrent: {
    status: 429,
    type: "rate_limit_error",
    message: ({ max }: { max: number }) =>
      `Too many requests in flight (limit ${max} at once); retry when one finishes.`,
    headers: { "Retry-After": "1" },
  },
  too_many_connections: {
    status: 429,
    type: "rate_limit_error",
    message: ({ max }: { max: number }) =>
      `Too many connections from this address (MAX_CONNECTIONS_PER_IP is ${max}); close one or ` +
      "retry shortly.",
    headers: { "Retry-After": "1", connection: "close" },
  },
  headers_too_large: {
    status: 431,
    type: "invalid_request_error",
    variants: {
      // The server refuses a head over its buffer before parsing it.
      raw: {
        message: ({ maxBytes }: { maxBytes: number }) =>
          `Request header section too large (limit ${maxBytes} bytes).`,
      },
      // The pipeline's smaller limit on the parsed header section.
      parsed: {
        message: ({ maxBytes }: { maxBytes: number }) =>
          `Request header section too large (limit ${maxBytes / 1024} KiB).`,
      },
    },
  },
  client_closed: {
    status: 499,
    type: "client_closed_request",
    message: "The client closed the request.",
  },
  internal_error: {
    status: 500,
    type: "internal_server_error",
    variants: {
      // Anything thrown that is not a RelayError: the original goes to the log only.
      unexpected: { message: "The relay failed to handle this request." },
      // The placeholder of a protocol switch, served by a server that cannot switch.
      upgrade_unsupported: { message: "This server cannot switch protocols." },
    },
  },
  upstream_unreachable: {
    status: 502,
    type: "bad_gateway_error",
    message: "Server A is unreachable from the relay.",
  },
  upstream_protocol_error: {
    status: 502,
    type: "bad_gateway_error",
    variants: {
      invalid_response: { message: "Server A closed the connection or sent an invalid response." },
      unusable_response: { message: "Server A sent a response the relay cannot pass on." },
      unknown: { message: "The relay could not complete the request." },
    },
  },
  overloaded: {
    status: 503,
    type: "service_unavailable_error",
    variants: {
      connections: {
        message: "The relay is at its connection limit (MAX_CONNECTIONS); retry shortly.",
        headers: { "Retry-After": "1", connection: "close" },
      },
      rate_limit_busy: {
        message: "The relay is too busy to apply its rate limit right now; retry shortly.",
        headers: { "Retry-After": "1" },
      },
      rate_limit_store: {
        message: "The relay's rate-limit store is unavailable; retry shortly.",
        headers: { "Retry-After": "5" },
      },
    },
  },
  upstream_connect_timeout: {
    status: 504,
    type: "gateway_timeout_error",
    message: "Connecting to Server A timed out.",
  },
  upstream_timeout: {
    status: 504,
    type: "gateway_timeout_error",
    message: "Server A did not answer in time.",
  },
} as const satisfies Record<string, ErrorSpec>;

/** Stable machine-readable codes, one per entry of {@link ERRORS}. */
export type ErrorCode = keyof typeof ERRORS;

type NoParams = Record<never, never>;
type ParamsOf<A> = A extends { readonly message: (params: infer P) => string } ? P : NoParams;

/** The values a code's message needs, and `reason` where the code has several answers. */
export type ErrorParams<C extends ErrorCode> = (typeof ERRORS)[C] extends
  { readonly variants: infer V } ? { [R in keyof V]: { reason: R } & ParamsOf<V[R]> }[keyof V]
  : ParamsOf<(typeof ERRORS)[C]>;

/** What any call may add: headers for this one answer, and the cause kept for the log. */
export interface ErrorExtras {
  headers?: Record<string, string>;
  cause?: unknown;
}

/** The arguments after the code: optional when the code's message needs nothing. */
export type ErrorArgs<C extends ErrorCode> = NoParams extends ErrorParams<C>
  ? [params?: ErrorExtras]
  : [params: ErrorParams<C> & ErrorExtras];

const TYPE_BY_STATUS: Record<number, ErrorType> = {
  400: "invalid_request_error",
  401: "authentication_error",
  403: "permission_error",
  404: "not_found_error",
  405: "invalid_request_error",
  408: "invalid_request_error",
  413: "invalid_request_error",
  429: "rate_limit_error",
  431: "invalid_request_error",
  499: "client_closed_request",
  500: "internal_server_error",
  502: "bad_gateway_error",
  503: "service_unavailable_error",
  504: "gateway_timeout_error",
};

/**
 * The relay's own refusals that no retry can change (wrong key, forbidden, no such route, too
 * large). Claude Code retries a 401 for as long as it is let, Codex and the SDKs back off and
 * resend; `x-should-retry: false` makes them give up at once. Never added to A's answers: those
 * pass through untouched and A's own retry advice stands.
 */
export const FINAL_STATUSES: ReadonlySet<number> = new Set([401, 403, 404, 413, 431]);

/** A refusal or failure produced by the relay itself, safe to show to the client. */
export class RelayError extends Error {
  readonly status: number;
  readonly code: ErrorCode;
  readonly type: ErrorType;
  /**
   * Extra response headers, e.g. `Retry-After` on 429, `x-should-retry: false` on the final
   * refusals ({@link FINAL_STATUSES}).
   */
  readonly headers: Record<string, string> | undefined;

  /** Prefer {@link relayError}, which takes status, type, message and headers from the table. */
  constructor(
    status: number,
    code: ErrorCode,
    message: string,
    options: {
      headers?: Record<string, string> | undefined;
      cause?: unknown;
      type?: ErrorType;
    } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "RelayError";
    this.status = status;
    this.code = code;
    this.type = options.type ?? TYPE_BY_STATUS[status] ??
      (status >= 500 ? "internal_server_error" : "invalid_request_error");
    this.headers = FINAL_STATUSES.has(status)
      ? { "x-should-retry": "false", ...options.headers }
      : options.headers;
  }
}

/**
 * The error for `code` as {@link ERRORS} declares it: status, type, message (filled from
 * `params`) and headers, plus any headers and cause the call adds.
 */
export function relayError<C extends ErrorCode>(code: C, ...args: ErrorArgs<C>): RelayError {
  const params: { reason?: string } & ErrorExtras = args[0] ?? {};
  const spec: ErrorSpec = ERRORS[code];
  const answer = "variants" in spec ? spec.variants[params.reason ?? ""] : spec;
  if (answer === undefined) throw new TypeError(`no answer ${params.reason} for ${code}`);
  const message = typeof answer.message === "string"
    ? answer.message
    : (answer.message as (p: unknown) => string)(params);
  const headers = answer.headers === undefined
    ? params.headers
    : { ...answer.headers, ...params.headers };
  return new RelayError(spec.status, code, message, {
    headers,
    cause: params.cause,
    type: spec.type,
  });
}

/** The JSON body Server A uses for errors: `{"error":{"message","type","code"}}`. */
export function errorBody(err: RelayError, requestId?: string): string {
  const body: Record<string, unknown> = {
    error: { message: err.message, type: err.type, code: err.code },
  };
  if (requestId !== undefined) body.request_id = requestId;
  return JSON.stringify(body);
}

/** A JSON error response for a relay error. */
export function errorResponse(err: RelayError, requestId?: string): Response {
  const headers = new Headers(err.headers);
  headers.set("content-type", "application/json; charset=utf-8");
  if (requestId !== undefined) headers.set("x-request-id", requestId);
  return new Response(errorBody(err, requestId), { status: err.status, headers });
}

/** Wraps anything thrown on the request path into a client-safe RelayError. */
export function toRelayError(err: unknown): RelayError {
  if (err instanceof RelayError) return err;
  return relayError("internal_error", { reason: "unexpected", cause: err });
}

function formatSize(bytes: number): string {
  const mb = bytes / (1024 * 1024);
  return mb >= 1 ? `${Math.round(mb * 100) / 100} MB` : `${bytes} bytes`;
}

function describeWindow(sec: number): string {
  const names: Record<number, string> = { 1: "second", 60: "minute", 3600: "hour", 86400: "day" };
  return names[sec] ?? `${sec} s`;
}

/**
 * The name of a thrown value (`TimedOut`, `ConnectionRefused`, ...) for messages and logs: the
 * name tells what went wrong without the raw text, which can name internal hosts.
 */
export function errName(err: unknown): string {
  return err instanceof Error ? err.name : "error";
}
