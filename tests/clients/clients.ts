/**
 * Real clients through the relay: Claude Code, Codex (HTTP SSE, WebSocket, and WebSocket refused
 * with 426 then SSE) and Gemini CLI, installed from npm at pinned versions, each run directly
 * against a fake Server A and through the relay (`main.ts` as a child process, a TCP tap in front
 * of it). Checked per client: the answer arrives intact, A receives the request bodies the client
 * sent byte for byte, a UID route swaps the key in the client's own auth header, and killing the
 * client mid-stream closes A's request within 1 s.
 *
 * Not part of `deno task test` (the file name does not end in `_test.ts`): run it with
 * `deno task test:clients`. `PF_CLIENTS_WRITE_DOCS=1` also writes the summary table into
 * docs/CLIENTS.md. Every address is 127.0.0.1; every process is stopped by its PID.
 */

import assert from "node:assert/strict";
import { startClient, type Target } from "./cli.ts";
import { ANSWER, type FakeA, HOLD, type SeenRequest, startFakeA } from "./fake_a.ts";
import { concatBytes, header, parseRequests, type WireRequest } from "./http_wire.ts";
import { cacheRoot, type ClientName, ensureClient, type Installed, PINNED } from "./install.ts";
import { type RelayProcess, startRelayProcess } from "./relay_process.ts";
import { startTap, type Tap } from "./tap.ts";
import { startTrapProxy, type TrapProxy } from "./trap_proxy.ts";
import { testCert } from "../tls_fixture.ts";

const CLIENT_KEY = "sk-client-own-key-0001";
const A_KEY = "sk-server-a-key-0002";
const ACCESS_KEY = "relay-access-key-0003";
const WRONG_KEY = "relay-wrong-key-0004";
const UID = "1";
const PROMPT = "Reply with the relay check sentence.";

/** Client runs longer than this are killed and fail. */
const RUN_DEADLINE_MS = 60_000;
/** A killed client must close A's request within this. */
const ABORT_LIMIT_MS = 1000;
/** Claude Code must give up on the relay's 401 within this. */
const REFUSAL_LIMIT_MS = 2000;

type Column = "direct" | "relay" | "UID" | "abort" | "HTTPS";
const COLUMNS: Column[] = ["direct", "relay", "UID", "abort", "HTTPS"];

/** One row of the table: a client and how it talks to A. */
interface Row {
  label: string;
  client: ClientName;
  websocket?: boolean;
  /** A refuses the WebSocket upgrade with 426 (Codex then falls back to HTTP SSE). */
  refuse426?: boolean;
  /** Header A must see the key in, and how it is written there. */
  auth: "x-api-key" | "authorization" | "x-goog-api-key";
}

const ROWS: Row[] = [
  { label: "Claude Code", client: "claude", auth: "x-api-key" },
  { label: "Codex (HTTP SSE)", client: "codex", auth: "authorization" },
  { label: "Codex (WebSocket)", client: "codex", websocket: true, auth: "authorization" },
  {
    label: "Codex (WebSocket 426 → SSE)",
    client: "codex",
    websocket: true,
    refuse426: true,
    auth: "authorization",
  },
  { label: "Gemini CLI", client: "gemini", auth: "x-goog-api-key" },
];

const results = new Map<string, string>();
const cell = (row: Row, col: Column) => `${row.label}|${col}`;

interface Fixture {
  scratch: string;
  a: FakeA;
  relay: RelayProcess;
  tap: Tap;
  trap: TrapProxy;
}

let installed: Promise<Record<ClientName, Installed>> | null = null;
function clients(): Promise<Record<ClientName, Installed>> {
  installed ??= (async () => {
    const [claude, codex, gemini] = await Promise.all([
      ensureClient("claude"),
      ensureClient("codex"),
      ensureClient("gemini"),
    ]);
    return { claude, codex, gemini };
  })();
  return installed;
}

