/**
 * @module errors
 * The relay's one error type and the JSON shape it answers with.
 *
 * Owns: status codes, stable `code` strings and client-safe messages for every refusal or failure
 * the relay produces itself. Must never: put raw error text, stack traces, internal host names or
 * secrets into a message (they reach clients). Server A's own error responses never pass through
 * here: they are relayed untouched.
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

/** Stable machine-readable codes. Clients and log queries may depend on these: never rename. */
export type ErrorCode =
  | "not_found"
  | "invalid_path"
  | "unknown_route"
  | "invalid_api_key"
  | "missing_api_key"
  | "forbidden"
  | "unauthorized"
  | "rate_limited"
  | "too_many_concurrent"
  | "too_many_connections"
  | "body_too_large"
  | "body_timeout"
  | "headers_too_large"
  | "bad_request"
  | "body_not_allowed"
  | "bad_header_value"
  | "request_header_timeout"
  | "upstream_unreachable"
  | "upstream_connect_timeout"
  | "upstream_timeout"
  | "upstream_protocol_error"
  | "upstream_stream_broken"
  | "overloaded"
  | "client_closed"
  | "internal_error";

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

  constructor(
    status: number,
    code: ErrorCode,
    message: string,
    options: { headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "RelayError";
    this.status = status;
    this.code = code;
    this.type = TYPE_BY_STATUS[status] ??
      (status >= 500 ? "internal_server_error" : "invalid_request_error");
    this.headers = FINAL_STATUSES.has(status)
      ? { "x-should-retry": "false", ...options.headers }
      : options.headers;
  }
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
  return new RelayError(500, "internal_error", "The relay failed to handle this request.", {
    cause: err,
  });
}

/**
 * The name of a thrown value (`TimedOut`, `ConnectionRefused`, ...) for messages and logs: the
 * name tells what went wrong without the raw text, which can name internal hosts.
 */
export function errName(err: unknown): string {
  return err instanceof Error ? err.name : "error";
}
