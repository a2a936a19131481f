/**
 * Installs the three CLIs at pinned versions from npm into a cache outside the repository
 * (`${XDG_CACHE_HOME:-$HOME/.cache}/proxy-forwarder/clients/<pkg>@<ver>`), reusing an install
 * that is already there. Returns the executable to run for each: the native binary where the
 * package ships one, so that killing the PID kills the process that holds the socket.
 */

export const PINNED = {
  claude: { pkg: "@anthropic-ai/claude-code", version: "2.1.328" },
  codex: { pkg: "@openai/codex", version: "0.169.0" },
  gemini: { pkg: "@google/gemini-cli", version: "0.61.0" },
} as const;

export type ClientName = keyof typeof PINNED;

/** How to start one CLI. */
export interface Installed {
  name: ClientName;
  version: string;
  /** Program to spawn. */
  cmd: string;
  /** Arguments that come before the client's own (e.g. the script for `node`). */
  pre: string[];
  /** The install's folder in the cache. */
  dir: string;
  /** Whether this run installed it (false: reused from the cache). */
  fresh: boolean;
}

export function cacheRoot(): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  const base = xdg && xdg !== "" ? xdg : `${Deno.env.get("HOME") ?? "/tmp"}/.cache`;
  return `${base}/proxy-forwarder/clients`;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** The program inside an install, per client. */
function entry(name: ClientName, dir: string): { cmd: string; pre: string[] } {
  const nm = `${dir}/node_modules`;
  switch (name) {
    case "claude":
      // The package's bin is the native executable itself.
      return { cmd: `${nm}/@anthropic-ai/claude-code/bin/claude.exe`, pre: [] };
    case "codex": {
      // bin/codex.js spawns the native binary as a child on Node < 23.11: run the binary directly.
      const arch = Deno.build.arch === "aarch64" ? "aarch64" : "x86_64";
      const pkg = arch === "aarch64" ? "codex-linux-arm64" : "codex-linux-x64";
      return {
        cmd: `${nm}/@openai/${pkg}/vendor/${arch}-unknown-linux-musl/bin/codex`,
        pre: [],
      };
    }
    case "gemini":
      return { cmd: "node", pre: [`${nm}/@google/gemini-cli/bundle/gemini.js`] };
  }
}

/** Installs (or reuses) one CLI. Throws with npm's output when the install fails. */
export async function ensureClient(name: ClientName): Promise<Installed> {
  const { pkg, version } = PINNED[name];
  const dir = `${cacheRoot()}/${pkg.replace("/", "+")}@${version}`;
  const { cmd, pre } = entry(name, dir);
  const probe = pre[0] ?? cmd;
  const marker = `${dir}/.complete`;
  if (exists(marker) && exists(probe)) return { name, version, cmd, pre, dir, fresh: false };
  Deno.mkdirSync(dir, { recursive: true });
  const out = await new Deno.Command("npm", {
    args: [
      "install",
      "--prefix",
      dir,
      "--no-audit",
      "--no-fund",
      "--no-save",
      "--loglevel=error",
      `${pkg}@${version}`,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { npm_config_update_notifier: "false" },
    signal: AbortSignal.timeout(10 * 60_000),
  }).output();
  if (!out.success || !exists(probe)) {
    const why = new TextDecoder().decode(out.stderr).slice(-2000);
    throw new Error(`npm install ${pkg}@${version} failed (exit ${out.code}): ${why}`);
  }
  // Written last: an install cut short is redone next time instead of being trusted.
  Deno.writeTextFileSync(marker, `${pkg}@${version}\n`);
  return { name, version, cmd, pre, dir, fresh: true };
}
