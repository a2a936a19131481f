/**
 * @module metrics
 * A small Prometheus registry (counters, gauges, histograms) and a recent-samples window for the
 * relay's own dashboard.
 *
 * Owns: metric and label naming rules, the Prometheus text exposition format 0.0.4 (escaping,
 * `# HELP` / `# TYPE`, cumulative histogram buckets), and percentile / rate arithmetic over recent
 * samples.
 *
 * Must never: do I/O, read clocks (callers pass `nowMs`), throw on the hot path (`inc`, `set`,
 * `observe`, `add` ignore values they cannot record), or build strings per call for label sets
 * already seen. Configuration mistakes (bad names, unsorted buckets, duplicate metrics) do throw,
 * at creation time.
 */

/** The `Content-Type` of {@link Registry.render} output. */
export const PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Label values keyed by label name. Names must be the ones the metric declared. */
export type Labels<L extends string = string> = Readonly<Record<L, string>>;

/** What a gauge's `collect` callback returns: one unlabelled value, or labelled samples. */
export type Collected<L extends string = string> =
  | number
  | ReadonlyArray<readonly [Labels<L>, number]>;

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** Escapes a label value: backslash, double quote and line feed, as the text format requires. */
export function escapeLabelValue(value: string): string {
  return /[\\"\n]/.test(value)
    ? value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")
    : value;
}

/** Escapes `# HELP` text: backslash and line feed only (quotes are literal there). */
export function escapeHelp(help: string): string {
  return help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

/** Formats a sample value the way Prometheus parses it (`+Inf`, `-Inf`, `NaN`, Go float syntax). */
export function formatValue(value: number): string {
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  if (Number.isNaN(value)) return "NaN";
  return String(value);
}

/** `a="x",b="y"` for the given names and values; empty string when there are no labels. */
function labelPairs(names: readonly string[], values: readonly string[]): string {
  let out = "";
  for (let i = 0; i < names.length; i++) {
    if (i > 0) out += ",";
    out += `${names[i]}="${escapeLabelValue(values[i] ?? "")}"`;
  }
  return out;
}

function braces(pairs: string): string {
  return pairs === "" ? "" : `{${pairs}}`;
}

function validateNames(
  name: string,
  labelNames: readonly string[],
  reserved: readonly string[],
): void {
  if (!METRIC_NAME.test(name)) throw new TypeError(`Invalid metric name "${name}"`);
  const seen = new Set<string>();
  for (const label of labelNames) {
    if (!LABEL_NAME.test(label) || label.startsWith("__")) {
      throw new TypeError(`Invalid label name "${label}" on metric "${name}"`);
    }
    if (reserved.includes(label)) {
      throw new TypeError(`Label name "${label}" is reserved on metric "${name}"`);
    }
    if (seen.has(label)) throw new TypeError(`Duplicate label name "${label}" on metric "${name}"`);
    seen.add(label);
  }
}

/**
 * Finds the child for a label set through one Map level per label name, so a label set already
 * seen costs a few Map lookups and no string building. Children are kept in creation order for
 * stable output.
 */
class ChildIndex<C> {
  readonly #names: readonly string[];
  readonly #make: (pairs: string) => C;
  readonly #root = new Map<string, unknown>();
  #only: C | undefined;
  /** Every child, in creation order. */
  readonly all: C[] = [];

  constructor(names: readonly string[], make: (pairs: string) => C) {
    this.#names = names;
    this.#make = make;
  }

  get(labels: Readonly<Record<string, string>>): C {
    const names = this.#names;
    const depth = names.length;
    if (depth === 0) return this.#only ?? (this.#only = this.#create([]));
    let map = this.#root;
    for (let i = 0; i < depth - 1; i++) {
      const value = labels[names[i] as string] ?? "";
      let next = map.get(value) as Map<string, unknown> | undefined;
      if (next === undefined) {
        next = new Map();
        map.set(value, next);
      }
      map = next;
    }
    const last = labels[names[depth - 1] as string] ?? "";
    let child = map.get(last) as C | undefined;
    if (child === undefined) {
      child = this.#create(names.map((n) => labels[n] ?? ""));
      map.set(last, child);
    }
    return child;
  }

  #create(values: readonly string[]): C {
    const child = this.#make(labelPairs(this.#names, values));
    this.all.push(child);
    return child;
  }
}

/** The parts every metric shares; {@link Registry.render} calls `render`. */
abstract class Metric {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  abstract readonly type: "counter" | "gauge" | "histogram";

  constructor(name: string, help: string, labelNames: readonly string[]) {
    this.name = name;
    this.help = help;
    this.labelNames = Object.freeze([...labelNames]);
  }

  /** Appends this metric's sample lines (without HELP/TYPE) to `out`. */
  abstract renderSamples(out: string[]): void;
}

interface ValueCell {
  readonly pairs: string;
  value: number;
}

/** A handle to one counter series; obtain it once with {@link Counter.labels} on hot paths. */
export interface CounterChild {
  /** Adds `n` (default 1). Negative, NaN or infinite `n` is ignored: counters only go up. */
  inc(n?: number): void;
}

/**
 * A monotonically increasing count, e.g. requests by route and status. Either incremented here,
 * or, with a `collect` callback, read at render time from a count kept elsewhere (a connection
 * pool's); then its answer replaces the series incremented here.
 */
export class Counter<L extends string = string> extends Metric {
  readonly type = "counter";
  readonly #children: ChildIndex<ValueCell & CounterChild>;
  readonly #collect: (() => Collected<L>) | undefined;

  /** Use {@link Registry.counter}, which also registers the metric. */
  constructor(name: string, help: string, labelNames: readonly L[], collect?: () => Collected<L>) {
    validateNames(name, labelNames, []);
    super(name, help, labelNames);
    this.#collect = collect;
    this.#children = new ChildIndex(this.labelNames, (pairs) => ({
      pairs,
      value: 0,
      inc(n = 1) {
        if (n >= 0 && n !== Infinity) this.value += n;
      },
    }));
  }

  /** The series for these label values, created on first use and cached. */
  labels(labels: Labels<L>): CounterChild {
    return this.#children.get(labels);
  }

  /** Adds `n` (default 1) to the series for `labels`. */
  inc(labels: Labels<L>, n = 1): void {
    this.#children.get(labels).inc(n);
  }

  /** The current value for `labels` (0 when never incremented). */
  get(labels: Labels<L>): number {
    return this.#children.get(labels).value;
  }

  override renderSamples(out: string[]): void {
    if (this.#collect !== undefined) {
      renderCollected(this.name, this.labelNames, this.#collect, out);
      return;
    }
    for (const child of this.#children.all) {
      out.push(`${this.name}${braces(child.pairs)} ${formatValue(child.value)}`);
    }
  }
}

