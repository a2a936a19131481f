import assert from "node:assert/strict";
import fc from "fast-check";
import { RelayError } from "../lib/errors.ts";
import {
  ConcurrencyLimiter,
  KvRateStore,
  MemoryRateStore,
  parseRate,
  type Rate,
  type RateDecision,
  rateLimitHeaders,
} from "../lib/pipeline/rate_limit.ts";

// ---- parseRate -----------------------------------------------------------------------------------

Deno.test("parseRate reads every accepted unit spelling", () => {
  const cases: ReadonlyArray<readonly [string, Rate]> = [
    ["10/minute", { limit: 10, windowSec: 60 }],
    ["10/min", { limit: 10, windowSec: 60 }],
    ["10/m", { limit: 10, windowSec: 60 }],
    ["5/second", { limit: 5, windowSec: 1 }],
    ["5/sec", { limit: 5, windowSec: 1 }],
    ["5/s", { limit: 5, windowSec: 1 }],
    ["1000/hour", { limit: 1000, windowSec: 3600 }],
    ["1000/h", { limit: 1000, windowSec: 3600 }],
    ["100/day", { limit: 100, windowSec: 86400 }],
    ["100/d", { limit: 100, windowSec: 86400 }],
    [" 60/Minute\n", { limit: 60, windowSec: 60 }],
    ["1/s", { limit: 1, windowSec: 1 }],
    ["1000000/day", { limit: 1_000_000, windowSec: 86400 }],
  ];
  for (const [input, expected] of cases) {
    assert.deepEqual(parseRate(input, "RATE"), expected, input);
  }
});

Deno.test("parseRate throws an Error naming the variable, value and form when the rate is malformed", () => {
  const bad = [
    "",
    "10",
    "/minute",
    "10/",
    "0/minute",
    "-1/minute",
    "010/minute",
    "1.5/minute",
    "1e3/minute",
    "10/minutes",
    "10/week",
    "10/ minute",
    "10 /minute",
    "10/mi",
    "10 per minute",
    "10/minute/2",
    "1000001/day",
    "99999999999999999999/s",
    "Infinity/s",
    "NaN/s",
    "１0/s",
  ];
  for (const input of bad) {
    assert.throws(
      () => parseRate(input, "RATE_LIMIT_PER_IP"),
      (err: unknown) => {
        assert.ok(err instanceof Error, input);
        assert.ok(err.message.startsWith("RATE_LIMIT_PER_IP: "), err.message);
        assert.ok(err.message.includes(JSON.stringify(input)), err.message);
        assert.match(err.message, /expected <count>\/<unit>/);
        return true;
      },
    );
  }
});

Deno.test("parseRate only ever returns a valid rate or throws an Error with the variable name", () => {
  fc.assert(
    fc.property(fc.string(), (s) => {
      try {
        const r = parseRate(s, "R");
        assert.ok(Number.isInteger(r.limit) && r.limit >= 1);
        assert.ok([1, 60, 3600, 86400].includes(r.windowSec));
      } catch (err) {
        assert.ok(err instanceof Error && err.message.startsWith("R: "));
      }
    }),
  );
});

// ---- token bucket math (MemoryRateStore with a fake clock) --------------------------------------

const TEN_PER_MINUTE: Rate = { limit: 10, windowSec: 60 };

Deno.test("MemoryRateStore allows a burst of exactly limit when the bucket is full", () => {
  const store = new MemoryRateStore(TEN_PER_MINUTE);
  for (let i = 0; i < 10; i++) {
    const d = store.take("k", 0);
    assert.equal(d.allowed, true);
    assert.equal(d.remaining, 9 - i);
    assert.equal(d.limit, 10);
    assert.equal(d.retryAfterSec, 0);
    assert.equal(d.resetSec, 6 * (i + 1)); // each token takes 6 s to come back
  }
  assert.deepEqual(store.take("k", 0), {
    allowed: false,
    limit: 10,
    remaining: 0,
    resetSec: 60,
    retryAfterSec: 6,
  });
});

