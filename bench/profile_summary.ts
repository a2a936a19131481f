/**
 * Summarises a V8 `.cpuprofile` (from `deno run --cpu-prof`): self time per function and per
 * source file, busy time only (`(idle)` left out). Prints markdown on stdout.
 *
 *   deno run -A bench/profile_summary.ts path/to/file.cpuprofile [--top=25]
 *
 * `(program)` is time on the main thread outside JavaScript: for Deno that is mostly Rust (the
 * HTTP server, sockets, the event loop) running between JavaScript calls.
 * `(garbage collector)` is V8's GC.
 */

import { numFlag, parseFlags, ROOT } from "./common.ts";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** One line of the summary. */
export interface Hotspot {
  name: string;
  selfMs: number;
  pct: number;
}

function shortUrl(url: string): string {
  if (url === "" || url.startsWith("ext:") || url.startsWith("node:")) return url;
  const npm = /registry\.npmjs\.org\/((?:@[^/]+\/)?[^/]+)\//.exec(url);
  if (npm !== null) return `npm:${npm[1]}`;
  const repo = `file://${ROOT}/`;
  return url.startsWith(repo) ? url.slice(repo.length) : url;
}

/** Self time by function and by file, busiest first. */
export function summarise(
  p: CpuProfile,
): { byFunction: Hotspot[]; byFile: Hotspot[]; busyMs: number } {
  const byId = new Map<number, ProfileNode>();
  for (const n of p.nodes) byId.set(n.id, n);
  const selfUs = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    // timeDeltas[i + 1] is how long sample i lasted.
    const dt = p.timeDeltas[i + 1] ?? 0;
    const id = p.samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
  }
  const fn = new Map<string, number>();
  const file = new Map<string, number>();
  let busy = 0;
  for (const [id, us] of selfUs) {
    const cf = byId.get(id)!.callFrame;
    if (cf.functionName === "(idle)") continue;
    busy += us;
    const where = shortUrl(cf.url);
    const name = `${cf.functionName || "(anonymous)"}${
      where ? ` ${where}:${cf.lineNumber + 1}` : ""
    }`;
    fn.set(name, (fn.get(name) ?? 0) + us);
    const f = where === "" ? cf.functionName : where;
    file.set(f, (file.get(f) ?? 0) + us);
  }
  const rank = (m: Map<string, number>): Hotspot[] =>
    [...m].sort((a, b) => b[1] - a[1]).map(([name, us]) => ({
      name,
      selfMs: Math.round(us / 100) / 10,
      pct: Math.round((us / busy) * 1000) / 10,
    }));
  return { byFunction: rank(fn), byFile: rank(file), busyMs: Math.round(busy / 1000) };
}

/** Markdown tables of the top entries. */
export function summaryMarkdown(s: ReturnType<typeof summarise>, top: number): string {
  let out =
    `Busy (non-idle) CPU sampled: ${s.busyMs} ms.\n\n| self time, by function | ms | % busy |\n|---|---:|---:|\n`;
  for (const h of s.byFunction.slice(0, top)) out += `| \`${h.name}\` | ${h.selfMs} | ${h.pct} |\n`;
  out += "\n| self time, by file | ms | % busy |\n|---|---:|---:|\n";
  for (const h of s.byFile.slice(0, Math.min(top, 15))) {
    out += `| \`${h.name}\` | ${h.selfMs} | ${h.pct} |\n`;
  }
  return out;
}

if (import.meta.main) {
  const flags = parseFlags(Deno.args);
  const path = Deno.args.find((a) => !a.startsWith("--"));
  if (path === undefined) throw new Error("usage: profile_summary.ts <file.cpuprofile>");
  const profile = JSON.parse(Deno.readTextFileSync(path)) as CpuProfile;
  // deno-lint-ignore no-console
  console.log(summaryMarkdown(summarise(profile), numFlag(flags, "top", 25)));
}