/** Renders what a `collect` callback returns; a failing or malformed one renders no samples. */
function renderCollected<L extends string>(
  name: string,
  labelNames: readonly string[],
  collect: () => Collected<L>,
  out: string[],
): void {
  const lines: string[] = [];
  try {
    const collected = collect();
    if (typeof collected === "number") {
      lines.push(`${name} ${formatValue(collected)}`);
    } else {
      const seen = new Set<string>();
      for (const [labels, value] of collected) {
        const values = labelNames.map((n) => String(labels[n as L] ?? ""));
        const pairs = labelPairs(labelNames, values);
        // A duplicate series makes the whole exposition invalid; keep the first.
        if (seen.has(pairs)) continue;
        seen.add(pairs);
        lines.push(`${name}${braces(pairs)} ${formatValue(Number(value))}`);
      }
    }
  } catch {
    // A failing or malformed callback must not take the whole scrape down.
    return;
  }
  for (const line of lines) out.push(line);
}

/** A handle to one gauge series; obtain it once with {@link Gauge.labels} on hot paths. */
export interface GaugeChild {
  /** Sets the value. */
  set(value: number): void;
  /** Adds `n` (default 1). */
  inc(n?: number): void;
  /** Subtracts `n` (default 1). */
  dec(n?: number): void;
}