let fixture: Promise<Fixture> | null = null;
function setup(): Promise<Fixture> {
  fixture ??= (async () => {
    const scratch = Deno.makeTempDirSync({ prefix: "pf-clients-" });
    globalThis.addEventListener("unload", () => {
      try {
        Deno.removeSync(scratch, { recursive: true });
      } catch { /* removed by the summary */ }
    });
    const a = startFakeA();
    const relay = await startRelayProcess({
      UPSTREAM_SERVER_A: a.url,
      ROUTES: JSON.stringify({ [UID]: { apiKey: A_KEY, accessKey: ACCESS_KEY } }),
    });
    const tap = startTap(relay.port);
    return { scratch, a, relay, tap, trap: startTrapProxy() };
  })();
  return fixture;
}

/** The relay serving HTTPS itself (`TLS_CERT_FILE`), with a self-signed certificate. */
interface TlsRelay {
  relay: RelayProcess;
  url: string;
  /** What each client needs to trust the certificate. */
  env: Record<string, string>;
}

let tlsFixture: Promise<TlsRelay> | null = null;
function tlsSetup(): Promise<TlsRelay> {
  tlsFixture ??= (async () => {
    const f = await setup();
    const cert = await testCert();
    const relay = await startRelayProcess({
      UPSTREAM_SERVER_A: f.a.url,
      ROUTES: JSON.stringify({ [UID]: { apiKey: A_KEY, accessKey: ACCESS_KEY } }),
      TLS_CERT_FILE: cert.certFile,
      TLS_KEY_FILE: cert.keyFile,
    });
    return {
      relay,
      url: `https://127.0.0.1:${relay.port}`,
      // Node (Gemini CLI) and Claude Code read NODE_EXTRA_CA_CERTS; Codex CODEX_CA_CERTIFICATE.
      env: { NODE_EXTRA_CA_CERTS: cert.certFile, CODEX_CA_CERTIFICATE: cert.certFile },
    };
  })();
  return tlsFixture;
}

function keyAs(row: Row, key: string): string {
  return row.auth === "authorization" ? `Bearer ${key}` : key;
}

const opts = { sanitizeOps: false, sanitizeResources: false };

