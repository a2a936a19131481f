/**
 * The relay as users run it: `main.ts` in a child process, on 127.0.0.1 with a free port, its
 * JSON log lines (access log included) collected from stdout. Stopped by its PID.
 */

import { stopChild } from "../helpers.ts";

const ROOT = new URL("../../", import.meta.url);

export interface RelayProcess {
  port: number;
  url: string;
  /** Every JSON line the relay printed so far. */
  lines(): Array<Record<string, unknown>>;
  /** Access-log lines (those with a status) so far. */
  access(): Array<Record<string, unknown>>;
  stop(): Promise<void>;
}

export async function startRelayProcess(env: Record<string, string>): Promise<RelayProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--unstable-no-legacy-abort",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      new URL("main.ts", ROOT).pathname,
    ],
    cwd: new URL(".", ROOT).pathname,
    clearEnv: true,
    env: {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      HOME: Deno.env.get("HOME") ?? "/tmp",
      DENO_DIR: Deno.env.get("DENO_DIR") ?? "",
      HOST: "127.0.0.1",
      PORT: "0",
      // Probes would add requests to A's record; the tests count only what clients caused.
      UPSTREAM_KEEPWARM_SEC: "0",
      ...env,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let exited = false;
  // A run cut short (a filter that skips the last test, a thrown setup) still stops the relay.
  const onUnload = () => {
    if (!exited) {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
    }
  };
  globalThis.addEventListener("unload", onUnload);
  child.status.then(() => {
    exited = true;
    globalThis.removeEventListener("unload", onUnload);
  });
  let buffered = "";
  const parsed: Array<Record<string, unknown>> = [];
  let stderr = "";
  const outDone = child.stdout.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({
      write(t) {
        buffered += t;
        let i;
        while ((i = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, i);
          buffered = buffered.slice(i + 1);
          try {
            parsed.push(JSON.parse(line));
          } catch { /* not JSON */ }
        }
      },
    }),
  ).catch(() => {});
  const errDone = child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (t) => void (stderr += t) }),
  ).catch(() => {});
  const stop = async () => {
    await stopChild(child, 5000);
    await outDone;
    await errDone;
  };
  const deadline = Date.now() + 30_000;
  let port = 0;
  while (port === 0) {
    const listening = parsed.find((l) => l.msg === "listening");
    if (listening !== undefined) {
      port = Number(new URL(String(listening.address)).port);
      break;
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`relay did not start within 30 s: ${stderr.slice(0, 2000)}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    lines: () => parsed,
    access: () => parsed.filter((l) => l.msg === "access"),
    stop,
  };
}
