/**
 * The seed-stack row: `bench/seed_stack.py` (FastAPI + httpx, the original deployment guide's
 * stack) under uvicorn, one worker, default event loop and HTTP implementation. It runs on the
 * system interpreter with Debian's `python3-fastapi`, `python3-uvicorn` and `python3-httpx`, never
 * on a `python3` that happens to be first on PATH (pyenv and the like have other packages or none),
 * so every run measures the same stack. uvicorn is started directly (one worker: no supervisor
 * process), so the PID we measure is the server's own.
 */

import { BENCH, HOST, type Proc, spawn, waitForPort } from "./common.ts";

/** The interpreter Debian's packages are installed for. */
export const SEED_PYTHON = "/usr/bin/python3";

/** The one-line install, quoted in messages and docs. */
export const SEED_INSTALL = "apt-get install -y python3-fastapi python3-uvicorn python3-httpx";

/**
 * Whether the stack can run here; on success `versions` reads like
 * "FastAPI 0.92.0, uvicorn 0.17.6, httpx 0.23.3, Python 3.11.2".
 */
export async function seedStackAvailable(): Promise<
  { ok: true; versions: string } | { ok: false; reason: string }
> {
  const probe = "import sys, fastapi, uvicorn, httpx; print(f'FastAPI {fastapi.__version__}, " +
    "uvicorn {uvicorn.__version__}, httpx {httpx.__version__}, Python {sys.version.split()[0]}')";
  try {
    const out = await new Deno.Command(SEED_PYTHON, {
      args: ["-c", probe],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(30_000),
    }).output();
    if (out.success) return { ok: true, versions: new TextDecoder().decode(out.stdout).trim() };
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").at(-1) ?? "";
    return { ok: false, reason: `${SEED_PYTHON} cannot import fastapi, uvicorn, httpx (${err})` };
  } catch (err) {
    return { ok: false, reason: `${SEED_PYTHON} did not run (${err})` };
  }
}

/** Starts the seed stack on `port`, forwarding to `upstream`, pinned to `cpu`. */
export async function startSeedStack(
  port: number,
  opts: { upstream: string; cpu: string; logFile: string },
): Promise<Proc> {
  const proc = spawn("seed-stack", [
    SEED_PYTHON,
    "-m",
    "uvicorn",
    "seed_stack:app",
    "--app-dir",
    BENCH,
    "--host",
    HOST,
    "--port",
    String(port),
    "--workers",
    "1",
    // Like nginx's `access_log off` and the relay's ACCESS_LOG=0 in the same table.
    "--no-access-log",
    "--log-level",
    "warning",
    // The upstream's Date and Server pass through; uvicorn would add a second of each.
    "--no-server-header",
    "--no-date-header",
  ], { cpu: opts.cpu, env: { UPSTREAM: opts.upstream }, logFile: opts.logFile });
  await waitForPort(port, 30_000, proc);
  return proc;
}
