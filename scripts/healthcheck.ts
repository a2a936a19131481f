/**
 * Container health check: `GET /` on the relay inside the same container (or host), exit 0 when it
 * answers `{"ok":true}`, 1 otherwise. The image has no curl; this runs with
 * `--allow-net=127.0.0.1 --allow-env=PORT,TLS_CERT_FILE` (plus, for a relay serving HTTPS with a
 * certificate for its public name, `--unsafely-ignore-certificate-errors=127.0.0.1`, which the
 * Dockerfile passes: this only asks our own process on loopback whether it is alive).
 */

const port = Deno.env.get("PORT")?.trim() || "8000";
const scheme = Deno.env.get("TLS_CERT_FILE")?.trim() ? "https" : "http";

try {
  const res = await fetch(`${scheme}://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(4000) });
  const body = await res.json().catch(() => null) as { ok?: unknown } | null;
  Deno.exit(res.ok && body?.ok === true ? 0 : 1);
} catch {
  Deno.exit(1);
}
