/**
 * `deno task test`: the whole suite, one `deno test` process per file, each under a time limit,
 * in an order shuffled by a seed that is printed, on the relay's own HTTP/1.1 server and then
 * again on `Deno.serve` (`PF_TEST_HTTP_SERVER=deno`).
 *
 * Why per file: Deno has no per-test or per-file timeout, so one stream that never ends would
 * stall a single `deno test tests/` run for good. Here a file that overruns is killed, counted as
 * a failure and named with the test it was running; the others still run.
 *
 *   deno task test                          # both servers, a random seed
 *   deno task test --seed=1234              # the same order as a run that printed seed 1234
 *   deno task test --server=relay tests/streaming_test.ts
 *
 * The last line is the summary CI reads: `N passed, N failed`.
 */

/** The flags every test file runs with (what the tests need: network, subprocesses, KV). */
export const TEST_FLAGS: readonly string[] = [
  "--unstable-no-legacy-abort",
  "--unstable-kv",
  "--allow-net",
  "--allow-env",
  "--allow-read",
  "--allow-write",
  "--allow-run",
  "--allow-sys",
  // For the retention test (stream_retention_test.ts), which must force a collection.
  "--v8-flags=--expose-gc",
];

/** Longest a file may run before it is killed, s. The slowest file takes about 15 s alone. */
const DEFAULT_FILE_TIMEOUT_SEC = 180;

/** What a run is asked to do. */
export interface RunArgs {
  seed: number;
  servers: Array<"relay" | "deno">;
  fileTimeoutSec: number;
  check: boolean;
  paths: string[];
}

const USAGE = "usage: deno task test [--seed=N] [--server=relay|deno|both] " +
  "[--file-timeout=SEC] [--no-check] [files or directories...]";

/** Parses the command line; `random` picks the seed when none is given. */
export function parseArgs(argv: readonly string[], random: () => number = randomSeed): RunArgs {
  const out: RunArgs = {
    seed: -1,
    servers: ["relay", "deno"],
    fileTimeoutSec: DEFAULT_FILE_TIMEOUT_SEC,
    check: true,
    paths: [],
  };
  for (const arg of argv) {
    const eq = arg.indexOf("=");
    const [flag, value] = eq < 0 ? [arg, ""] : [arg.slice(0, eq), arg.slice(eq + 1)];
    if (flag === "--seed") {
      if (!/^\d{1,10}$/.test(value)) throw new Error(`--seed needs a whole number, got "${value}"`);
      out.seed = Number(value);
    } else if (flag === "--server") {
      if (value === "both") out.servers = ["relay", "deno"];
      else if (value === "relay" || value === "deno") out.servers = [value];
      else throw new Error(`--server is relay, deno or both, got "${value}"`);
    } else if (flag === "--file-timeout") {
      const n = Number(value);
      if (!(n > 0)) throw new Error(`--file-timeout needs seconds, got "${value}"`);
      out.fileTimeoutSec = n;
    } else if (flag === "--no-check") {
      out.check = false;
    } else if (arg.startsWith("-")) {
      throw new Error(`unknown option ${arg}\n${USAGE}`);
    } else {
      out.paths.push(arg);
    }
  }
  if (out.seed < 0) out.seed = random();
  if (out.paths.length === 0) out.paths.push("tests");
  return out;
}

function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0]! % 2_000_000_000;
}

/** `items` in an order fixed by `seed` (mulberry32 driving a Fisher-Yates shuffle). */
export function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** Counts from one `deno test` run. */
export interface FileResult {
  passed: number;
  failed: number;
  ignored: number;
  /** Set when the run gave no summary: killed at the time limit, or crashed. */
  problem?: string;
  /** Each failed test with the start of its error ({@link failureReports}). */
  reports?: string[];
}