Deno.test("MemoryRateStore refills continuously when time passes", () => {
  const store = new MemoryRateStore(TEN_PER_MINUTE);
  for (let i = 0; i < 10; i++) store.take("k", 0);
  // Half a token after 3 s: still refused, 3 s to go.
  assert.deepEqual(store.take("k", 3000), {
    allowed: false,
    limit: 10,
    remaining: 0,
    resetSec: 57,
    retryAfterSec: 3,
  });
  // One millisecond short of a token: Retry-After rounds up to 1, never 0.
  const almost = store.take("k", 5999);
  assert.equal(almost.allowed, false);
  assert.equal(almost.retryAfterSec, 1);
  assert.equal(almost.resetSec, 55);
  // Exactly one token at 6 s, and only one.
  assert.equal(store.take("k", 6000).allowed, true);
  assert.equal(store.take("k", 6000).allowed, false);
  // 30 s later five tokens are back.
  let allowed = 0;
  for (let i = 0; i < 10; i++) if (store.take("k", 36_000).allowed) allowed++;
  assert.equal(allowed, 5);
});

Deno.test("MemoryRateStore never holds more than limit tokens when idle for long", () => {
  const store = new MemoryRateStore(TEN_PER_MINUTE);
  store.take("k", 0);
  let allowed = 0;
  for (let i = 0; i < 30; i++) if (store.take("k", 86_400_000).allowed) allowed++;
  assert.equal(allowed, 10);
});

Deno.test("MemoryRateStore reports reset and retry in whole seconds when the window is short", () => {
  const store = new MemoryRateStore({ limit: 5, windowSec: 1 });
  for (let i = 0; i < 5; i++) assert.equal(store.take("k", 0).allowed, true);
  const d = store.take("k", 0);
  assert.deepEqual(d, { allowed: false, limit: 5, remaining: 0, resetSec: 1, retryAfterSec: 1 });
  assert.equal(store.take("k", 200).allowed, true);
});

Deno.test("MemoryRateStore does not refill twice when the clock steps backwards", () => {
  const store = new MemoryRateStore(TEN_PER_MINUTE);
  for (let i = 0; i < 10; i++) store.take("k", 10_000);
  assert.equal(store.take("k", 0).allowed, false);
  assert.equal(store.take("k", 4_000).allowed, false);
  // 6 s after the burst, exactly one token, however the clock wandered in between.
  assert.equal(store.take("k", 16_000).allowed, true);
  assert.equal(store.take("k", 16_000).allowed, false);
});

Deno.test("MemoryRateStore keeps a separate bucket per key", () => {
  const store = new MemoryRateStore({ limit: 1, windowSec: 60 });
  assert.equal(store.take("a", 0).allowed, true);
  assert.equal(store.take("a", 0).allowed, false);
  assert.equal(store.take("b", 0).allowed, true);
});

Deno.test("MemoryRateStore throws a RangeError when the rate or options are invalid", () => {
  assert.throws(() => new MemoryRateStore({ limit: 0, windowSec: 60 }), RangeError);
  assert.throws(() => new MemoryRateStore({ limit: 1.5, windowSec: 60 }), RangeError);
  assert.throws(() => new MemoryRateStore({ limit: 1, windowSec: 0 }), RangeError);
  assert.throws(() => new MemoryRateStore({ limit: 1e9, windowSec: 1e9 }), RangeError);
  assert.throws(() => new MemoryRateStore(TEN_PER_MINUTE, { maxKeys: 0 }), RangeError);
  assert.throws(() => new MemoryRateStore(TEN_PER_MINUTE).take("k", NaN), RangeError);
});

Deno.test("MemoryRateStore never grants more than limit plus refill over any span", () => {
  const rate: Rate = { limit: 7, windowSec: 1 };
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 0, max: 400 }), { minLength: 1, maxLength: 200 }),
      (gaps) => {
        const store = new MemoryRateStore(rate);
        let now = 0;
        let allowed = 0;
        for (const gap of gaps) {
          now += gap;
          const d = store.take("k", now);
          if (d.allowed) allowed++;
          assert.ok(d.remaining >= 0 && d.remaining < rate.limit);
          assert.ok(d.resetSec >= 0 && d.resetSec <= rate.windowSec);
          assert.equal(d.allowed, d.retryAfterSec === 0);
        }
        assert.ok(allowed <= rate.limit + Math.floor((now * rate.limit) / 1000), `${allowed}`);
      },
    ),
  );
});

