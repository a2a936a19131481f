/**
 * @module tls
 * Loads the relay's own HTTPS certificate and key (`TLS_CERT_FILE`, `TLS_KEY_FILE`).
 *
 * Owns: reading the two PEM files and the operator-facing error when they are missing or not PEM.
 * `Deno.serve` then serves HTTPS, offering HTTP/2 and HTTP/1.1 by ALPN.
 * Must never: log or echo key material.
 */

import { type Config, ConfigError } from "./config.ts";

/** A certificate chain and private key, PEM. */
export interface TlsPair {
  cert: string;
  key: string;
}

/** Reads the configured pair, or returns undefined when TLS is off. Throws {@link ConfigError}. */
export function loadTlsFiles(
  config: Pick<Config, "tlsCertFile" | "tlsKeyFile">,
  readFile: (path: string) => string,
): TlsPair | undefined {
  if (config.tlsCertFile === undefined || config.tlsKeyFile === undefined) return undefined;
  const read = (name: string, path: string, marker: RegExp, expected: string): string => {
    let text: string;
    try {
      text = readFile(path);
    } catch (err) {
      const why = err instanceof Error ? err.name : "unreadable";
      throw new ConfigError(
        `${name}=${JSON.stringify(path)} cannot be read (${why}): check the path and that the ` +
          `relay's user may read it.`,
      );
    }
    if (!marker.test(text)) {
      throw new ConfigError(`${name}=${JSON.stringify(path)} is not ${expected}.`);
    }
    return text;
  };
  return {
    cert: read(
      "TLS_CERT_FILE",
      config.tlsCertFile,
      /-----BEGIN CERTIFICATE-----/,
      "a PEM certificate (-----BEGIN CERTIFICATE-----); use the full chain, e.g. fullchain.pem",
    ),
    key: read(
      "TLS_KEY_FILE",
      config.tlsKeyFile,
      /-----BEGIN [A-Z ]*PRIVATE KEY-----/,
      "a PEM private key (-----BEGIN PRIVATE KEY-----)",
    ),
  };
}
