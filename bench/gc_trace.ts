/**
 * Summarises V8's `--trace-gc-nvp` lines (one JSON object per collection, on a process's stdout or
 * in its log): how many young-generation collections (scavenges) and full ones (mark-compacts) ran, their
 * pauses, and what the scavenges copied. A scavenge copies every live young object, once into the
 * other half of the young generation and, if it survives again, into the old one, so its pause
 * follows the bytes it copies, not the size of the heap. Prints markdown on stdout.
 *
 *   deno run -A bench/gc_trace.ts path/to/relay.log
 *
 * `bench/sse_cpu.ts --gc` uses it per round and per row.
 */

/** One collection, as far as this summary needs it. */
export interface GcEvent {
  /** ms since the isolate started. */
  at: number;
  /** "s" (scavenge), "mms" (minor mark-sweep, `--minor-ms`), "mc" (mark-compact). */
  kind: string;
  /** Main-thread pause, ms. */
  pause: number;
  /** Bytes a scavenge kept in the young generation, and bytes it moved to the old one. */
  survived: number;
  promoted: number;
}

/** What {@link summariseGc} reports. */
export interface GcSummary {
  scavenges: number;
  scavengeMs: number;
  longestScavengeMs: number;
  /**
   * MB the scavenges copied (kept young plus promoted). For minor mark-sweeps (`--minor-ms`) the
   * same two numbers, which that collector mostly keeps in place rather than copies.
   */
  copiedMb: number;
  /** MB copied per ms of scavenge pause. */
  mbPerMs: number;
  fullGcs: number;
  fullGcMs: number;
  longestFullGcMs: number;
}

const LINE = /(\d+) ms: GC: (\{[^\n]*\})/g;
/** A line of the relay's own log (`lib/observe/log.ts`), written whole to stderr. */
const RELAY_LOG_LINE = /\{"time":"[^"\n]*","level":"[a-z]+"[^\n]*\}\n/g;

/**
 * The collections traced in `text`. V8 prints through C's buffered stdout while the relay writes
 * its log lines to stderr whole, so in a shared log file one of those can land inside a trace line:
 * they are taken out first. Lines still broken (cut at the end of a read) are skipped, not guessed
 * at.
 */
export function parseGcTrace(text: string): GcEvent[] {
  const out: GcEvent[] = [];
  for (const m of text.replace(RELAY_LOG_LINE, "").matchAll(LINE)) {
    let g: Record<string, unknown>;
    try {
      g = JSON.parse(m[2]!) as Record<string, unknown>;
    } catch {
      continue;
    }
    if (typeof g.gc !== "string" || typeof g.pause !== "number") continue;
    out.push({
      at: Number(m[1]),
      kind: g.gc,
      pause: g.pause,
      survived: typeof g.new_space_survived === "number" ? g.new_space_survived : 0,
      promoted: typeof g.promoted === "number" ? g.promoted : 0,
    });
  }
  return out;
}

/** Where coreutils keeps the library behind `stdbuf` (Debian and Ubuntu). */
const STDBUF_LIB = "/usr/libexec/coreutils/libstdbuf.so";

/**
 * Environment for a child whose V8 trace is read while it runs: C's stdout line-buffered (what
 * `stdbuf -oL` does), so each trace line is in the log as soon as its collection ended and none is
 * split between two reads. Empty, with a warning, where the library is missing: then a round's last
 * collection may be counted in the next round.
 */
export function lineBufferedStdout(): Record<string, string> {
  try {
    Deno.statSync(STDBUF_LIB);
  } catch {
    // deno-lint-ignore no-console
    console.warn(`${STDBUF_LIB} not found: GC lines may reach the log a round late`);
    return {};
  }
  return { LD_PRELOAD: STDBUF_LIB, _STDBUF_O: "L" };
}

const round1 = (x: number): number => Math.round(x * 10) / 10;
const round2 = (x: number): number => Math.round(x * 100) / 100;

const YOUNG = new Set(["s", "mms"]);

/** Whether a collection of this kind is a young-generation one (scavenge or minor mark-sweep). */
export function isYoung(e: GcEvent): boolean {
  return YOUNG.has(e.kind);
}

/**
 * Totals over `events`; scavenges and minor mark-sweeps count as young collections (the summary's
 * `scavenges`), the rest as full ones.
 */
export function summariseGc(events: readonly GcEvent[]): GcSummary {
  let scavenges = 0, scavengeMs = 0, longestScavengeMs = 0, copied = 0;
  let fullGcs = 0, fullGcMs = 0, longestFullGcMs = 0;
  for (const e of events) {
    if (isYoung(e)) {
      scavenges++;
      scavengeMs += e.pause;
      longestScavengeMs = Math.max(longestScavengeMs, e.pause);
      copied += e.survived + e.promoted;
    } else {
      fullGcs++;
      fullGcMs += e.pause;
      longestFullGcMs = Math.max(longestFullGcMs, e.pause);
    }
  }
  const copiedMb = copied / 1e6;
  return {
    scavenges,
    scavengeMs: round1(scavengeMs),
    longestScavengeMs: round1(longestScavengeMs),
    copiedMb: round1(copiedMb),
    mbPerMs: scavengeMs > 0 ? round2(copiedMb / scavengeMs) : 0,
    fullGcs,
    fullGcMs: round1(fullGcMs),
    longestFullGcMs: round1(longestFullGcMs),
  };
}

/** One line of a markdown table for `summary` (see {@link GC_TABLE_HEAD}). */
export function gcRow(name: string, s: GcSummary): string {
  return `| ${name} | ${s.scavenges} | ${s.scavengeMs} | ${s.longestScavengeMs} | ${s.copiedMb} | ` +
    `${s.mbPerMs} | ${s.fullGcs} | ${s.fullGcMs} |`;
}

export const GC_TABLE_HEAD = "| row | young GCs | their pause, ms | longest, ms | copied, MB | " +
  "MB per ms | full GCs | their pause, ms |\n|---|---:|---:|---:|---:|---:|---:|---:|";

if (import.meta.main) {
  const file = Deno.args.find((a) => !a.startsWith("--"));
  if (file === undefined) {
    // deno-lint-ignore no-console
    console.error("usage: deno run -A bench/gc_trace.ts <log with --trace-gc-nvp lines>");
    Deno.exit(2);
  }
  const events = parseGcTrace(Deno.readTextFileSync(file));
  // deno-lint-ignore no-console
  console.log(`${GC_TABLE_HEAD}\n${gcRow(file, summariseGc(events))}`);
}
