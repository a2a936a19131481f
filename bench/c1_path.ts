/**
 * Where one request's time goes at c=1, for each proxy: `wrk -t1 -c1` POSTs (~1 KB JSON, nginx's
 * static answer as Server A) through the relay, deno-minimal, the TCP pipe and nginx as a reverse
 * proxy, one after the other, each traced with `perf trace -p <pid>` (socket reads and writes) for
 * `--seconds` (default 3). The proxy's socket calls, in order, split each request into four gaps
 * (µs from the end of one call to the start of the next; medians):
 *
 * - request path: read from the client → write to A (parsing, checks, the upstream head);
 * - A: write to A → read of A's answer (A's work and both wake-ups, plus any of the proxy's own
 *   work after the write that is still running when A answers);
 * - response path: read from A → write to the client;
 * - client: write to the client → the next request's read (wrk's turn, and the proxy's work after
 *   the answer went out).
 *
 * Which socket is the client's and which A's comes from `/proc/<pid>/fd` and `/proc/net/tcp` (the
 * remote port of A's sockets is nginx's). Tracing slows every system call, so the gaps are longer
 * than untraced ones: compare rows within a run. wrk's untraced p50 per row is printed beside them.
 * Proxies on core 0, nginx and wrk on core 1. Needs `perf` (linux-perf) and permission to trace.
 *
 *   deno run -A bench/c1_path.ts [--seconds=3]
 */
import {
  chatPostScript,
  freePort,
  installCleanup,
  numFlag,
  parseFlags,
  type Proc,
  quantile,
  round,
  sleep,
  spawn,
  startCalibration,
  startRelay,
  tempDir,
  wrkPost,
} from "./common.ts";
import { proxyConfig, startJsonUpstream, startNginx } from "./nginx.ts";

const flags = parseFlags(Deno.args);
// The fds are read 1 s into the traced run, while wrk's connection is open.
const seconds = Math.max(2, numFlag(flags, "seconds", 3));
// Four rows, each a warm-up, an untraced and a traced run, plus start-up and perf's attach.
const disarm = installCleanup(4 * (2 + 2 * seconds + 25) + 60);
const dir = tempDir("c1-path");
const up = await startJsonUpstream(dir);
const upstreamPort = Number(new URL(up.url).port);
const script = chatPostScript(dir);
const rows: { name: string; port: number; proc: Proc }[] = [];
const procs: Proc[] = [up.proc];

/** One socket call as `perf trace` printed it. */
interface Call {
  /** Start, ms. */
  at: number;
  /** Duration, ms. */
  dur: number;
  kind: "read" | "write";
  fd: number;
  ret: number;
}