Deno.test("rateLimitHeaders adds Retry-After only when the request is refused", () => {
  const ok: RateDecision = {
    allowed: true,
    limit: 10,
    remaining: 3,
    resetSec: 42,
    retryAfterSec: 0,
  };
  assert.deepEqual(rateLimitHeaders(ok), {
    "X-RateLimit-Limit": "10",
    "X-RateLimit-Remaining": "3",
    "X-RateLimit-Reset": "42",
  });
  const no: RateDecision = {
    allowed: false,
    limit: 10,
    remaining: 0,
    resetSec: 60,
    retryAfterSec: 6,
  };
  assert.deepEqual(rateLimitHeaders(no), {
    "X-RateLimit-Limit": "10",
    "X-RateLimit-Remaining": "0",
    "X-RateLimit-Reset": "60",
    "Retry-After": "6",
  });
  // Headers built from them are valid for a Response.
  assert.equal(new Headers(rateLimitHeaders(no)).get("retry-after"), "6");
});

// ---- memory bound --------------------------------------------------------------------------------

Deno.test("MemoryRateStore forgets buckets when they have been idle for a full window", () => {
  const store = new MemoryRateStore({ limit: 1, windowSec: 1 });
  for (let i = 0; i < 1000; i++) store.take(`k${i}`, 0);
  assert.equal(store.size, 1000);
  store.take("x", 999);
  assert.equal(store.size, 1001);
  store.take("y", 1000);
  assert.equal(store.size, 2); // x (1 ms old) and y
  // Forgetting a full bucket changes nothing: k0 gets its token as if remembered.
  assert.equal(store.take("k0", 1000).allowed, true);
});

Deno.test("MemoryRateStore stays under maxKeys when flooded with distinct keys", () => {
  const store = new MemoryRateStore({ limit: 1, windowSec: 86400 }, { maxKeys: 100 });
  for (let i = 0; i < 10_000; i++) {
    store.take(`flood-${i}`, i);
    assert.ok(store.size <= 100);
  }
  assert.equal(store.size, 100);
});

Deno.test("MemoryRateStore evicts the least recently used key when at maxKeys", () => {
  const store = new MemoryRateStore({ limit: 1, windowSec: 60 }, { maxKeys: 3 });
  store.take("a", 0);
  store.take("b", 0);
  store.take("c", 0);
  store.take("a", 1); // refused, but touches a
  store.take("d", 2); // evicts b
  assert.equal(store.size, 3);
  assert.equal(store.take("a", 3).allowed, false, "a is remembered");
  assert.equal(store.take("b", 3).allowed, true, "b was forgotten, so starts full");
});

// ---- KvRateStore ---------------------------------------------------------------------------------

// `deno task test` runs with --unstable-kv. Without it these are listed as ignored, saying why.
const HAS_KV = typeof (Deno as { openKv?: unknown }).openKv === "function";

function kvTest(name: string, fn: () => Promise<void>): void {
  Deno.test({
    name: HAS_KV ? name : `${name} (SKIPPED: Deno KV needs --unstable-kv)`,
    ignore: !HAS_KV,
    fn,
  });
}

async function withKv(fn: (kv: Deno.Kv) => Promise<void>): Promise<void> {
  const kv = await Deno.openKv(":memory:");
  try {
    await fn(kv);
  } finally {
    kv.close();
  }
}

kvTest(
  "KvRateStore allows a burst of limit then refuses and refills with a fake clock",
  async () => {
    await withKv(async (kv) => {
      const store = new KvRateStore(kv, { limit: 3, windowSec: 60 });
      for (let i = 0; i < 3; i++) {
        const d = await store.take("k", 1_000);
        assert.equal(d.allowed, true);
        assert.equal(d.remaining, 2 - i);
      }
      assert.deepEqual(await store.take("k", 1_000), {
        allowed: false,
        limit: 3,
        remaining: 0,
        resetSec: 60,
        retryAfterSec: 20,
      });
      assert.equal((await store.take("k", 20_999)).allowed, false);
      assert.equal((await store.take("k", 21_000)).allowed, true);
    });
  },
);

kvTest("KvRateStore grants exactly limit when 50 takes race on one key", async () => {
  await withKv(async (kv) => {
    const store = new KvRateStore(kv, { limit: 10, windowSec: 60 });
    const decisions = await Promise.all(
      Array.from({ length: 50 }, () => store.take("hot", 5_000)),
    );
    assert.equal(decisions.filter((d) => d.allowed).length, 10);
    const remaining = decisions.filter((d) => d.allowed).map((d) => d.remaining).sort();
    assert.deepEqual(remaining, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });
});

kvTest("KvRateStore grants exactly limit when separate stores race on one database", async () => {
  await withKv(async (kv) => {
    // Two stores stand in for two relay processes sharing one KV.
    const a = new KvRateStore(kv, { limit: 10, windowSec: 60 });
    const b = new KvRateStore(kv, { limit: 10, windowSec: 60 });
    const decisions = await Promise.all(
      Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? a : b).take("shared", 0)),
    );
    assert.equal(decisions.filter((d) => d.allowed).length, 10);
    // Other keys were not touched by the contention.
    assert.equal((await a.take("other", 0)).remaining, 9);
  });
});

