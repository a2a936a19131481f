/**
 * The Portkey AI gateway (`npm:@portkey-ai/gateway`, Node) as a reference row. It is installed
 * with npm into a scratch directory outside the repository (default
 * `~/.cache/proxy-forwarder-bench`, or `$PF_BENCH_CACHE`) and started directly with `node` (no
 * `npx` wrapper process, so the PID we measure is the gateway's own):
 *   node <dir>/node_modules/@portkey-ai/gateway/build/start-server.js --port=N --headless
 * It routes on request headers: `x-portkey-provider: openai` and
 * `x-portkey-custom-host: http://127.0.0.1:<upstream>/v1`. It has no listen-address option (it
 * binds all interfaces); the benchmark only ever sends it traffic on 127.0.0.1.
 */

import { type Proc, progress, spawn, waitForPort } from "./common.ts";

/** Pinned so every run measures the same gateway. */
export const PORTKEY_VERSION = "1.15.2";

function cacheDir(): string {
  const home = Deno.env.get("HOME") ?? "/tmp";
  return Deno.env.get("PF_BENCH_CACHE") ?? `${home}/.cache/proxy-forwarder-bench`;
}

function entry(): string {
  return `${cacheDir()}/node_modules/@portkey-ai/gateway/build/start-server.js`;
}

/** Installs the gateway if missing; returns false (with a reason) when it cannot. */
export async function ensurePortkey(): Promise<{ ok: boolean; reason?: string }> {
  try {
    Deno.statSync(entry());
    return { ok: true };
  } catch { /* not installed yet */ }
  const dir = cacheDir();
  Deno.mkdirSync(dir, { recursive: true });
  progress(`installing @portkey-ai/gateway@${PORTKEY_VERSION} into ${dir}`);
  const out = await new Deno.Command("npm", {
    args: [
      "install",
      "--prefix",
      dir,
      "--no-audit",
      "--no-fund",
      "--loglevel=error",
      `@portkey-ai/gateway@${PORTKEY_VERSION}`,
    ],
    stdout: "null",
    stderr: "piped",
    signal: AbortSignal.timeout(300_000),
  }).output();
  if (!out.success) {
    return { ok: false, reason: new TextDecoder().decode(out.stderr).slice(-500) };
  }
  return { ok: true };
}

/** Starts the gateway on `port`, pinned to `cpu`. */
export async function startPortkey(port: number, cpu: string, logFile: string): Promise<Proc> {
  const proc = spawn("portkey", ["node", entry(), `--port=${port}`, "--headless"], {
    cpu,
    logFile,
    env: { NODE_ENV: "production" },
  });
  await waitForPort(port, 30_000, proc);
  return proc;
}
