/**
 * The first contact with an HTTPS Server A that speaks HTTP/2: how long the relay's start-up probe
 * takes and how many connections A sees, over a link with a round-trip time like a real B↔A route.
 * The relay's first connection to an upstream asks A by ALPN which protocol it speaks; since
 * `adopt` that connection becomes the first HTTP/2 session, where it used to be closed and a second
 * TCP + TLS handshake opened the session.
 *
 * Fake A is nginx (TLS 1.3, `listen ... ssl http2`, every path answers a small JSON) on core 1,
 * behind `route_sim/delay_relay.ts` with `--rtt` ms (default 100) of round trip; each relay on
 * core 0 with `UPSTREAM_SERVER_A` pointing at the link, started fresh per round. Per relay and
 * round: the start-up probe's time (`/debug/info`'s `upstreamHealth[0].lastProbeMs`), one request
 * after it (the session is warm by then), and the TCP connections the link accepted.
 *
 *   deno run -A bench/h2_first.ts [--base=TREE] [--rtt=100] [--rounds=3]
 *
 * `--base=TREE`: another checkout's relay, run in alternation with this one (A/B).
 */

import {
  freePort,
  HOST,
  installCleanup,
  median,
  numFlag,
  parseFlags,
  progress,
  round,
  sleep,
  startRelay,
  tempDir,
} from "./common.ts";
import { preamble, startNginx } from "./nginx.ts";
import { makeCert } from "./route_sim/fake_a.ts";
import { startDelayRelay } from "./route_sim/delay_relay.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

interface Row {
  tree: string;
  probeMs: number;
  nextMs: number;
  connections: number;
}

/** Waits for the start-up probe's time in `/debug/info` (at most 10 s). */
async function probeMs(port: number): Promise<number> {
  for (let i = 0; i < 200; i++) {
    await sleep(50);
    const info = await (await fetch(`http://${HOST}:${port}/debug/info`)).json();
    const ms = info.upstreamHealth?.[0]?.lastProbeMs;
    if (typeof ms === "number") return ms;
  }
  throw new Error("no start-up probe within 10 s");
}

async function main(): Promise<void> {
  const f = parseFlags(Deno.args);
  const rtt = numFlag(f, "rtt", 100);
  const rounds = numFlag(f, "rounds", 3);
  const trees: Array<[string, string]> = [["this tree", ROOT]];
  const base = f.get("base");
  if (base !== undefined) trees.push([`base (${base})`, base.replace(/\/$/, "")]);
  const disarm = installCleanup(120 + rounds * 60);
  const dir = tempDir("h2-first");
  const { certFile, keyFile } = await makeCert(dir);
  const aPort = freePort();
  const nginx = await startNginx(
    "fake-a",
    `${dir}/a`,
    `${preamble(`${dir}/a`)}  tcp_nodelay on;
  server {
    listen ${HOST}:${aPort} ssl http2;
    ssl_certificate ${certFile};
    ssl_certificate_key ${keyFile};
    ssl_protocols TLSv1.3;
    location / {
      default_type application/json;
      return 200 '{"status":"pong"}';
    }
  }
}
`,
    { cpu: "1", ports: [aPort] },
  );
  const rows: Row[] = [];
  try {
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? trees : [...trees].reverse();
      for (const [tree, path] of order) {
        progress(`round ${r + 1}/${rounds}: ${tree}`);
        const link = startDelayRelay({ port: 0, targetPort: aPort, oneWayMs: rtt / 2 });
        const port = freePort();
        const relay = await startRelay(`relay-${r}`, {
          port,
          upstream: `https://${HOST}:${link.port}`,
          cpu: "0",
          script: `${path}/main.ts`,
          env: { DENO_CERT: certFile, ACCESS_LOG: "0" },
          logFile: `${dir}/relay-${r}-${rows.length}.log`,
        });
        try {
          const probe = await probeMs(port);
          const t0 = performance.now();
          const res = await fetch(`http://${HOST}:${port}/v1/models`);
          await res.text();
          if (res.status !== 200) throw new Error(`${tree}: status ${res.status}`);
          rows.push({
            tree,
            probeMs: probe,
            nextMs: round(performance.now() - t0, 1),
            connections: link.connections,
          });
        } finally {
          await relay.stop();
          link.close();
        }
      }
    }
  } finally {
    await nginx.stop();
    disarm();
  }
  let out = `### First contact with an h2 Server A (B↔A RTT ${rtt} ms, ${rounds} rounds)\n\n` +
    "| relay | start-up probe per round | median | next request, median | connections to A |\n" +
    "|---|---|---:|---:|---:|\n";
  for (const [tree] of trees) {
    const mine = rows.filter((x) => x.tree === tree);
    out += `| ${tree} | ${mine.map((x) => x.probeMs).join(", ")} ms | ${
      median(mine.map((x) => x.probeMs))
    } ms | ${median(mine.map((x) => x.nextMs))} ms | ${
      [...new Set(mine.map((x) => x.connections))].join(", ")
    } |\n`;
  }
  // deno-lint-ignore no-console
  console.log(out);
}

if (import.meta.main) await main();
