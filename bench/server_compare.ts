/**
 * `Deno.serve` against our own HTTP/1.1 server (`lib/server/server.ts`) with a trivial handler that
 * answers a ~1 KB JSON: requests per second under `wrk -t1 -c50`, and the server's CPU time per
 * request (utime + stime of its process from `/proc/<pid>/stat`, over the measured run only).
 * Servers run one at a time, alternating, for `--rounds` rounds; a 1 s wrk warm-up precedes each
 * measured run. With two or more cores the server is pinned to core 0 and wrk to core 1.
 *
 *   deno run -A bench/server_compare.ts [--rounds=3] [--duration=5] [--connections=50]
 *
 * The servers themselves are this script in serve mode (one process each, stopped by its PID):
 *
 *   deno run -A bench/server_compare.ts --serve=deno|own --port=N
 *
 * Loopback only.
 */

import { serveHttp1 } from "../lib/server/server.ts";
import {
  CHAT_JSON,
  cpuSeconds,
  freePort,
  HOST,
  installCleanup,
  median,
  numFlag,
  parseFlags,
  progress,
  round,
  runToEnd,
  spawn,
  waitForPort,
} from "./common.ts";

const SELF = new URL(import.meta.url).pathname;
const SERVERS = ["deno", "own"] as const;
type ServerKind = typeof SERVERS[number];

/** Serve mode: the trivial JSON handler on `port`, until killed. */
function serve(kind: ServerKind, port: number): void {
  const handler = () =>
    new Response(CHAT_JSON, { headers: { "content-type": "application/json" } });
  if (kind === "deno") {
    Deno.serve({ hostname: HOST, port, automaticCompression: false, onListen() {} }, handler);
  } else {
    serveHttp1({ hostname: HOST, port }, handler);
  }
}

/** One measured run. */
interface Row {
  round: number;
  server: ServerKind;
  reqPerSec: number;
  cpuUsPerReq: number;
  requests: number;
  errors: string;
}

function parseWrk(out: string): { requests: number; reqPerSec: number; errors: string } {
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? NaN);
  const reqPerSec = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN);
  const errs = [/Socket errors:.*/.exec(out)?.[0], /Non-2xx or 3xx responses: \d+/.exec(out)?.[0]]
    .filter((x) => x !== undefined).join("; ");
  return { requests, reqPerSec, errors: errs };
}

async function measure(
  kind: ServerKind,
  roundNo: number,
  o: { duration: number; connections: number; serverCpu?: string; clientCpu?: string },
): Promise<Row> {
  const port = freePort();
  const proc = spawn(`server-${kind}`, [
    Deno.execPath(),
    "run",
    "-A",
    SELF,
    `--serve=${kind}`,
    `--port=${port}`,
  ], o.serverCpu === undefined ? {} : { cpu: o.serverCpu });
  try {
    await waitForPort(port, 15_000, proc);
    const url = `http://${HOST}:${port}/`;
    const wrk = (sec: number) =>
      runToEnd(
        "wrk",
        ["/usr/bin/wrk", "-t1", `-c${o.connections}`, `-d${sec}s`, url],
        {
          timeoutMs: (sec + 10) * 1000,
          ...(o.clientCpu === undefined ? {} : { cpu: o.clientCpu }),
        },
      );
    await wrk(1); // warm-up: JIT and connection set-up out of the measured run
    const before = cpuSeconds(proc.pid);
    const out = await wrk(o.duration);
    const cpu = cpuSeconds(proc.pid) - before;
    const w = parseWrk(out);
    return {
      round: roundNo,
      server: kind,
      reqPerSec: round(w.reqPerSec, 0),
      cpuUsPerReq: round((cpu * 1e6) / w.requests, 1),
      requests: w.requests,
      errors: w.errors,
    };
  } finally {
    await proc.stop();
  }
}

async function main(): Promise<void> {
  const flags = parseFlags(Deno.args);
  const kind = flags.get("serve");
  if (kind !== undefined) {
    if (kind !== "deno" && kind !== "own") throw new Error(`--serve=${kind}: expected deno or own`);
    serve(kind, numFlag(flags, "port", 8000));
    return;
  }
  const rounds = numFlag(flags, "rounds", 3);
  const duration = numFlag(flags, "duration", 5);
  const connections = numFlag(flags, "connections", 50);
  const pin = navigator.hardwareConcurrency >= 2;
  const disarm = installCleanup(rounds * SERVERS.length * (duration + 20) + 60);
  const rows: Row[] = [];
  try {
    for (let r = 1; r <= rounds; r++) {
      for (const s of SERVERS) {
        progress(`round ${r}: ${s}`);
        rows.push(
          await measure(s, r, {
            duration,
            connections,
            ...(pin ? { serverCpu: "0", clientCpu: "1" } : {}),
          }),
        );
      }
    }
  } finally {
    disarm();
  }
  const lines = [
    `wrk -t1 -c${connections} -d${duration}s, ~${CHAT_JSON.length} B JSON, ` +
    (pin ? "server on core 0, wrk on core 1" : "not pinned"),
    "",
    "| round | server | req/s | CPU µs/req | errors |",
    "|---:|---|---:|---:|---|",
    ...rows.map((x) =>
      `| ${x.round} | ${x.server} | ${x.reqPerSec} | ${x.cpuUsPerReq} | ${x.errors || "-"} |`
    ),
    ...SERVERS.map((s) => {
      const mine = rows.filter((x) => x.server === s);
      return `| median | ${s} | ${round(median(mine.map((x) => x.reqPerSec)), 0)} | ${
        round(median(mine.map((x) => x.cpuUsPerReq)), 1)
      } | |`;
    }),
  ];
  // deno-lint-ignore no-console
  console.log(lines.join("\n"));
}

if (import.meta.main) await main();