kvTest("KvRateStore keeps buckets apart when prefixes differ", async () => {
  await withKv(async (kv) => {
    const perIp = new KvRateStore(kv, { limit: 1, windowSec: 60 }, { prefix: ["rl", "ip"] });
    const perKey = new KvRateStore(kv, { limit: 1, windowSec: 60 }, { prefix: ["rl", "key"] });
    assert.equal((await perIp.take("x", 0)).allowed, true);
    assert.equal((await perKey.take("x", 0)).allowed, true);
    assert.equal((await perIp.take("x", 0)).allowed, false);
    const stored = await kv.get(["rl", "ip", "x"]);
    assert.notEqual(stored.value, null);
    assert.equal((await kv.get(["rate_limit", "x"])).value, null);
  });
});

kvTest("KvRateStore writes nothing when it refuses", async () => {
  await withKv(async (kv) => {
    const store = new KvRateStore(kv, { limit: 1, windowSec: 60 });
    await store.take("k", 0);
    const before = await kv.get(["rate_limit", "k"]);
    assert.equal((await store.take("k", 10)).allowed, false);
    const after = await kv.get(["rate_limit", "k"]);
    assert.equal(after.versionstamp, before.versionstamp);
  });
});

kvTest("KvRateStore treats a foreign value under its key as a full bucket", async () => {
  await withKv(async (kv) => {
    await kv.set(["rate_limit", "k"], "not a bucket");
    await kv.set(["rate_limit", "j"], { level: -5, at: 0, limit: 1, windowMs: 1 });
    const store = new KvRateStore(kv, { limit: 2, windowSec: 60 });
    assert.equal((await store.take("k", 0)).remaining, 1);
    assert.equal((await store.take("j", 0)).remaining, 1);
  });
});

kvTest("KvRateStore keeps the same fraction of tokens when the rate changes", async () => {
  await withKv(async (kv) => {
    const old = new KvRateStore(kv, { limit: 10, windowSec: 60 });
    for (let i = 0; i < 5; i++) await old.take("k", 0); // half full
    const updated = new KvRateStore(kv, { limit: 20, windowSec: 60 });
    assert.equal((await updated.take("k", 0)).remaining, 9); // half of 20, minus this take
  });
});

Deno.test("KvRateStore throws a 503 RelayError when commits keep conflicting", async () => {
  let gets = 0;
  const conflicting = {
    get: (key: Deno.KvKey) => {
      gets++;
      return Promise.resolve({ key, value: null, versionstamp: null });
    },
    atomic: () => {
      const op = {
        check: () => op,
        set: () => op,
        commit: () => Promise.resolve({ ok: false }),
      };
      return op;
    },
  } as unknown as Deno.Kv;
  const store = new KvRateStore(conflicting, { limit: 1, windowSec: 1 }, { maxAttempts: 3 });
  await assert.rejects(store.take("k", 0), (err: unknown) => {
    assert.ok(err instanceof RelayError);
    assert.equal(err.status, 503);
    assert.equal(err.code, "overloaded");
    assert.equal(err.headers?.["Retry-After"], "1");
    return true;
  });
  assert.equal(gets, 3);
});

kvTest("KvRateStore agrees with MemoryRateStore on any sequence of takes", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(
        fc.record({ key: fc.constantFrom("a", "b", "c"), gap: fc.integer({ min: 0, max: 1500 }) }),
        { minLength: 1, maxLength: 40 },
      ),
      async (ops) => {
        const rate: Rate = { limit: 3, windowSec: 2 };
        const kv = await Deno.openKv(":memory:");
        try {
          const mem = new MemoryRateStore(rate);
          const kvs = new KvRateStore(kv, rate);
          let now = 0;
          for (const { key, gap } of ops) {
            now += gap;
            assert.deepEqual(await kvs.take(key, now), mem.take(key, now));
          }
        } finally {
          kv.close();
        }
      },
    ),
    { numRuns: 40 },
  );
});

