/**
 * The Docker files. No Docker engine runs on these machines, so this checks what can be
 * checked without one: the Dockerfile's facts (pinned base, non-root user, narrow permissions,
 * health check, port), its RUN steps and CMD replayed in a temporary directory laid out like
 * the image's /app, the health check command against a live relay, and docker-compose.yml's
 * settings.
 */

import assert from "node:assert/strict";
import {
  closedPort,
  deadline,
  spawnCaptured,
  startRelay,
  startUpstream,
  waitFor,
} from "./helpers.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const dockerfile = Deno.readTextFileSync(`${ROOT}Dockerfile`);
const compose = Deno.readTextFileSync(`${ROOT}docker-compose.yml`);

interface Instruction {
  op: string;
  args: string;
}

/** Dockerfile instructions, continuation lines joined, comments dropped. */
function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  let pending = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (pending === "" && (line === "" || line.startsWith("#"))) continue;
    if (line.endsWith("\\")) {
      pending += line.slice(0, -1) + " ";
      continue;
    }
    const full = (pending + line).trim();
    pending = "";
    const m = /^(\w+)\s+(.*)$/s.exec(full);
    if (m) out.push({ op: m[1]!.toUpperCase(), args: m[2]! });
  }
  return out;
}

const steps = parseDockerfile(dockerfile);
const all = (op: string) => steps.filter((s) => s.op === op);
const last = (op: string) => all(op).at(-1);
const execForm = (args: string): string[] => JSON.parse(args.slice(args.indexOf("[")));

const FORBIDDEN =
  /^(-A|--allow-all|--allow-run|--allow-write|--allow-ffi|--allow-sys|--allow-import)(=|$)/;

Deno.test("Dockerfile: official deno image pinned to the project's Deno version", () => {
  const from = all("FROM");
  assert.equal(from.length, 1);
  const ci = Deno.readTextFileSync(`${ROOT}.ci/run`);
  const version = /DENO_VERSION=(\d+\.\d+\.\d+)/.exec(ci)![1];
  assert.match(
    from[0]!.args,
    new RegExp(`^denoland/deno:(debian-|distroless-|ubuntu-)?${version}$`),
  );
});

Deno.test("Dockerfile: runs as the non-root deno user with narrow permissions", () => {
  const user = last("USER");
  assert.ok(user, "no USER");
  assert.equal(user.args, "deno");
  assert.ok(
    steps.indexOf(user) > steps.indexOf(last("RUN")!),
    "USER deno comes after the RUN steps",
  );
  const cmd = execForm(last("CMD")!.args);
  assert.equal(cmd[0], "run");
  assert.equal(cmd.at(-1), "main.ts");
  for (
    const flag of [
      "--no-config",
      "--unstable-no-legacy-abort",
      "--allow-net",
      "--allow-env",
      "--allow-read=/app",
    ]
  ) {
    assert.ok(cmd.includes(flag), `CMD lacks ${flag}`);
  }
  const broad = cmd.filter((a) => FORBIDDEN.test(a));
  assert.deepEqual(broad, [], "CMD grants more than the relay needs");
  assert.ok(!cmd.includes("--allow-read"), "reads are limited to /app");
});

Deno.test("Dockerfile: EXPOSE 8000 matches PORT, and a deno health check (no curl) on GET /", () => {
  assert.equal(last("EXPOSE")?.args, "8000");
  assert.match(last("ENV")!.args, /PORT=8000/);
  const hc = last("HEALTHCHECK")!.args;
  assert.match(hc, /--interval=\d+s/);
  const cmd = execForm(hc.slice(hc.indexOf("CMD")));
  assert.equal(cmd[0], "deno");
  assert.ok(!/curl|wget/.test(hc));
  assert.ok(cmd.includes("--allow-net=127.0.0.1"));
  assert.ok(!cmd.some((a) => FORBIDDEN.test(a)));
});

deadline.test("Dockerfile: the health check command exits 0 on a live relay and 1 when it is down", async () => {
  const up = startUpstream(() => Response.json({}));
  const relay = startRelay({ UPSTREAM_SERVER_A: up.url });
  const hc = last("HEALTHCHECK")!.args;
  const [exe, ...args] = execForm(hc.slice(hc.indexOf("CMD")));
  assert.equal(exe, "deno");
  const run = (port: number) =>
    new Deno.Command(Deno.execPath(), {
      args,
      cwd: ROOT,
      env: { PORT: String(port) },
      clearEnv: true,
      stdout: "null",
      stderr: "null",
    }).output();
  try {
    const [alive, dead] = await Promise.all([run(relay.port), run(closedPort())]);
    assert.equal(alive.code, 0);
    assert.equal(dead.code, 1);
  } finally {
    await relay.close();
    await up.close();
  }
});