// Deno colours its report even into a pipe.
// deno-lint-ignore no-control-regex
const ANSI = /\x1b\[[0-9;]*m/g;

/**
 * Reads Deno's summary line (`ok | 3 passed | 0 failed | 1 ignored (2s)`) from a file's output.
 * Null when there is none, e.g. when the run was killed.
 */
export function parseSummary(output: string): FileResult | null {
  const lines = output.replace(ANSI, "").split("\n");
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]!;
    if (!/^(ok|FAILED) \| \d+ passed/.test(line)) continue;
    const count = (word: string) => Number(new RegExp(`(\\d+) ${word}`).exec(line)?.[1] ?? 0);
    return { passed: count("passed"), failed: count("failed"), ignored: count("ignored") };
  }
  return null;
}

/** The test that had started and not finished when the output stops (Deno's `name ...` line). */
export function runningTest(output: string): string | null {
  const lines = output.replace(ANSI, "").split("\n").map((l) => l.trimEnd());
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]!;
    if (/ \.\.\. (ok|FAILED|ignored)\b/.test(line)) return null;
    if (line.endsWith(" ...")) return line.slice(0, -4);
  }
  return null;
}

/**
 * Each failed test of a file with the first lines of its error, from Deno's ERRORS section, so
 * the run's closing summary says why, not only where: CI keeps only the tail of a long log.
 */
export function failureReports(output: string, maxLines = 10): string[] {
  const lines = output.replace(ANSI, "").split("\n").map((l) => l.trimEnd());
  const start = lines.findIndex((l) => l.trim() === "ERRORS");
  if (start < 0) return [];
  const reports: string[] = [];
  let current: string[] | null = null;
  let done = false;
  for (const line of lines.slice(start + 1)) {
    if (line.trim() === "FAILURES") break;
    const head = / => (\S+:\d+:\d+)$/.exec(line);
    const uncaught = /^(\S+) \(uncaught error\)$/.exec(line);
    if (head !== null || uncaught !== null) {
      if (current !== null) reports.push(current.join("\n"));
      current = [
        head !== null
          ? `"${line.slice(0, head.index)}" (${head[1]})`
          : `uncaught in ${uncaught![1]}`,
      ];
      done = false;
      continue;
    }
    if (current === null || done || line.trim() === "") continue;
    // The source excerpt (a line, then a caret under it) and the stack repeat the location.
    if (/^\s*\^+$/.test(line)) {
      if (current.length > 1) current.pop();
      done = true;
      continue;
    }
    if (/^\s+at /.test(line)) {
      done = true;
      continue;
    }
    if (current.length <= maxLines) current.push(`  ${line}`);
  }
  if (current !== null) reports.push(current.join("\n"));
  return reports;
}

/** Test files under `paths` (files are taken as given), sorted. */
export async function findTestFiles(paths: readonly string[]): Promise<string[]> {
  const found: string[] = [];
  const walk = async (dir: string) => {
    for await (const entry of Deno.readDir(dir)) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory) await walk(path);
      else if (/[._]test\.ts$/.test(entry.name)) found.push(path);
    }
  };
  for (const p of paths) {
    const clean = p.replace(/\/+$/, "");
    if ((await Deno.stat(clean)).isDirectory) await walk(clean);
    else found.push(clean);
  }
  return [...new Set(found)].sort();
}

const enc = new TextEncoder();

function print(text: string): void {
  Deno.stdout.writeSync(enc.encode(`${text}\n`));
}

/** Runs one file, echoing its output as it comes, killed after `timeoutSec`. */
async function runFile(
  file: string,
  o: { seed: number; server: "relay" | "deno"; timeoutSec: number },
): Promise<FileResult & { ms: number }> {
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", ...TEST_FLAGS, "--no-check", `--shuffle=${o.seed}`, file],
    env: { PF_TEST_HTTP_SERVER: o.server },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let output = "";
  const echo = (stream: ReadableStream<Uint8Array>) =>
    stream.pipeThrough(new TextDecoderStream()).pipeTo(
      new WritableStream({
        write(text) {
          output += text;
          Deno.stdout.writeSync(enc.encode(text));
        },
      }),
    ).catch(() => {});
  const echoed = Promise.all([echo(child.stdout), echo(child.stderr)]);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGTERM");
    setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
    }, 5000);
  }, o.timeoutSec * 1000);
  const status = await child.status;
  clearTimeout(timer);
  await echoed;
  const ms = performance.now() - started;
  const summary = parseSummary(output);
  if (timedOut) {
    const test = runningTest(output);
    return {
      passed: summary?.passed ?? 0,
      failed: (summary?.failed ?? 0) + 1,
      ignored: summary?.ignored ?? 0,
      problem: `killed after ${o.timeoutSec} s${test === null ? "" : ` while running "${test}"`}`,
      ms,
    };
  }
  if (summary === null) {
    return {
      passed: 0,
      failed: 1,
      ignored: 0,
      problem: `exited ${status.code} with no summary`,
      ms,
    };
  }
  if (!status.success && summary.failed === 0) {
    return { ...summary, failed: 1, problem: `exited ${status.code}`, ms };
  }
  return { ...summary, reports: failureReports(output), ms };
}