const CALL_RE =
  /^\s*([\d.]+)\s+\(\s*([\d.]+) ms\):.*? (recvfrom|sendto|read|write|readv|writev)\(fd: (\d+).*= (-?\d+)/;
/** nginx reads with `recvfrom` (recv) or `readv` and writes with `writev`; Deno with `recvfrom` and `sendto`. */
const READS = new Set(["recvfrom", "read", "readv"]);

function parseTrace(text: string): Call[] {
  const out: Call[] = [];
  for (const line of text.split("\n")) {
    const m = CALL_RE.exec(line);
    if (m === null) continue;
    out.push({
      at: Number(m[1]),
      dur: Number(m[2]),
      kind: READS.has(m[3]!) ? "read" : "write",
      fd: Number(m[4]),
      ret: Number(m[5]),
    });
  }
  return out;
}

/** The fds of `pid` whose TCP peer is `port` on 127.0.0.1 (IPv4 sockets only). */
function fdsToPort(pid: number, port: number): Set<number> {
  const inodes = new Set<string>();
  for (const line of Deno.readTextFileSync(`/proc/${pid}/net/tcp`).split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const remotePort = parseInt(f[2]!.split(":")[1]!, 16);
    if (remotePort === port) inodes.add(f[9]!);
  }
  const fds = new Set<number>();
  for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`));
      if (m !== null && inodes.has(m[1]!)) fds.add(Number(e.name));
    } catch { /* closed meanwhile */ }
  }
  return fds;
}

type Gap = "request path" | "A" | "response path" | "client";
const GAPS: Gap[] = ["request path", "A", "response path", "client"];

/** Gaps between consecutive successful calls, by what lies between them. */
function splitGaps(calls: Call[], upstreamFds: Set<number>): Map<Gap | "other", number[]> {
  const ok = calls.filter((c) => c.ret > 0);
  const out = new Map<Gap | "other", number[]>();
  for (let i = 1; i < ok.length; i++) {
    const a = ok[i - 1]!, b = ok[i]!;
    const aUp = upstreamFds.has(a.fd), bUp = upstreamFds.has(b.fd);
    let gap: Gap | "other" = "other";
    if (a.kind === "read" && !aUp && b.kind === "write" && bUp) gap = "request path";
    else if (a.kind === "write" && aUp && b.kind === "read" && bUp) gap = "A";
    else if (a.kind === "read" && aUp && b.kind === "write" && !bUp) gap = "response path";
    else if (a.kind === "write" && !aUp && b.kind === "read" && !bUp) gap = "client";
    const us = (b.at - (a.at + a.dur)) * 1000;
    // A pause between wrk runs is no request's time.
    if (us > 100_000) continue;
    let list = out.get(gap);
    if (list === undefined) out.set(gap, list = []);
    list.push(us);
  }
  return out;
}

async function wrk(port: number, seconds: number): Promise<{ requests: number; p50: string }> {
  const { out, requests } = await wrkPost(port, { conns: 1, seconds, script, latency: true });
  return { requests, p50: /\s50%\s+(\S+)/.exec(out)?.[1] ?? "?" };
}

try {
  {
    const port = freePort();
    const proc = await startRelay("relay", {
      port,
      upstream: up.url,
      cpu: "0",
      env: { ACCESS_LOG: "0" },
      logFile: `${dir}/relay.log`,
    });
    procs.push(proc);
    rows.push({ name: "relay", port, proc });
  }
  for (
    const [name, script] of [["deno-minimal", "minimal_relay.ts"], ["tcp-pipe", "tcp_pipe.ts"]]
  ) {
    const { proc, port } = await startCalibration(name!, {
      script: script!,
      upstream: up.url,
      cpu: "0",
      logFile: `${dir}/${name}.log`,
    });
    procs.push(proc);
    rows.push({ name: name!, port, proc });
  }
  {
    const port = freePort();
    const proc = await startNginx(
      "nginx-proxy",
      `${dir}/nginx-proxy`,
      proxyConfig(`${dir}/nginx-proxy`, [{ listen: port, upstreamPort }]),
      { cpu: "0", ports: [port] },
    );
    procs.push(proc);
    rows.push({ name: "nginx", port, proc });
  }
  const lines = [
    `c=1, wrk -t1 -c1 -d${seconds}s per row under perf trace; µs between socket calls, medians (p90)`,
    "",
    "| row | untraced p50 | traced requests | request path | A | response path | client |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ];
  for (const row of rows) {
    await wrk(row.port, 2); // warm-up: JIT, the connection to A
    const plain = await wrk(row.port, seconds);
    const file = `${dir}/${row.name}.trace`;
    // Started through `spawn`, so the time limit above stops it too.
    const perf = spawn("perf", [
      "perf",
      "trace",
      "-e",
      "recvfrom,sendto,read,write,readv,writev",
      "-p",
      String(row.proc.pid),
      "-o",
      file,
    ]);
    let traced: { requests: number; p50: string };
    let upstreamFds: Set<number>;
    try {
      await sleep(1000); // perf attaches
      const run = wrk(row.port, seconds);
      // Read while wrk's connection, and with it the proxy's to A, is open.
      await sleep(1000);
      upstreamFds = fdsToPort(row.proc.pid, upstreamPort);
      traced = await run;
      await sleep(300);
    } finally {
      // SIGINT makes perf write out what it traced.
      perf.signal("SIGINT");
      await perf.child.status;
    }
    const gaps = splitGaps(parseTrace(Deno.readTextFileSync(file)), upstreamFds);
    const cell = (g: Gap): string => {
      const v = gaps.get(g) ?? [];
      return v.length === 0 ? "–" : `${round(quantile(v, 0.5), 1)} (${round(quantile(v, 0.9), 1)})`;
    };
    lines.push(
      `| ${row.name} | ${plain.p50} | ${traced.requests} | ${GAPS.map(cell).join(" | ")} |`,
    );
  }
  // deno-lint-ignore no-console
  console.log(lines.join("\n"));
} finally {
  for (const p of procs.reverse()) await p.stop();
  disarm();
}
