/**
 * @module admin
 * Who may see the relay's own diagnostics (`/debug/info`, `/metrics`, `/dashboard`).
 *
 * Owns: the admin access rule. With `ADMIN_TOKEN` set, `Authorization: Bearer <token>` is required
 * (constant-time compare). Without it, only loopback clients and clients in `ALLOW_IPS` are served.
 * Must never: log or echo the token, or let a client-supplied forwarding header decide (the caller
 * passes the client IP it already resolved under the TRUSTED_PROXIES rule).
 */

import type { Config } from "./config.ts";
import { timingSafeEqual } from "./credentials.ts";
import { RelayError } from "./errors.ts";
import { isLoopback } from "./ip.ts";

/** Null when the request may see diagnostics, else the error to answer with. */
export function checkAdmin(
  req: Request,
  clientIp: string,
  config: Pick<Config, "adminToken" | "allowIps">,
): RelayError | null {
  if (config.adminToken !== undefined) {
    const auth = req.headers.get("authorization") ?? "";
    const m = /^bearer[ \t]+(.+)$/i.exec(auth);
    if (m !== null && timingSafeEqual(m[1]!.trim(), config.adminToken)) return null;
    return new RelayError(
      401,
      "unauthorized",
      "This endpoint needs Authorization: Bearer <ADMIN_TOKEN>.",
      {
        headers: { "www-authenticate": 'Bearer realm="proxy-forwarder"' },
      },
    );
  }
  if (isLoopback(clientIp) || config.allowIps?.contains(clientIp)) return null;
  return new RelayError(
    403,
    "forbidden",
    "Diagnostics are served to loopback and ALLOW_IPS clients only; set ADMIN_TOKEN to use them remotely.",
  );
}