kvTest("KvRateStore.open persists buckets in a file and close releases it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/rate.sqlite`;
    const rate: Rate = { limit: 2, windowSec: 3600 };
    const first = await KvRateStore.open(rate, { path, prefix: ["t"] });
    await first.take("k", 0);
    first.close();
    const second = await KvRateStore.open(rate, { path, prefix: ["t"] });
    try {
      assert.equal((await second.take("k", 0)).remaining, 0);
    } finally {
      second.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

kvTest("KvRateStore.close leaves a caller's database open", async () => {
  await withKv(async (kv) => {
    const store = new KvRateStore(kv, TEN_PER_MINUTE);
    store.close();
    assert.equal((await store.take("k", 0)).allowed, true);
  });
});

Deno.test("KvRateStore.open throws a clear Error when the process lacks --unstable-kv", async () => {
  const url = new URL("../lib/pipeline/rate_limit.ts", import.meta.url).href;
  const code = `import { KvRateStore } from ${JSON.stringify(url)};
try { await KvRateStore.open({ limit: 1, windowSec: 1 }); Deno.exit(3); }
catch (e) { await Deno.stdout.write(new TextEncoder().encode(String(e instanceof Error && e.message))); }`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-lock", code],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  assert.match(stdout, /Deno KV is not available/);
  assert.match(stdout, /--unstable-kv/);
});

kvTest("KvRateStore throws a RangeError when the rate or options are invalid", async () => {
  await withKv((kv) => {
    assert.throws(() => new KvRateStore(kv, { limit: 0, windowSec: 1 }), RangeError);
    assert.throws(() => new KvRateStore(kv, TEN_PER_MINUTE, { maxAttempts: 0 }), RangeError);
    return Promise.resolve();
  });
});

// ---- ConcurrencyLimiter --------------------------------------------------------------------------

Deno.test("ConcurrencyLimiter refuses when a key is at its maximum and frees on release", () => {
  const lim = new ConcurrencyLimiter(2);
  const r1 = lim.tryAcquire("a");
  const r2 = lim.tryAcquire("a");
  assert.ok(r1 !== null && r2 !== null);
  assert.equal(lim.tryAcquire("a"), null);
  assert.notEqual(lim.tryAcquire("b"), null, "other keys are independent");
  r1();
  assert.equal(lim.active("a"), 1);
  const r3 = lim.tryAcquire("a");
  assert.notEqual(r3, null);
  assert.equal(lim.tryAcquire("a"), null);
});

Deno.test("ConcurrencyLimiter ignores a second call to the same release function", () => {
  const lim = new ConcurrencyLimiter(2);
  const r1 = lim.tryAcquire("a");
  const r2 = lim.tryAcquire("a");
  assert.ok(r1 !== null && r2 !== null);
  r1();
  r1();
  r1();
  assert.equal(lim.active("a"), 1, "a repeated release must not free someone else's slot");
  r2();
  assert.equal(lim.active("a"), 0);
});

Deno.test("ConcurrencyLimiter removes a key from its map when nothing is in flight", () => {
  const lim = new ConcurrencyLimiter(1);
  const releases = Array.from({ length: 1000 }, (_, i) => lim.tryAcquire(`k${i}`));
  assert.equal(lim.size, 1000);
  for (const r of releases) r?.();
  assert.equal(lim.size, 0);
  assert.equal(lim.active("k0"), 0);
});

Deno.test("ConcurrencyLimiter never exceeds its maximum under random acquire and release", () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.boolean(), fc.constantFrom("a", "b"), fc.nat(10)), { maxLength: 200 }),
      (ops) => {
        const lim = new ConcurrencyLimiter(3);
        const held: Record<string, Array<() => void>> = { a: [], b: [] };
        for (const [acquire, key, pick] of ops) {
          const list = held[key] ?? [];
          if (acquire) {
            const r = lim.tryAcquire(key);
            assert.equal(r === null, list.length >= 3);
            if (r !== null) list.push(r);
          } else if (list.length > 0) {
            const [r] = list.splice(pick % list.length, 1);
            r?.();
            r?.();
          }
          assert.equal(lim.active(key), list.length);
        }
        assert.equal(lim.size, Object.values(held).filter((l) => l.length > 0).length);
      },
    ),
  );
});

Deno.test("ConcurrencyLimiter throws a RangeError when the maximum is not a positive integer", () => {
  assert.throws(() => new ConcurrencyLimiter(0), RangeError);
  assert.throws(() => new ConcurrencyLimiter(1.5), RangeError);
});