deadline.test("Dockerfile: the npm packages it keeps cover everything the relay imports", async () => {
  const run = all("RUN").map((r) => r.args).join("\n");
  const keep = JSON.parse(/const keep = (\[[^\]]*\])/.exec(run)![1]!) as string[];
  const imports = (JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`)) as {
    imports: Record<string, string>;
  }).imports;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", "main.ts"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "null",
  }).output();
  const graph = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    modules: Array<{ kind: string; npmPackage?: string }>;
  };
  // npm packages the module graph of main.ts really loads, e.g. "eventsource-parser@4.1.3"
  // (none today).
  assert.ok(graph.modules.length > 10, "deno info found no modules: check the test");
  const loaded = graph.modules.filter((m) => m.kind === "npm").map((m) => m.npmPackage!);
  for (const name of keep) assert.ok(imports[name], `${name} is not in deno.json`);
  const missing = loaded.filter((pkg) => !keep.some((k) => pkg.startsWith(`${k}@`)));
  assert.deepEqual(missing, [], "the relay imports an npm package the Dockerfile drops");
});

deadline.test("Dockerfile: its build steps and CMD work in a copy laid out like /app", async () => {
  const app = await Deno.makeTempDir({ prefix: "pf-docker-app-" });
  const up = startUpstream((req) => Response.json({ path: new URL(req.url).pathname }));
  try {
    // COPY steps (sources relative to the build context, destinations relative to WORKDIR /app).
    for (const step of all("COPY")) {
      const parts = step.args.split(/\s+/).filter((p) => !p.startsWith("--"));
      const dest = parts.pop()!;
      for (const src of parts) {
        const to = dest.endsWith("/") && !src.endsWith("/")
          ? `${app}/${dest.replace(/^\.\//, "")}${src.split("/").at(-1)}`
          : `${app}/${(src.endsWith("/") ? dest : src).replace(/^\.\//, "")}`;
        await Deno.mkdir(to.replace(/\/[^/]*\/?$/, ""), { recursive: true });
        const cp = await new Deno.Command("cp", {
          args: ["-r", `${ROOT}${src.replace(/\/$/, "")}`, to.replace(/\/$/, "")],
        }).output();
        assert.ok(cp.success, `COPY ${src}`);
      }
    }
    // The deno.json trimming step, as written (run through deno, not a shell).
    const trim = all("RUN").map((r) => r.args).find((a) => a.startsWith("deno eval"))!;
    const code = /'(.*)'/s.exec(trim)![1]!;
    const trimmed = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-config", code],
      cwd: app,
    }).output();
    assert.ok(trimmed.success);
    const config = JSON.parse(await Deno.readTextFile(`${app}/deno.json`));
    assert.deepEqual(Object.keys(config.imports), []);
    const cached = await new Deno.Command(Deno.execPath(), {
      args: ["cache", "main.ts", "scripts/healthcheck.ts"],
      cwd: app,
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.ok(cached.success, new TextDecoder().decode(cached.stderr));
    const lock = await Deno.readTextFile(`${app}/deno.lock`);
    assert.ok(!lock.includes("openai") && !lock.includes("fast-check"), "lockfile trimmed");

    // CMD, with /app pointing at the copy.
    const cmd = execForm(last("CMD")!.args).map((a) => a.replace("=/app", `=${app}`));
    const { child, output, outDone, errText: err } = spawnCaptured(Deno.execPath(), {
      args: cmd,
      cwd: app,
      env: { UPSTREAM_SERVER_A: up.url, HOST: "127.0.0.1", PORT: "0", UPSTREAM_KEEPWARM_SEC: "0" },
      clearEnv: true,
    });
    try {
      await waitFor(() => /"address":"http:\/\/127\.0\.0\.1:\d+"/.test(output()), 10_000, "start");
      const port = /"address":"http:\/\/127\.0\.0\.1:(\d+)"/.exec(output())![1];
      const res = await fetch(`http://127.0.0.1:${port}/v1/models`);
      assert.deepEqual(await res.json(), { path: "/v1/models" });
    } finally {
      child.kill("SIGTERM");
      await child.status;
      await outDone;
      await err;
    }
  } finally {
    await up.close();
    await Deno.remove(app, { recursive: true });
  }
});

Deno.test(".dockerignore keeps secrets and tests out of the build context", () => {
  const ignore = Deno.readTextFileSync(`${ROOT}.dockerignore`).split("\n").map((l) => l.trim());
  for (const p of [".env", "**/*.pem", "**/*.key", "**/routes*.json", "config", ".git", "tests"]) {
    assert.ok(ignore.includes(p), `.dockerignore lacks ${p}`);
  }
});

Deno.test("docker-compose.yml: .env, restart policy, log rotation, nofile limit, loopback port", () => {
  assert.match(compose, /^\s+env_file: \.env$/m);
  assert.match(compose, /^\s+restart: (always|unless-stopped)$/m);
  assert.match(compose, /driver: json-file\n\s+options:\n\s+max-size: "\d+m"\n\s+max-file: "\d+"/);
  assert.match(compose, /ulimits:\n\s+nofile:\n\s+soft: 65536\n\s+hard: 65536/);
  assert.match(compose, /^\s+- "127\.0\.0\.1:8000:8000"$/m);
  assert.match(compose, /stop_grace_period: \d+s/);
});
