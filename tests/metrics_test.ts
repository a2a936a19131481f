import {
  deepStrictEqual,
  equal,
  notStrictEqual,
  ok,
  strictEqual,
  throws,
} from "node:assert/strict";
import fc from "fast-check";
import {
  Counter,
  formatValue,
  PROM_CONTENT_TYPE,
  RecentWindow,
  Registry,
} from "../lib/observe/metrics.ts";
import { parseExposition, parseFloatStrict, valueOf } from "./prom_text.ts";

// The strict exposition parser lives in prom_text.ts (shared with the /metrics endpoint tests).

// The parser itself must reject what Prometheus rejects, or the tests below prove nothing.
Deno.test("test parser rejects malformed expositions when given known-bad input", () => {
  const bad = [
    "x 1\n", // sample without TYPE
    "# TYPE x counter\nx 1", // no trailing newline
    '# TYPE x counter\nx{a="b} 1\n', // unterminated value
    '# TYPE x counter\nx{a="\\t"} 1\n', // invalid escape
    '# TYPE x counter\nx{a="1",a="2"} 1\n', // duplicate label
    "# TYPE x counter\nx  1\n", // two spaces
    "# TYPE x counter\nx one\n", // bad value
    "# TYPE x counter\nx -1\n", // negative counter
    "# TYPE x counter\nx 1\nx 2\n", // duplicate series
    "# TYPE x counter\n# TYPE y counter\ny 1\nx 1\n", // not contiguous
    "# TYPE x counter\n# TYPE x counter\n", // repeated family
    "# HELP x a\\qb\n# TYPE x counter\n", // bad HELP escape
    '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n',
    '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n', // no +Inf
    '# TYPE h histogram\nh_bucket{le="2"} 1\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    "# TYPE x counter\n\n", // empty line
  ];
  for (const text of bad) {
    throws(() => parseExposition(text), Error, JSON.stringify(text));
  }
  const good =
    '# HELP h a \\\\ b\\nc "q"\n# TYPE h histogram\nh_bucket{le="0.5"} 0\nh_bucket{le="+Inf"} 2\nh_sum 3.5\nh_count 2\n';
  strictEqual(parseExposition(good).get("h")?.help, 'a \\ b\nc "q"');
});

// ---------------------------------------------------------------------------------------------
// Registry and metrics