/**
 * A value that goes up and down. Either set it directly, or give it a `collect` callback that is
 * asked at render time (in-flight requests, upstream health); when `collect` is given, its answer
 * replaces the directly set series.
 */
export class Gauge<L extends string = string> extends Metric {
  readonly type = "gauge";
  readonly #children: ChildIndex<ValueCell & GaugeChild>;
  readonly #collect: (() => Collected<L>) | undefined;

  /** Use {@link Registry.gauge}, which also registers the metric. */
  constructor(
    name: string,
    help: string,
    labelNames: readonly L[],
    collect?: () => Collected<L>,
  ) {
    validateNames(name, labelNames, []);
    super(name, help, labelNames);
    this.#collect = collect;
    this.#children = new ChildIndex(this.labelNames, (pairs) => ({
      pairs,
      value: 0,
      set(value: number) {
        this.value = value;
      },
      inc(n = 1) {
        this.value += n;
      },
      dec(n = 1) {
        this.value -= n;
      },
    }));
  }

  /** The series for these label values, created on first use and cached. */
  labels(labels: Labels<L>): GaugeChild {
    return this.#children.get(labels);
  }

  /** Sets the series for `labels` to `value`. */
  set(labels: Labels<L>, value: number): void {
    this.#children.get(labels).set(value);
  }

  /** Adds `n` (default 1) to the series for `labels`. */
  inc(labels: Labels<L>, n = 1): void {
    this.#children.get(labels).inc(n);
  }

  /** Subtracts `n` (default 1) from the series for `labels`. */
  dec(labels: Labels<L>, n = 1): void {
    this.#children.get(labels).dec(n);
  }

  /** The directly set value for `labels` (0 when never set); ignores `collect`. */
  get(labels: Labels<L>): number {
    return this.#children.get(labels).value;
  }

  override renderSamples(out: string[]): void {
    if (this.#collect === undefined) {
      for (const child of this.#children.all) {
        out.push(`${this.name}${braces(child.pairs)} ${formatValue(child.value)}`);
      }
      return;
    }
    renderCollected(this.name, this.labelNames, this.#collect, out);
  }
}

/** A handle to one histogram series; obtain it once with {@link Histogram.labels} on hot paths. */
export interface HistogramChild {
  /** Records one observation. NaN is ignored. */
  observe(value: number): void;
}

interface HistogramCell extends HistogramChild {
  readonly pairs: string;
  /** Per-bucket (not cumulative) counts; the last slot is the +Inf bucket. */
  readonly counts: Float64Array;
  sum: number;
  count: number;
}

/** Default latency buckets in seconds, from 5 ms to 5 minutes (LLM calls run long). */
export const DEFAULT_BUCKETS: readonly number[] = Object.freeze([
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  120,
  300,
]);

/** A distribution of observations (seconds, by convention) in fixed cumulative buckets. */
export class Histogram<L extends string = string> extends Metric {
  readonly type = "histogram";
  /** Upper bounds, strictly increasing, without +Inf. */
  readonly buckets: readonly number[];
  readonly #children: ChildIndex<HistogramCell>;
  readonly #le: readonly string[];

