/**
 * Latency at concurrency 1: sends `--n` POST requests one after another on one keep-alive
 * connection and prints the latency distribution (ms) as JSON on stdout.
 *
 *   deno run -A bench/latency.ts --url=http://127.0.0.1:8000/v1/chat/completions \
 *     --upstream=http://127.0.0.1:9000 --n=5000 --warmup=500 [--max-sec=60]
 *
 * `--upstream` only fills the Portkey routing header (ignored by the other targets).
 * Bounded by `--n` and by `--max-sec`.
 */

import { benchHeaders, CHAT_REQUEST, numFlag, parseFlags, quantile, round } from "./common.ts";
import { buildRequest, Client, parseTarget } from "./http_client.ts";

/** Latency distribution of one run, ms. */
export interface LatencyResult {
  n: number;
  errors: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/** Runs the sequential latency loop against `url`. */
export async function measureLatency(
  url: string,
  opts: { upstream: string; n: number; warmup: number; maxSec: number },
): Promise<LatencyResult> {
  const { target, path } = parseTarget(url);
  const req = buildRequest(
    "POST",
    path,
    `${target.hostname}:${target.port}`,
    benchHeaders(opts.upstream),
    CHAT_REQUEST,
  );
  let client = await Client.open(target);
  const samples: number[] = [];
  let errors = 0;
  const deadline = performance.now() + opts.maxSec * 1000;
  for (let i = 0; i < opts.warmup + opts.n && performance.now() < deadline; i++) {
    try {
      if (client.closed) client = await Client.open(target);
      const t = await client.exchange(req);
      if (t.status !== 200) errors++;
      if (i >= opts.warmup) samples.push(t.endAt - t.sentAt);
    } catch {
      errors++;
      client.close();
    }
  }
  client.close();
  let sum = 0;
  for (const s of samples) sum += s;
  return {
    n: samples.length,
    errors,
    p50: round(quantile(samples, 0.5), 4),
    p90: round(quantile(samples, 0.9), 4),
    p99: round(quantile(samples, 0.99), 4),
    max: round(quantile(samples, 1), 4),
    mean: round(sum / Math.max(1, samples.length), 4),
  };
}

if (import.meta.main) {
  const flags = parseFlags(Deno.args);
  const url = flags.get("url");
  if (url === undefined) throw new Error("--url is required");
  const result = await measureLatency(url, {
    upstream: flags.get("upstream") ?? "http://127.0.0.1:1",
    n: numFlag(flags, "n", 5000),
    warmup: numFlag(flags, "warmup", 500),
    maxSec: numFlag(flags, "max-sec", 60),
  });
  // deno-lint-ignore no-console
  console.log(JSON.stringify(result));
}
