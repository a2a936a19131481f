/**
 * @module admin
 * Who may see the relay's own diagnostics (`/debug/info`, `/metrics`, `/dashboard`).
 *
 * Owns: the admin access rule. With `ADMIN_TOKEN` set, `Authorization: Bearer <token>` is required
 * (constant-time compare); `Authorization: Basic` with the token as the password (any user name)
 * is accepted too, so a browser can open the dashboard and Prometheus can use `basic_auth`.
 * Without a token, only loopback clients and clients in `ALLOW_IPS` are served.
 * Must never: log or echo the token, or let a client-supplied forwarding header decide (the caller
 * passes the client IP it already resolved under the TRUSTED_PROXIES rule).
 */

import type { Config } from "../config/mod.ts";
import { timingSafeEqual } from "./credentials.ts";
import { type RelayError, relayError } from "../errors.ts";
import { isLoopback } from "../config/mod.ts";

/** Null when the request may see diagnostics, else the error to answer with. */
export function checkAdmin(
  req: Request,
  clientIp: string,
  config: Pick<Config, "adminToken" | "allowIps">,
): RelayError | null {
  if (config.adminToken !== undefined) {
    const given = presentedToken(req.headers.get("authorization") ?? "");
    if (given !== null && timingSafeEqual(given, config.adminToken)) return null;
    return relayError("unauthorized");
  }
  if (isLoopback(clientIp) || config.allowIps?.contains(clientIp)) return null;
  return relayError("forbidden", { reason: "diagnostics" });
}

/** The token in `Bearer <token>`, or the password in `Basic base64(user:password)`. */
function presentedToken(auth: string): string | null {
  const m = /^(bearer|basic)[ \t]+(.+)$/i.exec(auth);
  if (m === null) return null;
  const value = m[2]!.trim();
  if (m[1]!.toLowerCase() === "bearer") return value;
  let decoded: string;
  try {
    decoded = new TextDecoder("utf-8", { fatal: true }).decode(
      Uint8Array.from(atob(value), (c) => c.charCodeAt(0)),
    );
  } catch {
    return null;
  }
  const colon = decoded.indexOf(":");
  return colon === -1 ? null : decoded.slice(colon + 1);
}