async function main(): Promise<number> {
  let args: RunArgs;
  try {
    args = parseArgs(Deno.args);
  } catch (err) {
    print(err instanceof Error ? err.message : String(err));
    return 2;
  }
  const files = shuffled(await findTestFiles(args.paths), args.seed);
  if (args.check) {
    const check = await new Deno.Command(Deno.execPath(), {
      args: ["check", ...files],
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (!check.success) return 1;
  }
  const rerun = (server: string, file?: string) =>
    `PF_TEST_HTTP_SERVER=${server} deno test ${TEST_FLAGS.join(" ")} --shuffle=${args.seed} ` +
    (file ?? "tests/");
  print(
    `test order: shuffle seed ${args.seed} (run the same order: deno task test --seed=${args.seed})`,
  );
  const runs: Array<{ server: string; total: FileResult; ms: number; bad: string[] }> = [];
  for (const server of args.servers) {
    print(
      `\n=== ${files.length} test files on the ${
        server === "relay" ? "relay's own HTTP/1.1 server" : "Deno.serve server"
      } (PF_TEST_HTTP_SERVER=${server}), seed ${args.seed}, at most ${args.fileTimeoutSec} s per file\n`,
    );
    const started = performance.now();
    const total: FileResult = { passed: 0, failed: 0, ignored: 0 };
    const bad: string[] = [];
    const times: Array<[string, number]> = [];
    for (const file of files) {
      const r = await runFile(file, { seed: args.seed, server, timeoutSec: args.fileTimeoutSec });
      total.passed += r.passed;
      total.failed += r.failed;
      total.ignored += r.ignored;
      times.push([file, r.ms]);
      if (r.failed > 0) {
        const why = (r.reports ?? []).map((t) => `\n    ${t.replaceAll("\n", "\n    ")}`).join("");
        bad.push(
          `  ${file}: ${r.problem ?? `${r.failed} failed`}${why}\n    rerun: ${
            rerun(server, file)
          }`,
        );
      }
    }
    const ms = performance.now() - started;
    runs.push({ server, total, ms, bad });
    const slowest = times.sort((a, b) => b[1] - a[1]).slice(0, 5)
      .map(([f, t]) => `${f} ${(t / 1000).toFixed(1)} s`).join(", ");
    print(
      `\n=== ${server} server: ${total.passed} passed, ${total.failed} failed, ${total.ignored} ignored in ${
        (ms / 1000).toFixed(1)
      } s (seed ${args.seed}); slowest: ${slowest}`,
    );
  }
  const passed = runs.reduce((n, r) => n + r.total.passed, 0);
  const failed = runs.reduce((n, r) => n + r.total.failed, 0);
  // After every pass, not after its own: CI keeps only the tail of the log, and the second pass
  // alone prints hundreds of lines.
  for (const r of runs) {
    if (r.bad.length > 0) print(`\nfailures on the ${r.server} server:\n${r.bad.join("\n")}`);
  }
  print("");
  for (const r of runs) {
    print(
      `${r.server} server: ${r.total.passed} passed, ${r.total.failed} failed, ${r.total.ignored} ignored, ${
        (r.ms / 1000).toFixed(1)
      } s`,
    );
  }
  print(`shuffle seed ${args.seed}`);
  print(`${passed} passed, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());
