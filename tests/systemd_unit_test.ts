/**
 * The systemd unit: restart policy, environment file, hardening and narrow permissions,
 * and `systemd-analyze verify` when that tool is installed (skipped, saying so, when it is not).
 */

import assert from "node:assert/strict";

const UNIT = new URL("../deploy/proxy-forwarder.service", import.meta.url).pathname;
const text = Deno.readTextFileSync(UNIT);

/** `Key=value` lines of one section (a key may repeat). */
function section(name: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  let current = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const head = /^\[(.+)\]$/.exec(line);
    if (head) {
      current = head[1]!;
      continue;
    }
    const eq = line.indexOf("=");
    if (current === name && eq > 0) out.push([line.slice(0, eq), line.slice(eq + 1)]);
  }
  return out;
}

const service = section("Service");
const get = (key: string) => service.filter(([k]) => k === key).map(([, v]) => v);

Deno.test("systemd unit: EnvironmentFile, Restart=always, reload by SIGHUP, stop after the grace period", () => {
  assert.deepEqual(get("EnvironmentFile"), ["/opt/proxy-forwarder/.env"]);
  assert.deepEqual(get("Restart"), ["always"]);
  assert.match(get("ExecReload")[0]!, /kill -HUP \$MAINPID/);
  assert.ok(Number(get("TimeoutStopSec")[0]) > 30, "longer than SHUTDOWN_GRACE_SEC's default");
  assert.deepEqual(section("Install"), [["WantedBy", "multi-user.target"]]);
});

Deno.test("systemd unit: hardened (own user, read-only system, no capabilities, limits)", () => {
  const expected: Record<string, string> = {
    User: "proxy-forwarder",
    NoNewPrivileges: "yes",
    ProtectSystem: "strict",
    ProtectHome: "yes",
    PrivateTmp: "yes",
    PrivateDevices: "yes",
    CapabilityBoundingSet: "",
    AmbientCapabilities: "",
    LimitNOFILE: "65536",
    RestrictSUIDSGID: "yes",
  };
  for (const [k, v] of Object.entries(expected)) assert.deepEqual(get(k), [v], k);
  assert.match(get("MemoryMax")[0] ?? "", /^\d+[MG]$/);
  assert.deepEqual(get("MemoryDenyWriteExecute"), [], "would break V8's JIT");
});

Deno.test("systemd unit: runs main.ts with narrow Deno permissions", () => {
  const exec = get("ExecStart")[0]!.split(/\s+/);
  assert.equal(exec[0], "/usr/local/bin/deno");
  assert.equal(exec[1], "run");
  assert.equal(exec.at(-1), "main.ts");
  for (const flag of ["--unstable-no-legacy-abort", "--allow-net", "--allow-env"]) {
    assert.ok(exec.includes(flag), flag);
  }
  assert.ok(
    exec.includes(`--allow-read=${get("WorkingDirectory")[0]}`),
    "reads only its directory",
  );
  const broad = exec.filter((a) =>
    /^(-A|--allow-all|--allow-run|--allow-write|--allow-ffi|--allow-sys)(=|$)/.test(a)
  );
  assert.deepEqual(broad, []);
});

function which(cmd: string): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${cmd}`).isFile) return `${dir}/${cmd}`;
    } catch { /* not here */ }
  }
  return null;
}

const analyze = which("systemd-analyze");

Deno.test({
  name: analyze === null
    ? "systemd unit: systemd-analyze verify — SKIPPED: systemd-analyze is not installed " +
      "(apt-get install systemd)"
    : "systemd unit: systemd-analyze verify reports nothing",
  ignore: analyze === null,
  async fn() {
    // verify checks that ExecStart's program exists: point it at this machine's deno.
    const dir = await Deno.makeTempDir({ prefix: "pf-unit-" });
    try {
      const copy = `${dir}/proxy-forwarder.service`;
      await Deno.writeTextFile(copy, text.replaceAll("/usr/local/bin/deno", Deno.execPath()));
      const out = await new Deno.Command(analyze!, {
        args: ["verify", copy],
        env: { SYSTEMD_LOG_LEVEL: "notice" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const messages = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
      assert.equal(out.code, 0, messages);
      // verify exits 0 even for unknown keys or bad values: any message about the unit is a failure.
      const about = messages.split("\n").filter((l) => l.includes("proxy-forwarder"));
      assert.deepEqual(about, []);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