  /** Use {@link Registry.histogram}, which also registers the metric. */
  constructor(
    name: string,
    help: string,
    labelNames: readonly L[],
    buckets: readonly number[] = DEFAULT_BUCKETS,
  ) {
    validateNames(name, labelNames, ["le"]);
    super(name, help, labelNames);
    const bounds = buckets.filter((b) => b !== Infinity);
    for (let i = 0; i < bounds.length; i++) {
      const b = bounds[i] as number;
      if (!Number.isFinite(b)) throw new TypeError(`Invalid bucket ${b} on metric "${name}"`);
      if (i > 0 && b <= (bounds[i - 1] as number)) {
        throw new TypeError(`Buckets must be strictly increasing on metric "${name}"`);
      }
    }
    this.buckets = Object.freeze(bounds);
    const le = [...bounds.map(formatValue), "+Inf"];
    this.#le = le;
    const upper = Float64Array.from(bounds);
    this.#children = new ChildIndex(this.labelNames, (pairs) => ({
      pairs,
      counts: new Float64Array(le.length),
      sum: 0,
      count: 0,
      observe(value: number) {
        if (Number.isNaN(value)) return;
        // Linear scan: a dozen or so buckets, and most latencies land in the first few.
        let i = 0;
        while (i < upper.length && value > (upper[i] as number)) i++;
        (this.counts[i] as number)++;
        this.sum += value;
        this.count++;
      },
    }));
  }

  /** The series for these label values, created on first use and cached. */
  labels(labels: Labels<L>): HistogramChild {
    return this.#children.get(labels);
  }

  /** Records `value` in the series for `labels`. */
  observe(labels: Labels<L>, value: number): void {
    this.#children.get(labels).observe(value);
  }

  override renderSamples(out: string[]): void {
    for (const child of this.#children.all) {
      const sep = child.pairs === "" ? "" : ",";
      let cumulative = 0;
      for (let i = 0; i < this.#le.length; i++) {
        cumulative += child.counts[i] as number;
        out.push(
          `${this.name}_bucket{${child.pairs}${sep}le="${this.#le[i]}"} ${formatValue(cumulative)}`,
        );
      }
      out.push(`${this.name}_sum${braces(child.pairs)} ${formatValue(child.sum)}`);
      out.push(`${this.name}_count${braces(child.pairs)} ${formatValue(child.count)}`);
    }
  }
}

/** Holds the relay's metrics and renders them for a Prometheus scrape. */
export class Registry {
  readonly #metrics: Metric[] = [];
  readonly #claimed = new Set<string>();

  /**
   * Creates and registers a counter. With `collect`, its samples are read at render time from a
   * count kept elsewhere. Throws on an invalid or already registered name.
   */
  counter<L extends string = never>(
    name: string,
    help: string,
    labelNames: readonly L[] = [],
    collect?: () => Collected<L>,
  ): Counter<L> {
    return this.#add(new Counter(name, help, labelNames, collect));
  }

  /**
   * Creates and registers a gauge. With `collect`, its samples are computed at render time.
   * Throws on an invalid or already registered name.
   */
  gauge<L extends string = never>(
    name: string,
    help: string,
    labelNames: readonly L[] = [],
    collect?: () => Collected<L>,
  ): Gauge<L> {
    return this.#add(new Gauge(name, help, labelNames, collect));
  }

  /**
   * Creates and registers a histogram with the given bucket upper bounds (seconds by
   * convention; `+Inf` is implied). Throws on an invalid or already registered name, a label
   * named `le`, or buckets that are not strictly increasing.
   */
  histogram<L extends string = never>(
    name: string,
    help: string,
    labelNames: readonly L[] = [],
    buckets: readonly number[] = DEFAULT_BUCKETS,
  ): Histogram<L> {
    return this.#add(new Histogram(name, help, labelNames, buckets));
  }

  /** Every registered metric in the text exposition format 0.0.4, ending with a newline. */
  render(): string {
    const out: string[] = [];
    for (const metric of this.#metrics) {
      out.push(`# HELP ${metric.name} ${escapeHelp(metric.help)}`);
      out.push(`# TYPE ${metric.name} ${metric.type}`);
      metric.renderSamples(out);
    }
    return out.length === 0 ? "" : out.join("\n") + "\n";
  }

