/**
 * How each CLI is run non-interactively and offline: a scratch home with the config files it
 * needs, the environment variables that point it at a base URL on 127.0.0.1, and a child process
 * with a deadline, stopped by its PID.
 */

import type { ClientName, Installed } from "./install.ts";

/** What a run points the client at. */
export interface Target {
  /**
   * The base URL as the client's docs name it: origin plus optional UID route, without `/v1`
   * (the Codex config adds `/v1` itself, as its `base_url` must end in it).
   */
  base: string;
  /** The key the client sends (an access key on a UID route). */
  key: string;
  prompt: string;
  /** Codex only: try the WebSocket transport first. */
  websocket?: boolean;
}

/** A started client. */
export interface Running {
  pid: number;
  /** Resolves when the client has exited. */
  done: Promise<Finished>;
  /** Stops the client (SIGKILL unless told otherwise); resolves when it has exited. */
  kill(signal?: Deno.Signal): Promise<Finished>;
}

export interface Finished {
  code: number;
  signal: string | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** The run hit its deadline and was killed. */
  timedOut: boolean;
}

/** The spawn plan for one client run: arguments, environment, files in the scratch home. */
export function plan(
  inst: Installed,
  target: Target,
  home: string,
): { args: string[]; env: Record<string, string> } {
  switch (inst.name) {
    case "claude":
      // `--model` keeps the run on one model name (no model list lookup).
      return {
        args: ["-p", target.prompt, "--model", "claude-sonnet-4-5"],
        env: {
          ANTHROPIC_BASE_URL: target.base,
          ANTHROPIC_API_KEY: target.key,
          DISABLE_TELEMETRY: "1",
          DISABLE_AUTOUPDATER: "1",
          DISABLE_ERROR_REPORTING: "1",
          CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
        },
      };
    case "codex": {
      const codexHome = `${home}/.codex`;
      Deno.mkdirSync(codexHome, { recursive: true });
      Deno.writeTextFileSync(
        `${codexHome}/config.toml`,
        [
          `model = "gpt-5-codex"`,
          `model_provider = "relay"`,
          `approval_policy = "never"`,
          `sandbox_mode = "read-only"`,
          `check_for_update_on_startup = false`,
          ``,
          `[model_providers.relay]`,
          `name = "relay"`,
          `base_url = "${target.base}/v1"`,
          `wire_api = "responses"`,
          `env_key = "RELAY_API_KEY"`,
          `supports_websockets = ${target.websocket === true}`,
          // One try each: a test that fails should fail fast, not after Codex's retries.
          `request_max_retries = 0`,
          `stream_max_retries = 0`,
          ``,
          // Offline: no curated-plugin sync (github.com, chatgpt.com), no metrics (ab.chatgpt.com).
          `[features]`,
          `plugins = false`,
          ``,
          `[analytics]`,
          `enabled = false`,
          ``,
        ].join("\n"),
      );
      return {
        args: ["exec", "--skip-git-repo-check", target.prompt],
        env: { CODEX_HOME: codexHome, RELAY_API_KEY: target.key },
      };
    }
    case "gemini": {
      const dir = `${home}/.gemini`;
      Deno.mkdirSync(dir, { recursive: true });
      Deno.writeTextFileSync(
        `${dir}/settings.json`,
        JSON.stringify(
          {
            security: { auth: { selectedType: "gemini-api-key" } },
            privacy: { usageStatisticsEnabled: false },
            general: { disableAutoUpdate: true, disableUpdateNag: true },
            telemetry: { enabled: false },
          },
          null,
          2,
        ),
      );
      return {
        args: ["-p", target.prompt],
        env: {
          GOOGLE_GEMINI_BASE_URL: target.base,
          GEMINI_API_KEY: target.key,
          GEMINI_CLI_TRUST_WORKSPACE: "true",
          // Gemini CLI otherwise re-launches itself in a second Node process.
          GEMINI_CLI_NO_RELAUNCH: "true",
        },
      };
    }
  }
}

/** Starts a client in a fresh scratch home; it is killed when `deadlineMs` passes. */
export function startClient(
  inst: Installed,
  target: Target,
  options: {
    deadlineMs: number;
    scratch: string;
    trapProxy?: string;
    /** More environment, e.g. a CA certificate to trust. */
    env?: Record<string, string>;
  },
): Running {
  const home = Deno.makeTempDirSync({ dir: options.scratch, prefix: `${inst.name}-` });
  const work = `${home}/work`;
  Deno.mkdirSync(work);
  const { args, env } = plan(inst, target, home);
  const started = performance.now();
  const child = new Deno.Command(inst.cmd, {
    args: [...inst.pre, ...args],
    cwd: work,
    clearEnv: true,
    env: {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      HOME: home,
      XDG_CONFIG_HOME: `${home}/.config`,
      XDG_CACHE_HOME: `${home}/.cache`,
      XDG_DATA_HOME: `${home}/.local/share`,
      TMPDIR: home,
      LANG: "C.UTF-8",
      TERM: "dumb",
      NO_COLOR: "1",
      CI: "1",
      // Everything the clients should talk to is on 127.0.0.1, exempt from the proxy; any other
      // host goes to the trap proxy, which records the attempt and refuses it.
      NO_PROXY: "127.0.0.1,localhost",
      no_proxy: "127.0.0.1,localhost",
      ...(options.trapProxy
        ? {
          HTTPS_PROXY: options.trapProxy,
          HTTP_PROXY: options.trapProxy,
          https_proxy: options.trapProxy,
          http_proxy: options.trapProxy,
        }
        : {}),
      ...options.env,
      ...env,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // A run cut short still stops the client.
  const onUnload = () => {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
  };
  globalThis.addEventListener("unload", onUnload);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
  }, options.deadlineMs);
  const stdout = new Response(child.stdout).text();
  const stderr = new Response(child.stderr).text();
  const done = (async (): Promise<Finished> => {
    const status = await child.status;
    clearTimeout(timer);
    globalThis.removeEventListener("unload", onUnload);
    return {
      code: status.code,
      signal: status.signal,
      stdout: await stdout,
      stderr: await stderr,
      ms: performance.now() - started,
      timedOut,
    };
  })();
  return {
    pid: child.pid,
    done,
    kill(signal: Deno.Signal = "SIGKILL") {
      try {
        child.kill(signal);
      } catch { /* exited */ }
      return done;
    },
  };
}

export type { ClientName };
