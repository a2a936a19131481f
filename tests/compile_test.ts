/**
 * `deno task compile`: single executables for linux x64 and arm64 with the narrow
 * permissions baked in. `deno compile` downloads its runtime (denort) from the internet, which
 * these machines cannot reach, so this checks the task's flags against every other way the relay
 * is started, and runs the compile step with this machine's deno standing in for denort: module
 * graph, npm embedding and writing the executable work; only the download is left out.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../lib/config/config.ts";
import { RELAY_NO_CODE_CACHE, RELAY_V8_FLAGS, relayDenoArgs } from "../lib/ops/permissions.ts";
import { deadline } from "./helpers.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const tasks = (JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`)) as {
  tasks: Record<string, string>;
}).tasks;
const commands = tasks.compile!.split("&&").map((c) => c.trim().split(/\s+/));

/** Flag names that grant something or change the runtime: `--allow-read=/x` → `--allow-read`. */
function grantFlags(args: readonly string[]): string[] {
  return [
    ...new Set(args.filter((a) => /^--(allow|unstable)-/.test(a)).map((a) => a.split("=")[0]!)),
  ]
    .sort();
}

Deno.test("compile task builds linux x64 and arm64 executables from main.ts", () => {
  assert.equal(commands.length, 2);
  const targets = commands.map((c) => c[c.indexOf("--target") + 1]);
  assert.deepEqual(targets, ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"]);
  for (const c of commands) {
    assert.deepEqual(c.slice(0, 2), ["deno", "compile"]);
    assert.equal(c.at(-1), "main.ts");
    assert.match(c[c.indexOf("-o") + 1]!, /^dist\/proxy-forwarder-linux-(x64|arm64)$/);
    assert.ok(c.includes("--exclude-unused-npm"), "test-only npm packages stay out");
  }
  const rest = (c: string[]) =>
    c.filter((_, i) =>
      !["--target", "-o"].includes(c[i] ?? "") && !["--target", "-o"].includes(c[i - 1] ?? "")
    );
  assert.deepEqual(rest(commands[0]!), rest(commands[1]!), "both targets get the same flags");
});

Deno.test("compile bakes in the same kinds of permission as deno task start, Docker and systemd", () => {
  const compiled = grantFlags(commands[0]!);
  assert.deepEqual(compiled, [
    "--allow-env",
    "--allow-net",
    "--allow-read",
    "--unstable-no-legacy-abort",
  ]);
  assert.ok(
    !commands[0]!.some((a) =>
      /^(-A|--allow-all|--allow-run|--allow-write|--allow-ffi|--allow-sys)(=|$)/.test(a)
    ),
  );
  // What `deno task start` (scripts/start_args.ts) gives the relay for a typical configuration.
  const env = {
    UPSTREAM_SERVER_A: "https://hub.example.com",
    ROUTES_FILE: "/etc/pf/routes.json",
    TLS_CERT_FILE: "/etc/pf/cert.pem",
    TLS_KEY_FILE: "/etc/pf/key.pem",
  };
  const config = parseConfig(env, { readFile: () => "{}" });
  assert.deepEqual(grantFlags(relayDenoArgs(config, env, "main.ts")), compiled);
  // The Dockerfile's CMD and the systemd unit's ExecStart.
  const docker = /^CMD (\[.*\])$/m.exec(Deno.readTextFileSync(`${ROOT}Dockerfile`))![1]!;
  assert.deepEqual(grantFlags(JSON.parse(docker)), compiled);
  const unit = /^ExecStart=(.*)$/m.exec(
    Deno.readTextFileSync(`${ROOT}deploy/proxy-forwarder.service`),
  )![1]!;
  assert.deepEqual(grantFlags(unit.split(/\s+/)), compiled);
});

Deno.test("every way of starting the relay passes the same runtime flags: V8's, and no code cache", () => {
  const v8 = (args: readonly string[]) => args.filter((a) => a.startsWith("--v8-flags"));
  const config = parseConfig({ UPSTREAM_SERVER_A: "https://hub.example.com" });
  const docker = /^CMD (\[.*\])$/m.exec(Deno.readTextFileSync(`${ROOT}Dockerfile`))![1]!;
  const unit = /^ExecStart=(.*)$/m.exec(
    Deno.readTextFileSync(`${ROOT}deploy/proxy-forwarder.service`),
  )![1]!;
  for (
    const [name, args] of [
      ["deno task start", relayDenoArgs(config, {}, "main.ts")],
      ["compile (x64)", commands[0]!],
      ["compile (arm64)", commands[1]!],
      ["Dockerfile CMD", JSON.parse(docker) as string[]],
      ["systemd ExecStart", unit.split(/\s+/)],
    ] as const
  ) {
    assert.deepEqual(v8(args), [RELAY_V8_FLAGS], name);
    // Runtime flags before the script: after it they would be the script's own arguments.
    for (const flag of [RELAY_V8_FLAGS, RELAY_NO_CODE_CACHE]) {
      assert.ok(args.includes(flag), `${name} lacks ${flag}`);
      assert.ok(args.indexOf(flag) < args.indexOf("main.ts"), name);
    }
  }
});

deadline.test("compile runs up to the runtime download: graph, npm embedding and output work", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pf-compile-" });
  try {
    const args = [...commands[0]!.slice(1)];
    args[args.indexOf("-o") + 1] = `${dir}/proxy-forwarder`;
    // Type checking is `deno task check`'s job (deno check main.ts); skip it here for speed.
    args.splice(1, 0, "--no-check");
    const out = await new Deno.Command(Deno.execPath(), {
      args,
      cwd: ROOT,
      // DENORT_BIN: use a local base binary instead of downloading denort.
      env: { DENORT_BIN: Deno.execPath(), NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, text);
    assert.match(text, /Embedded Files/);
    assert.match(text, /main\.ts/);
    for (
      const testOnly of [
        "openai",
        "@anthropic-ai",
        "playwright-core",
        "fast-check",
        "eventsource-parser",
        "tests/",
      ]
    ) {
      assert.ok(!text.includes(testOnly), `${testOnly} embedded`);
    }
    assert.ok((await Deno.stat(`${dir}/proxy-forwarder`)).size > 1_000_000);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