async function waitUntil(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** What one run left behind, for the checks. */
interface Outcome {
  fromA: SeenRequest[];
  /** Requests as the client wrote them (through the tap), in connection order. */
  sent: Array<{ req: WireRequest; rest: Uint8Array }>;
  access: Array<Record<string, unknown>>;
  stdout: string;
  stderr: string;
  code: number;
  ms: number;
}

function tapRequests(tap: Tap, fromConn: number): Outcome["sent"] {
  const out: Outcome["sent"] = [];
  for (let i = fromConn; i < tap.conns.length; i++) {
    const { requests, rest } = parseRequests(tap.sent(i));
    requests.forEach((req, j) =>
      out.push({ req, rest: j === requests.length - 1 ? rest : new Uint8Array(0) })
    );
  }
  return out;
}

/** Runs one client to the end (not the abort case). */
async function runOnce(row: Row, col: Exclude<Column, "abort">): Promise<Outcome> {
  const f = await setup();
  const tls = col === "HTTPS" ? await tlsSetup() : null;
  const relay = tls?.relay ?? f.relay;
  const inst = (await clients())[row.client];
  const aFrom = f.a.requests.length;
  const tapFrom = f.tap.conns.length;
  const accessFrom = relay.access().length;
  f.a.websocket = row.refuse426 ? 426 : "accept";
  const base = col === "direct"
    ? f.a.url
    : col === "relay"
    ? f.tap.url
    : col === "UID"
    ? `${f.tap.url}/u${UID}`
    : tls!.url;
  const key = col === "UID" ? ACCESS_KEY : CLIENT_KEY;
  const target: Target = { base, key, prompt: PROMPT, websocket: row.websocket === true };
  const run = startClient(inst, target, {
    deadlineMs: RUN_DEADLINE_MS,
    scratch: f.scratch,
    trapProxy: f.trap.url,
    env: tls?.env ?? {},
  });
  const done = await run.done;
  const fromA = () => f.a.requests.slice(aFrom).filter((r) => !r.target.startsWith("/v1/_ping"));
  if (col !== "direct") {
    // Access-log lines are written when a request ends; a WebSocket session ends after the client.
    await waitUntil(
      () =>
        fromA().every((r) => r.end !== null) &&
        relay.access().length - accessFrom >= fromA().length,
      5000,
      "the relay's access-log lines",
    ).catch(() => {});
  }
  return {
    fromA: fromA(),
    sent: col === "relay" || col === "UID" ? tapRequests(f.tap, tapFrom) : [],
    access: relay.access().slice(accessFrom),
    stdout: done.stdout,
    stderr: done.stderr,
    code: done.code,
    ms: done.ms,
  };
}

/** Problems with a finished run; empty when everything holds. */
function check(row: Row, col: Exclude<Column, "abort">, o: Outcome): string[] {
  const problems: string[] = [];
  if (o.code !== 0) problems.push(`client exited ${o.code}: ${o.stderr.slice(-800)}`);
  if (!o.stdout.includes(ANSWER)) {
    problems.push(`answer not intact in stdout: ${JSON.stringify(o.stdout.slice(0, 300))}`);
  }
  if (o.fromA.length === 0) problems.push("A received no request");
  const expectKey = keyAs(row, col === "UID" ? A_KEY : CLIENT_KEY);
  for (const r of o.fromA) {
    const got = header(r, row.auth);
    if (got !== expectKey) {
      problems.push(`A got ${row.auth}=${JSON.stringify(got)} on ${r.target}, want ${expectKey}`);
    }
    const all = JSON.stringify(r.headers);
    if (col === "UID" && all.includes(ACCESS_KEY)) problems.push("the access key reached A");
    if (col !== "UID" && all.includes(A_KEY)) {
      problems.push("the route's key leaked to a plain request");
    }
  }
  if (row.websocket && !row.refuse426 && !o.fromA.some((r) => r.ws !== null)) {
    problems.push("Codex did not use the WebSocket");
  }
  if (row.refuse426) {
    if (!o.fromA.some((r) => r.method === "GET" && header(r, "upgrade") !== null)) {
      problems.push("Codex did not try the WebSocket first");
    }
    if (!o.fromA.some((r) => r.method === "POST" && r.target.startsWith("/v1/responses"))) {
      problems.push("Codex did not fall back to HTTP after 426");
    }
  }
  if (col === "direct") return problems;
  // Over HTTPS the tap would see ciphertext only: the byte checks are the plain columns'.
  if (col !== "HTTPS") problems.push(...checkBytes(col, o));
  problems.push(...checkAccessLog(o));
  return problems;
}

/** Every request A received is one the client sent, body for body (and frame for frame). */
function checkBytes(col: "relay" | "UID", o: Outcome): string[] {
  const problems: string[] = [];
  if (o.sent.length !== o.fromA.length) {
    problems.push(`client sent ${o.sent.length} requests, A received ${o.fromA.length}`);
  }
  const prefix = col === "UID" ? `/u${UID}` : "";
  const unmatched = [...o.sent];
  for (const r of o.fromA) {
    const i = unmatched.findIndex(({ req }) =>
      req.method === r.method && req.target === prefix + r.target &&
      bytesEqual(req.body, r.body)
    );
    if (i < 0) {
      const same = unmatched.find(({ req }) => req.target === prefix + r.target);
      problems.push(
        `A's ${r.method} ${r.target} body (${r.body.byteLength} B) matches nothing the client ` +
          `sent${same ? ` (client sent ${same.req.body.byteLength} B)` : ""}`,
      );
      continue;
    }
    const { req, rest } = unmatched.splice(i, 1)[0]!;
    if (r.ws !== null) {
      // After the 101 the tunnel carries frames: A's bytes are the client's, in order.
      const got = concatBytes(r.ws.bytesIn);
      if (got.byteLength === 0 || !bytesEqual(got, rest.subarray(0, got.byteLength))) {
        problems.push(
          `WebSocket bytes differ (${got.byteLength} B at A, ${rest.byteLength} B sent)`,
        );
      }
      for (const h of ["sec-websocket-key", "sec-websocket-extensions"]) {
        if (header(req, h) !== header(r, h)) problems.push(`${h} changed on the way to A`);
      }
      if (!r.ws.messages.some((m) => m.includes(PROMPT))) {
        problems.push("A's WebSocket messages lack the prompt");
      }
    }
  }
  return problems;
}

/** The relay's access log: no failures, WebSocket lines complete, event streams marked. */
function checkAccessLog(o: Outcome): string[] {
  const problems: string[] = [];
  for (const line of o.access) {
    const ws = line.method === "GET" && String(line.path).endsWith("/v1/responses");
    if (ws && line.status !== 426) {
      if (line.upstream === undefined) problems.push("WebSocket log line has no upstream");
      if (!(Number(line.requestBytes) > 0 && Number(line.responseBytes) > 0)) {
        problems.push(`WebSocket log line counts ${line.requestBytes}/${line.responseBytes} bytes`);
      }
      if (!(Number(line.ttfbMs) <= Number(line.durationMs))) {
        problems.push(`WebSocket ttfb ${line.ttfbMs} ms of ${line.durationMs} ms`);
      }
    }
    // Codex ends a WebSocket session by dropping the connection, without a close frame: the
    // client leaving, never A's failure.
    const fine = line.error === undefined || (ws && line.error === "client_closed");
    if (!fine) problems.push(`relay logged error ${line.error} on ${line.method} ${line.path}`);
    const text = JSON.stringify(line);
    if ([CLIENT_KEY, A_KEY, ACCESS_KEY].some((k) => text.includes(k))) {
      problems.push("a key shows in the access log");
    }
  }
  // Every event stream A sent is logged as one.
  const streams = o.access.filter((l) => l.method === "POST" && l.status === 200);
  const sse = o.fromA.filter((r) => r.sse).length;
  if (streams.filter((l) => l.stream === true).length < sse) {
    problems.push(`${sse} event streams, logged: ${JSON.stringify(streams.map((l) => l.stream))}`);
  }
  return problems;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Starts a client on a held answer, kills it by PID mid-stream, measures A's side closing. */
async function abortRun(row: Row): Promise<{ closeMs: number; problems: string[] }> {
  const f = await setup();
  const inst = (await clients())[row.client];
  const aFrom = f.a.requests.length;
  const accessFrom = f.relay.access().length;
  f.a.websocket = row.refuse426 ? 426 : "accept";
  const target: Target = {
    base: f.tap.url,
    key: CLIENT_KEY,
    prompt: `${PROMPT} ${HOLD}`,
    websocket: row.websocket === true,
  };
  const run = startClient(inst, target, {
    deadlineMs: RUN_DEADLINE_MS,
    scratch: f.scratch,
    trapProxy: f.trap.url,
  });
  const held = () => f.a.requests.slice(aFrom).find((r) => r.held && r.firstPieceAt !== null);
  try {
    await waitUntil(() => held() !== undefined, 30_000, "A to start a held answer");
    // Let the first piece reach the client: it is mid-stream, not still waiting for headers.
    await new Promise((r) => setTimeout(r, 300));
  } catch (err) {
    await run.kill();
    throw err;
  }
  const request = held()!;
  const killedAt = performance.now();
  await run.kill("SIGKILL");
  await waitUntil(() => request.end !== null, 10_000, "A's request to close").catch(() => {});
  const closeMs = (request.endedAt ?? Infinity) - killedAt;
  const problems: string[] = [];
  if (request.end !== "peer_closed") problems.push("A's request did not close");
  if (!(closeMs <= ABORT_LIMIT_MS)) {
    problems.push(`A's request closed ${closeMs.toFixed(0)} ms after the kill`);
  }
  await waitUntil(
    () => f.relay.access().slice(accessFrom).some((l) => l.error === "client_closed"),
    3000,
    "a client_closed access-log line",
  ).catch(() =>
    problems.push(
      `relay did not log client_closed: ${
        JSON.stringify(f.relay.access().slice(accessFrom).map((l) => [l.status, l.error]))
      }`,
    )
  );
  return { closeMs, problems };
}

Deno.test({
  name: "the three CLIs install at pinned versions into a cache outside the repository",
  ...opts,
  async fn() {
    const t0 = performance.now();
    const all = await clients();
    const root = cacheRoot();
    const repo = new URL("../../", import.meta.url).pathname;
    assert.ok(!root.startsWith(repo), `cache ${root} is inside the repository`);
    const home = Deno.makeTempDirSync({ prefix: "pf-clients-version-" });
    try {
      for (const name of Object.keys(PINNED) as ClientName[]) {
        const v = await new Deno.Command(all[name].cmd, {
          args: [...all[name].pre, "--version"],
          stdout: "piped",
          stderr: "piped",
          stdin: "null",
          clearEnv: true,
          env: { HOME: home, PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" },
          signal: AbortSignal.timeout(30_000),
        }).output();
        const text = new TextDecoder().decode(v.stdout);
        assert.ok(text.includes(PINNED[name].version), `${name} --version said ${text}`);
      }
    } finally {
      Deno.removeSync(home, { recursive: true });
    }
    const fresh = Object.values(all).filter((i) => i.fresh).map((i) => i.name);
    results.set(
      "install",
      `${fresh.length ? `installed ${fresh.join(", ")}` : "all from cache"} in ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s`,
    );
  },
});

for (const row of ROWS) {
  for (const col of ["direct", "relay", "UID"] as const) {
    const what = col === "direct"
      ? "answers intact directly against the fake A (baseline)"
      : col === "relay"
      ? "answers intact through the relay, A receiving the client's bytes"
      : "has its access key swapped for A's key in its own auth header on a UID route";
    Deno.test({
      name: `${row.label} ${what}`,
      ...opts,
      async fn() {
        results.set(cell(row, col), "FAIL");
        const o = await runOnce(row, col);
        const problems = check(row, col, o);
        results.set(
          cell(row, col),
          problems.length === 0 ? `ok ${(o.ms / 1000).toFixed(1)} s` : "FAIL",
        );
        assert.deepEqual(problems, [], problems.join("\n"));
      },
    });
  }
  Deno.test({
    name: `${row.label} killed mid-stream closes A's request within ${ABORT_LIMIT_MS} ms`,
    ...opts,
    async fn() {
      results.set(cell(row, "abort"), "FAIL");
      const { closeMs, problems } = await abortRun(row);
      results.set(
        cell(row, "abort"),
        problems.length === 0 ? `ok ${closeMs.toFixed(0)} ms` : "FAIL",
      );
      assert.deepEqual(problems, [], problems.join("\n"));
    },
  });
  Deno.test({
    name: `${row.label} answers intact through the relay serving HTTPS itself (TLS_CERT_FILE)`,
    ...opts,
    async fn() {
      results.set(cell(row, "HTTPS"), "FAIL");
      const o = await runOnce(row, "HTTPS");
      const problems = check(row, "HTTPS", o);
      results.set(
        cell(row, "HTTPS"),
        problems.length === 0 ? `ok ${(o.ms / 1000).toFixed(1)} s` : "FAIL",
      );
      assert.deepEqual(problems, [], problems.join("\n"));
    },
  });
}

Deno.test({
  name: `Claude Code with a wrong UID access key exits within ${REFUSAL_LIMIT_MS} ms`,
  ...opts,
  async fn() {
    results.set("refusal", "FAIL");
    const f = await setup();
    const inst = (await clients()).claude;
    const aFrom = f.a.api().length;
    const tapFrom = f.tap.conns.length;
    const run = startClient(
      inst,
      { base: `${f.tap.url}/u${UID}`, key: WRONG_KEY, prompt: PROMPT },
      { deadlineMs: 20_000, scratch: f.scratch, trapProxy: f.trap.url },
    );
    const done = await run.done;
    const answers = f.tap.conns.slice(tapFrom).map((c) =>
      new TextDecoder().decode(concatBytes(c.toClient))
    );
    results.set(
      "refusal",
      `${done.ms < REFUSAL_LIMIT_MS ? "ok" : "FAIL"} ${(done.ms / 1000).toFixed(1)} s`,
    );
    assert.ok(answers.some((t) => /^HTTP\/1\.1 401 /.test(t)), "the relay answered 401");
    assert.ok(
      answers.every((t) =>
        !t.startsWith("HTTP/1.1 401") || /\r\nx-should-retry: false\r\n/i.test(t)
      ),
      "the 401 carries x-should-retry: false",
    );
    assert.equal(f.a.api().length, aFrom, "a refused request must not reach A");
    assert.notEqual(done.code, 0, "Claude Code reports the failure");
    assert.ok(
      done.ms < REFUSAL_LIMIT_MS,
      `Claude Code took ${done.ms.toFixed(0)} ms to give up (timed out: ${done.timedOut})`,
    );
  },
});

Deno.test({
  name: "no client tries to reach any host but 127.0.0.1 with the offline settings",
  ...opts,
  async fn() {
    if (fixture === null) return;
    const f = await fixture;
    assert.deepEqual(f.trap.attempts, []);
  },
});

/** The summary table (markdown). */
function table(): string {
  const lines = [
    `| client | ${COLUMNS.join(" | ")} |`,
    `| --- | ${COLUMNS.map(() => "---").join(" | ")} |`,
  ];
  for (const row of ROWS) {
    lines.push(
      `| ${row.label} | ${
        COLUMNS.map((c) => results.get(cell(row, c)) ?? "not run").join(" | ")
      } |`,
    );
  }
  return lines.join("\n");
}

Deno.test({
  name: "summary: client × direct/relay/UID/abort/HTTPS",
  ...opts,
  async fn() {
    let outbound = "not run";
    if (fixture !== null) {
      const f = await fixture;
      const hosts = [...new Set(f.trap.attempts.map((l) => l.split(" ")[1] ?? l))];
      outbound = hosts.length === 0 ? "none" : hosts.join(", ");
      f.trap.close();
      f.tap.close();
      if (tlsFixture !== null) await (await tlsFixture).relay.stop();
      await f.relay.stop();
      f.a.close();
      Deno.removeSync(f.scratch, { recursive: true });
    }
    const versions = (Object.keys(PINNED) as ClientName[])
      .map((n) => `${PINNED[n].pkg}@${PINNED[n].version}`).join(", ");
    const lines = [
      table(),
      "",
      `- Claude Code with a wrong UID access key: ${results.get("refusal") ?? "not run"} ` +
      `(limit ${REFUSAL_LIMIT_MS / 1000} s).`,
      `- Attempts to reach any other host (refused by a trap proxy): ${outbound}.`,
      `- Clients: ${versions}.`,
    ];
    const install = results.get("install") ?? "not run";
    await Deno.stdout.write(
      new TextEncoder().encode(`\n${lines.join("\n")}\n- Install: ${install}.\n\n`),
    );
    const docs = Deno.env.get("PF_CLIENTS_WRITE_DOCS") === "1"
      ? ["CLIENTS.md", "CLIENTS.zh-CN.md"]
      : [];
    for (const name of docs) {
      const path = new URL(`../../docs/${name}`, import.meta.url).pathname;
      const doc = Deno.readTextFileSync(path);
      const start = "<!-- clients-table:start -->";
      const end = "<!-- clients-table:end -->";
      const at = doc.indexOf(start);
      const until = doc.indexOf(end);
      assert.ok(at >= 0 && until > at, `docs/${name} has the table markers`);
      const day = new Date().toISOString().slice(0, 10);
      const intro = name.includes("zh-CN")
        ? `最近一次运行（${day}），时间为该机器上的实测值：`
        : `Last run (${day}), times as measured on that machine:`;
      Deno.writeTextFileSync(
        path,
        `${doc.slice(0, at + start.length)}\n\n${intro}\n\n${lines.join("\n")}\n\n` +
          doc.slice(until),
      );
      // The table as written is not padded: let deno fmt lay it out, so `fmt --check` stays clean.
      await new Deno.Command(Deno.execPath(), {
        args: ["fmt", path],
        stdout: "null",
        stderr: "null",
        signal: AbortSignal.timeout(30_000),
      }).output();
    }
    const failed = [...results.values()].filter((v) => v.startsWith("FAIL")).length;
    assert.equal(failed, 0, `${failed} cells failed`);
  },
});