Deno.test("Registry renders an empty string when nothing is registered", () => {
  strictEqual(new Registry().render(), "");
  strictEqual(PROM_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
});

Deno.test("Registry renders valid exposition text when counters, gauges and histograms have data", () => {
  const reg = new Registry();
  const requests = reg.counter("relay_requests_total", "Requests relayed.", ["route", "status"]);
  const inflight = reg.gauge("relay_in_flight", "Requests in flight.");
  const latency = reg.histogram("relay_upstream_seconds", "Upstream latency.", ["route"], [
    0.1,
    0.5,
    1,
  ]);
  const up = reg.gauge(
    "relay_upstream_up",
    "1 when the upstream answered its last probe.",
    ["upstream"],
    () => [[{ upstream: "a" }, 1], [{ upstream: "b" }, 0]],
  );
  reg.gauge("relay_uptime_seconds", "Seconds since start.", [], () => 12.5);
  const tokens = reg.counter("relay_tokens_total", "Tokens.", ["kind"]);

  requests.inc({ route: "/v1/messages", status: "200" });
  requests.inc({ route: "/v1/messages", status: "200" }, 2);
  requests.inc({ route: "/v1/chat/completions", status: "502" });
  inflight.set({}, 3);
  inflight.dec({});
  for (const v of [0.05, 0.1, 0.3, 0.7, 5]) latency.observe({ route: "/v1/messages" }, v);
  latency.observe({ route: "/v1/chat/completions" }, 0.2);
  up.set({ upstream: "ignored" }, 42); // collect wins over set values

  const text = reg.render();
  const families = parseExposition(text);
  deepStrictEqual([...families.keys()], [
    "relay_requests_total",
    "relay_in_flight",
    "relay_upstream_seconds",
    "relay_upstream_up",
    "relay_uptime_seconds",
    "relay_tokens_total",
  ]);
  strictEqual(families.get("relay_requests_total")?.type, "counter");
  strictEqual(families.get("relay_upstream_seconds")?.type, "histogram");
  strictEqual(families.get("relay_in_flight")?.help, "Requests in flight.");
  strictEqual(
    valueOf(families, "relay_requests_total", { route: "/v1/messages", status: "200" }),
    3,
  );
  strictEqual(
    valueOf(families, "relay_requests_total", { route: "/v1/chat/completions", status: "502" }),
    1,
  );
  strictEqual(valueOf(families, "relay_in_flight"), 2);
  const route = { route: "/v1/messages" };
  // le is inclusive: 0.1 lands in the 0.1 bucket.
  strictEqual(valueOf(families, "relay_upstream_seconds_bucket", { ...route, le: "0.1" }), 2);
  strictEqual(valueOf(families, "relay_upstream_seconds_bucket", { ...route, le: "0.5" }), 3);
  strictEqual(valueOf(families, "relay_upstream_seconds_bucket", { ...route, le: "1" }), 4);
  strictEqual(valueOf(families, "relay_upstream_seconds_bucket", { ...route, le: "+Inf" }), 5);
  strictEqual(valueOf(families, "relay_upstream_seconds_count", route), 5);
  ok(Math.abs((valueOf(families, "relay_upstream_seconds_sum", route) ?? 0) - 6.15) < 1e-9);
  strictEqual(valueOf(families, "relay_upstream_up", { upstream: "a" }), 1);
  strictEqual(valueOf(families, "relay_upstream_up", { upstream: "b" }), 0);
  strictEqual(valueOf(families, "relay_upstream_up", { upstream: "ignored" }), undefined);
  strictEqual(valueOf(families, "relay_uptime_seconds"), 12.5);
  // A metric with no series yet still announces itself.
  strictEqual(families.get("relay_tokens_total")?.samples.length, 0);
  ok(tokens instanceof Counter);
});

Deno.test("Registry escapes label values and HELP text when they are hostile", () => {
  const hostile = [
    'say "hi"',
    "back\\slash",
    "new\nline",
    "\\n literally",
    '"} 1\n# TYPE evil counter\nevil 1',
    '",le="+Inf',
    "}{,=",
    "",
    "ünïcødé 🚀 \u0000 \t \r",
    "trailing\\",
  ];
  const reg = new Registry();
  const c = reg.counter("hostile_total", 'Help with \\ backslash,\nnewline and "quotes".', ["v"]);
  const h = reg.histogram("hostile_seconds", "h", ["v"], [1]);
  hostile.forEach((v, i) => {
    c.inc({ v }, i + 1);
    h.observe({ v }, i);
  });
  const families = parseExposition(reg.render());
  strictEqual(
    families.get("hostile_total")?.help,
    'Help with \\ backslash,\nnewline and "quotes".',
  );
  strictEqual(families.size, 2);
  hostile.forEach((v, i) => {
    strictEqual(valueOf(families, "hostile_total", { v }), i + 1, JSON.stringify(v));
    strictEqual(valueOf(families, "hostile_seconds_count", { v }), 1, JSON.stringify(v));
  });
});

Deno.test("Registry round-trips arbitrary label values and counts when values are random", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.tuple(fc.string({ unit: "binary", maxLength: 12 }), fc.integer({ min: 0, max: 100 })),
        { maxLength: 30 },
      ),
      (ops) => {
        const reg = new Registry();
        const c = reg.counter("ops_total", "Ops.", ["k"]);
        const g = reg.gauge("ops_last", "Last.", ["k"]);
        const h = reg.histogram("ops_seconds", "Dur.", ["k"], [1, 10, 50]);
        const model = new Map<string, number>();
        for (const [k, n] of ops) {
          c.inc({ k }, n);
          g.set({ k }, -n);
          h.observe({ k }, n);
          model.set(k, (model.get(k) ?? 0) + n);
        }
        const families = parseExposition(reg.render());
        strictEqual(families.get("ops_total")?.samples.length, model.size);
        for (const [k, total] of model) {
          strictEqual(valueOf(families, "ops_total", { k }), total);
          const count = ops.filter(([key]) => key === k).length;
          strictEqual(valueOf(families, "ops_seconds_count", { k }), count);
          strictEqual(valueOf(families, "ops_seconds_sum", { k }), total);
        }
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("Histogram counts +Inf observations and ignores NaN when given special values", () => {
  const reg = new Registry();
  const h = reg.histogram("special_seconds", "s", [], [1, 2]);
  h.observe({}, Infinity);
  h.observe({}, NaN);
  h.observe({}, 2);
  h.observe({}, -1);
  const families = parseExposition(reg.render());
  strictEqual(valueOf(families, "special_seconds_bucket", { le: "1" }), 1);
  strictEqual(valueOf(families, "special_seconds_bucket", { le: "2" }), 2);
  strictEqual(valueOf(families, "special_seconds_bucket", { le: "+Inf" }), 3);
  strictEqual(valueOf(families, "special_seconds_count"), 3);
  strictEqual(valueOf(families, "special_seconds_sum"), Infinity);
});

Deno.test("Histogram drops a +Inf bucket when the caller lists it explicitly", () => {
  const reg = new Registry();
  const h = reg.histogram("explicit_inf_seconds", "s", [], [0.5, Infinity]);
  deepStrictEqual(h.buckets, [0.5]);
  h.observe({}, 1);
  strictEqual(
    valueOf(parseExposition(reg.render()), "explicit_inf_seconds_bucket", { le: "+Inf" }),
    1,
  );
});

Deno.test("Counter ignores negative, NaN and infinite increments when asked to decrease", () => {
  const reg = new Registry();
  const c = reg.counter("mono_total", "m");
  c.inc({}, 5);
  c.inc({}, -3);
  c.inc({}, NaN);
  c.inc({}, Infinity);
  c.inc({});
  strictEqual(c.get({}), 6);
  strictEqual(valueOf(parseExposition(reg.render()), "mono_total"), 6);
});

Deno.test("Counter reuses one cached series when the same label values repeat", () => {
  const c = new Registry().counter("cache_total", "c", ["a", "b"]);
  const first = c.labels({ a: "x", b: "y" });
  strictEqual(c.labels({ a: "x", b: "y" }), first);
  notStrictEqual(c.labels({ a: "x", b: "z" }), first);
  notStrictEqual(c.labels({ a: "y", b: "y" }), first);
  first.inc();
  c.inc({ b: "y", a: "x" }, 2); // key order does not matter
  strictEqual(c.get({ a: "x", b: "y" }), 3);
});

Deno.test("Counter keeps label sets apart when joined values would collide", () => {
  const reg = new Registry();
  const c = reg.counter("collide_total", "c", ["a", "b"]);
  c.inc({ a: "x,y", b: "z" });
  c.inc({ a: "x", b: "y,z" });
  c.inc({ a: "x\u0000y", b: "z" });
  c.inc({ a: "x", b: "y\u0000z" });
  strictEqual(parseExposition(reg.render()).get("collide_total")?.samples.length, 4);
});

Deno.test("Gauge renders no samples when its collect callback throws", () => {
  const reg = new Registry();
  reg.gauge("broken", "b", [], () => {
    throw new Error("probe failed");
  });
  reg.gauge("fine", "f", [], () => 1);
  const families = parseExposition(reg.render());
  strictEqual(families.get("broken")?.samples.length, 0);
  strictEqual(valueOf(families, "fine"), 1);
});

Deno.test("Gauge keeps the first sample when collect returns the same labels twice", () => {
  const reg = new Registry();
  reg.gauge("dup", "d", ["u"], () => [[{ u: "a" }, 1], [{ u: "a" }, 2], [{ u: "b" }, NaN]]);
  const families = parseExposition(reg.render());
  strictEqual(valueOf(families, "dup", { u: "a" }), 1);
  ok(Number.isNaN(valueOf(families, "dup", { u: "b" })));
});

Deno.test("Registry throws when a name, label or bucket list is invalid", () => {
  const reg = new Registry();
  reg.counter("taken_total", "t");
  reg.histogram("lat_seconds", "l");
  throws(() => reg.counter("taken_total", "again"), TypeError);
  throws(() => reg.gauge("taken_total", "again"), TypeError);
  throws(() => reg.counter("lat_seconds_count", "clash with histogram"), TypeError);
  throws(() => reg.counter("2bad", "x"), TypeError);
  throws(() => reg.counter("has-dash", "x"), TypeError);
  throws(() => reg.counter("ok_total", "x", ["bad-label"]), TypeError);
  throws(() => reg.counter("ok_total", "x", ["__reserved"]), TypeError);
  throws(() => reg.counter("ok_total", "x", ["a", "a"]), TypeError);
  throws(() => reg.histogram("h1", "x", ["le"]), TypeError);
  throws(() => reg.histogram("h2", "x", [], [1, 0.5]), TypeError);
  throws(() => reg.histogram("h3", "x", [], [1, 1]), TypeError);
  throws(() => reg.histogram("h4", "x", [], [NaN]), TypeError);
  // A failed registration claims nothing.
  reg.counter("ok_total", "x", ["fine"]);
  reg.counter("h2", "x");
});

Deno.test("formatValue writes special floats when values are infinite or NaN", () => {
  strictEqual(formatValue(Infinity), "+Inf");
  strictEqual(formatValue(-Infinity), "-Inf");
  strictEqual(formatValue(NaN), "NaN");
  strictEqual(formatValue(1e21), "1e+21");
  strictEqual(formatValue(-0.5), "-0.5");
  for (const v of [1e21, 1.5e-7, -0.5, 0, 123456789.125]) {
    strictEqual(parseFloatStrict(formatValue(v), "test"), v);
  }
});

// ---------------------------------------------------------------------------------------------
// RecentWindow

/** Reference percentile: linear interpolation between closest ranks of a sorted copy. */
function referencePercentile(values: readonly number[], p: number): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return (sorted[lo] as number) + ((sorted[hi] as number) - (sorted[lo] as number)) * (rank - lo);
}

function close(actual: number | undefined, expected: number | undefined): boolean {
  if (actual === undefined || expected === undefined) return actual === expected;
  return Math.abs(actual - expected) <= 1e-9 * Math.max(1, Math.abs(expected));
}

Deno.test("RecentWindow percentile matches a sorted array when samples fit the window", () => {
  fc.assert(
    fc.property(
      fc.array(fc.double({ min: -1e6, max: 1e6, noNaN: true }), { maxLength: 300 }),
      fc.double({ min: 0, max: 100, noNaN: true }),
      (values, p) => {
        const w = new RecentWindow(512);
        values.forEach((v, i) => w.add(v, i));
        const got = w.percentile(p);
        ok(close(got, referencePercentile(values, p)), `p${p}: ${got}`);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("RecentWindow percentile uses only the last capacity samples when the ring wraps", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 64 }),
      fc.array(fc.integer({ min: 0, max: 10_000 }), { minLength: 1, maxLength: 400 }),
      fc.constantFrom(0, 50, 95, 99, 100),
      (capacity, values, p) => {
        const w = new RecentWindow(capacity);
        values.forEach((v, i) => w.add(v, i));
        strictEqual(w.size, Math.min(capacity, values.length));
        ok(close(w.percentile(p), referencePercentile(values.slice(-capacity), p)));
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("RecentWindow percentile filters by time when sinceMs is given", () => {
  const w = new RecentWindow(16);
  for (let i = 0; i < 10; i++) w.add(i * 10, 1000 + i);
  // Samples at t >= 1005 are 50, 60, 70, 80, 90.
  strictEqual(w.percentile(50, 1005), 70);
  strictEqual(w.percentile(0, 1005), 50);
  strictEqual(w.percentile(100, 1005), 90);
  strictEqual(w.percentile(50, 2000), undefined);
  strictEqual(new RecentWindow().percentile(50), undefined);
  strictEqual(w.percentile(150), 90); // p clamps to 0..100
  strictEqual(w.percentile(NaN), undefined);
  w.add(NaN, 1010); // ignored
  strictEqual(w.size, 10);
});

Deno.test("RecentWindow rate counts samples per second when they fall inside the window", () => {
  const w = new RecentWindow(2048);
  // 5 requests per second for 20 seconds.
  for (let t = 0; t < 20_000; t += 200) w.add(1, t);
  equal(w.rate(10_000, 19_900), 5); // (9.9 s, 19.9 s] holds 50 samples
  equal(w.rate(1_000, 19_900), 5);
  // Window ending before the samples start.
  equal(w.rate(1_000, -1), 0);
  // A window beyond the last sample sees fewer.
  equal(w.rate(10_000, 24_900), 2.5);
  equal(w.rate(0, 19_900), 0);
  equal(new RecentWindow().rate(1000, 0), 0);
});

Deno.test("RecentWindow rate uses the span it still covers when the ring has evicted samples", () => {
  const w = new RecentWindow(100);
  // 1000 per second for 2 seconds: only the last 100 samples (0.1 s) survive.
  for (let i = 0; i < 2000; i++) w.add(1, i);
  const r = w.rate(60_000, 1999);
  ok(Math.abs(r - 1000) / 1000 < 0.02, `rate ${r}`);
});

Deno.test("RecentWindow throws when the capacity is not a positive integer", () => {
  throws(() => new RecentWindow(0), RangeError);
  throws(() => new RecentWindow(1.5), RangeError);
});