  #add<M extends Metric>(metric: M): M {
    // A histogram also owns name_bucket, name_sum and name_count; a clash with any of those would
    // make the exposition ambiguous, so every claimed name must be free.
    const claimed = metric.type === "histogram"
      ? [metric.name, `${metric.name}_bucket`, `${metric.name}_sum`, `${metric.name}_count`]
      : [metric.name];
    for (const name of claimed) {
      if (this.#claimed.has(name)) {
        throw new TypeError(`Metric name "${name}" is already registered`);
      }
    }
    for (const name of claimed) this.#claimed.add(name);
    this.#metrics.push(metric);
    return metric;
  }
}

/**
 * The last `capacity` samples with their timestamps, for a dashboard's p50 / p95 and
 * requests-per-second. `add` is O(1) and allocation-free; `percentile` sorts a copy of the
 * window (O(n log n), n <= capacity), meant for a dashboard refresh, not per request.
 */
export class RecentWindow {
  readonly capacity: number;
  readonly #values: Float64Array;
  readonly #times: Float64Array;
  /** Next slot to write. */
  #next = 0;
  #size = 0;

  /** @param capacity How many recent samples to keep (default 2048). */
  constructor(capacity = 2048) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`RecentWindow capacity must be a positive integer, got ${capacity}`);
    }
    this.capacity = capacity;
    this.#values = new Float64Array(capacity);
    this.#times = new Float64Array(capacity);
  }

  /** How many samples are held (at most `capacity`). */
  get size(): number {
    return this.#size;
  }

  /** Records `value` observed at `nowMs`, evicting the oldest sample when full. NaN is ignored. */
  add(value: number, nowMs: number): void {
    if (Number.isNaN(value)) return;
    this.#values[this.#next] = value;
    this.#times[this.#next] = nowMs;
    this.#next = this.#next + 1 === this.capacity ? 0 : this.#next + 1;
    if (this.#size < this.capacity) this.#size++;
  }

  /**
   * The `p`-th percentile (0-100) of the held samples, optionally only those at or after
   * `sinceMs`, interpolating linearly between the closest ranks (the common "type 7" definition,
   * as numpy and spreadsheets use). `undefined` when no sample qualifies.
   */
  percentile(p: number, sinceMs?: number): number | undefined {
    if (Number.isNaN(p)) return undefined;
    const picked = new Float64Array(this.#size);
    let n = 0;
    for (let i = 0; i < this.#size; i++) {
      if (sinceMs === undefined || (this.#times[i] as number) >= sinceMs) {
        picked[n++] = this.#values[i] as number;
      }
    }
    if (n === 0) return undefined;
    const sorted = picked.subarray(0, n).sort();
    const rank = (Math.min(100, Math.max(0, p)) / 100) * (n - 1);
    const lo = Math.floor(rank);
    const hi = Math.ceil(rank);
    const low = sorted[lo] as number;
    return lo === hi ? low : low + ((sorted[hi] as number) - low) * (rank - lo);
  }

  /** How many held samples were recorded at or after `sinceMs`. */
  countSince(sinceMs: number): number {
    let n = 0;
    for (let i = 0; i < this.#size; i++) if ((this.#times[i] as number) >= sinceMs) n++;
    return n;
  }

  /**
   * Samples per second over the `windowMs` ending at `nowMs` (samples with
   * `nowMs - windowMs < t <= nowMs`). When the buffer is full and its oldest sample is inside the
   * window, older samples in the window were evicted, so the rate is taken over the span the
   * buffer still covers instead of being underestimated.
   */
  rate(windowMs: number, nowMs: number): number {
    if (!(windowMs > 0) || this.#size === 0) return 0;
    const from = nowMs - windowMs;
    let n = 0;
    for (let i = 0; i < this.#size; i++) {
      const t = this.#times[i] as number;
      if (t > from && t <= nowMs) n++;
    }
    let spanMs = windowMs;
    if (this.#size === this.capacity) {
      const oldest = this.#times[this.#next] as number; // the slot about to be overwritten
      if (oldest > from) spanMs = Math.max(nowMs - oldest, 1);
    }
    return n / (spanMs / 1000);
  }
}
