/**
 * A self-signed certificate for 127.0.0.1 and localhost, made once per test process with openssl
 * (EC P-256, `CA:FALSE` so rustls accepts it as a server certificate and as a trust anchor).
 */

import { deadline, findCommand } from "./helpers.ts";

export interface TestCert {
  cert: string;
  key: string;
  certFile: string;
  keyFile: string;
  dir: string;
}

/**
 * Why the tests that need the certificate cannot run here, or null. Under `CI=true` always null:
 * there a missing openssl fails those tests instead of skipping them.
 */
export const TLS_SKIP_REASON: string | null =
  Deno.env.get("CI") !== "true" && findCommand("openssl") === null
    ? "openssl is not installed (apt-get install openssl)"
    : null;

/** Tests that need the certificate. */
export const withCert = {
  /**
   * A {@link deadline.test} given the certificate. Where openssl is missing (outside CI) it is
   * listed as ignored, the reason in its name, rather than reported as passed.
   */
  test(
    name: string,
    fn: (ctx: { tls: TestCert; signal: AbortSignal }) => Promise<void>,
    /** Another reason the test cannot run here (it is then ignored likewise), or null. */
    skip: string | null = null,
  ): void {
    const reason = TLS_SKIP_REASON ?? skip;
    deadline.test({
      name: reason === null ? name : `${name} (SKIPPED: ${reason})`,
      ignore: reason !== null,
    }, async (signal) => fn({ tls: await testCert(), signal }));
  },
};

let cached: Promise<TestCert> | null = null;

/** The certificate and key as PEM text and as files in a temporary directory. */
export function testCert(): Promise<TestCert> {
  cached ??= make();
  return cached;
}

async function make(): Promise<TestCert> {
  const dir = await Deno.makeTempDir({ prefix: "pf-tls-" });
  const certFile = `${dir}/cert.pem`;
  const keyFile = `${dir}/key.pem`;
  const out = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-days",
      "2",
      "-keyout",
      keyFile,
      "-out",
      certFile,
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`openssl failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  globalThis.addEventListener("unload", () => {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch { /* already gone */ }
  });
  return {
    cert: await Deno.readTextFile(certFile),
    key: await Deno.readTextFile(keyFile),
    certFile,
    keyFile,
    dir,
  };
}
