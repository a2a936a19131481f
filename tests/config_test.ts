import assert from "node:assert/strict";
import {
  type Config,
  ConfigError,
  type Env,
  parseConfig,
  type Upstream,
} from "../lib/config/config.ts";

const BASE: Env = { UPSTREAM_SERVER_A: "https://hub.example.com" };
const API_KEY = "sk-upstream-SECRET-1234567890";
const ACCESS_KEY = "relay-access-SECRET-abcdef";

function parse(extra: Env = {}, readFile?: (path: string) => string): Config {
  return parseConfig({ ...BASE, ...extra }, readFile === undefined ? {} : { readFile });
}

/** Asserts that parsing throws a ConfigError whose message matches every pattern. */
function rejects(env: Env, patterns: RegExp[], readFile?: (path: string) => string): string {
  let message = "";
  assert.throws(
    () => parseConfig(env, readFile === undefined ? {} : { readFile }),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
      assert.equal(err.name, "ConfigError");
      message = err.message;
      return true;
    },
  );
  for (const p of patterns) assert.match(message, p);
  // Operator-facing messages are one line.
  assert.ok(!message.includes("\n"), message);
  return message;
}

// ---------------------------------------------------------------------------------------------
// Defaults

Deno.test("parseConfig uses documented defaults when only UPSTREAM_SERVER_A is set", () => {
  const c = parse();
  assert.equal(c.host, "0.0.0.0");
  assert.equal(c.port, 8000);
  assert.equal(c.debugLog, false);
  assert.equal(c.upstreamTimeoutMs, 600_000);
  assert.equal(c.connectTimeoutMs, 10_000);
  assert.equal(c.shutdownGraceMs, 30_000);
  assert.equal(c.retryBodyMaxBytes, 8 * 1024 * 1024);
  assert.equal(c.poolIdleMs, 4_000);
  assert.equal(c.routes.size, 0);
  assert.deepEqual(c.upstreams, [
    {
      url: "https://hub.example.com",
      protocol: "https:",
      hostname: "hub.example.com",
      port: 443,
      hostHeader: "hub.example.com",
      prefix: "",
    },
  ]);
});

Deno.test("parseConfig treats empty and whitespace-only values as unset", () => {
  const c = parse({
    PORT: "",
    HOST: "   ",
    DEBUG_LOG: "",
    UPSTREAM_TIMEOUT_SEC: " ",
    ROUTES: "",
    ROUTES_FILE: "  ",
  });
  assert.equal(c.port, 8000);
  assert.equal(c.host, "0.0.0.0");
  assert.equal(c.debugLog, false);
  assert.equal(c.upstreamTimeoutMs, 600_000);
  assert.equal(c.routes.size, 0);
});

Deno.test("parseConfig trims surrounding whitespace from values", () => {
  const c = parse({ PORT: " 9000 ", HOST: " 127.0.0.1 ", UPSTREAM_SERVER_A: " http://a.test " });
  assert.equal(c.port, 9000);
  assert.equal(c.host, "127.0.0.1");
  assert.equal(c.upstreams[0]!.url, "http://a.test");
});

// ---------------------------------------------------------------------------------------------
// UPSTREAM_SERVER_A

Deno.test("parseConfig explains how to get started when UPSTREAM_SERVER_A is missing", () => {
  for (const env of [{}, { UPSTREAM_SERVER_A: "" }, { UPSTREAM_SERVER_A: "  " }] as Env[]) {
    rejects(env, [/UPSTREAM_SERVER_A/, /cp \.env\.example \.env/, /deno task demo/]);
  }
});

// [raw value, expected upstreams]
const VALID_UPSTREAMS: ReadonlyArray<readonly [string, Upstream[]]> = [
  ["http://hub.test", [{
    url: "http://hub.test",
    protocol: "http:",
    hostname: "hub.test",
    port: 80,
    hostHeader: "hub.test",
    prefix: "",
  }]],
  ["https://hub.test/", [{
    url: "https://hub.test",
    protocol: "https:",
    hostname: "hub.test",
    port: 443,
    hostHeader: "hub.test",
    prefix: "",
  }]],
  ["http://hub.test:8080", [{
    url: "http://hub.test:8080",
    protocol: "http:",
    hostname: "hub.test",
    port: 8080,
    hostHeader: "hub.test:8080",
    prefix: "",
  }]],
  // An explicit default port is the default port: no ":80" in the Host header.
  ["http://hub.test:80/", [{
    url: "http://hub.test",
    protocol: "http:",
    hostname: "hub.test",
    port: 80,
    hostHeader: "hub.test",
    prefix: "",
  }]],
  ["https://hub.test/api", [{
    url: "https://hub.test/api",
    protocol: "https:",
    hostname: "hub.test",
    port: 443,
    hostHeader: "hub.test",
    prefix: "/api",
  }]],
  ["https://hub.test/api/", [{
    url: "https://hub.test/api",
    protocol: "https:",
    hostname: "hub.test",
    port: 443,
    hostHeader: "hub.test",
    prefix: "/api",
  }]],
  ["https://hub.test/a/b///", [{
    url: "https://hub.test/a/b",
    protocol: "https:",
    hostname: "hub.test",
    port: 443,
    hostHeader: "hub.test",
    prefix: "/a/b",
  }]],
  ["HTTPS://HUB.Test", [{
    url: "https://hub.test",
    protocol: "https:",
    hostname: "hub.test",
    port: 443,
    hostHeader: "hub.test",
    prefix: "",
  }]],
  ["http://[::1]:8080", [{
    url: "http://[::1]:8080",
    protocol: "http:",
    hostname: "::1",
    port: 8080,
    hostHeader: "[::1]:8080",
    prefix: "",
  }]],
  ["http://127.0.0.1:3000/", [{
    url: "http://127.0.0.1:3000",
    protocol: "http:",
    hostname: "127.0.0.1",
    port: 3000,
    hostHeader: "127.0.0.1:3000",
    prefix: "",
  }]],
  ["https://a.test, http://b.test:81/x/ ,,https://c.test", [
    {
      url: "https://a.test",
      protocol: "https:",
      hostname: "a.test",
      port: 443,
      hostHeader: "a.test",
      prefix: "",
    },
    {
      url: "http://b.test:81/x",
      protocol: "http:",
      hostname: "b.test",
      port: 81,
      hostHeader: "b.test:81",
      prefix: "/x",
    },
    {
      url: "https://c.test",
      protocol: "https:",
      hostname: "c.test",
      port: 443,
      hostHeader: "c.test",
      prefix: "",
    },
  ]],
];

for (const [raw, expected] of VALID_UPSTREAMS) {
  Deno.test(`parseConfig splits UPSTREAM_SERVER_A into its parts when it is ${raw}`, () => {
    assert.deepEqual(parse({ UPSTREAM_SERVER_A: raw }).upstreams, expected);
  });
}

const INVALID_UPSTREAMS: readonly string[] = [
  "ftp://hub.test",
  "file:///etc/passwd",
  "ws://hub.test",
  "javascript:alert(1)",
  "hub.test",
  "hub.test:8080",
  "localhost:8080",
  "not a url",
  "http://",
  "://hub.test",
  "https://hub.test/?",
  "https://hub.test/?a=1",
  "https://hub.test/api?x",
  "https://hub.test/#",
  "https://hub.test/#frag",
  ",",
  " , , ",
  "https://a.test,ftp://b.test",
];

for (const raw of INVALID_UPSTREAMS) {
  Deno.test(`parseConfig rejects UPSTREAM_SERVER_A naming variable and value when it is ${JSON.stringify(raw)}`, () => {
    rejects({ UPSTREAM_SERVER_A: raw }, [/UPSTREAM_SERVER_A/, /expected/]);
  });
}

Deno.test("parseConfig rejects userinfo in UPSTREAM_SERVER_A without repeating the password", () => {
  for (const raw of ["https://user:hunter2pass@hub.test", "https://hunter2pass@hub.test"]) {
    const msg = rejects({ UPSTREAM_SERVER_A: raw }, [/UPSTREAM_SERVER_A/, /user name or password/]);
    assert.ok(!msg.includes("hunter2pass"), msg);
  }
});

// ---------------------------------------------------------------------------------------------
// PORT, HOST, DEBUG_LOG

Deno.test("parseConfig accepts PORT values from 0 to 65535", () => {
  assert.equal(parse({ PORT: "0" }).port, 0);
  assert.equal(parse({ PORT: "1" }).port, 1);
  assert.equal(parse({ PORT: "8080" }).port, 8080);
  assert.equal(parse({ PORT: "65535" }).port, 65535);
});

for (const raw of ["70000", "65536", "abc", "-1", "80.5", "1e3", "0x50", "123456", "8080 8081"]) {
  Deno.test(`parseConfig rejects PORT naming variable, value and range when it is ${raw}`, () => {
    rejects({ ...BASE, PORT: raw }, [
      /PORT/,
      new RegExp(JSON.stringify(raw).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")),
      /expected a TCP port from 1 to 65535/,
    ]);
  });
}

Deno.test("parseConfig passes HOST through as given", () => {
  assert.equal(parse({ HOST: "127.0.0.1" }).host, "127.0.0.1");
  assert.equal(parse({ HOST: "::" }).host, "::");
  assert.equal(parse({ HOST: "localhost" }).host, "localhost");
});

Deno.test("parseConfig reads DEBUG_LOG truthy and falsy words case-insensitively", () => {
  for (const raw of ["1", "true", "TRUE", "yes", "Yes", "on", "ON"]) {
    assert.equal(parse({ DEBUG_LOG: raw }).debugLog, true, raw);
  }
  for (const raw of ["0", "false", "False", "no", "NO", "off", "Off"]) {
    assert.equal(parse({ DEBUG_LOG: raw }).debugLog, false, raw);
  }
});

Deno.test("parseConfig rejects DEBUG_LOG naming the value when it is not a boolean word", () => {
  for (const raw of ["2", "y", "enabled", "debug", "-1"]) {
    rejects({ ...BASE, DEBUG_LOG: raw }, [/DEBUG_LOG/, new RegExp(`"${raw}"`), /expected 1 or 0/]);
  }
});

// ---------------------------------------------------------------------------------------------
// Durations and sizes

const SECONDS_VARS = [
  ["UPSTREAM_TIMEOUT_SEC", "upstreamTimeoutMs"],
  ["CONNECT_TIMEOUT_SEC", "connectTimeoutMs"],
  ["UPSTREAM_POOL_IDLE_SEC", "poolIdleMs"],
] as const;

for (const [name, field] of SECONDS_VARS) {
  Deno.test(`parseConfig converts ${name} to milliseconds, decimals included`, () => {
    assert.equal(parse({ [name]: "30" })[field], 30_000);
    assert.equal(parse({ [name]: "1.5" })[field], 1_500);
    assert.equal(parse({ [name]: "0.25" })[field], 250);
    assert.equal(parse({ [name]: "604800" })[field], 604_800_000);
  });

  Deno.test(`parseConfig rejects ${name} naming it when it is not a positive number`, () => {
    for (const raw of ["abc", "0", "0.0", "-5", "1e3", ".5", "5.", "10s", "Infinity", "604801"]) {
      rejects({ ...BASE, [name]: raw }, [
        new RegExp(name),
        new RegExp(JSON.stringify(raw).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")),
        /greater than 0/,
      ]);
    }
  });
}

Deno.test("parseConfig reads UPSTREAM_SPARE_CONNECTIONS as a whole number from 0 to 16, default 1", () => {
  assert.equal(parse().spareConnections, 1);
  assert.equal(parse({ UPSTREAM_SPARE_CONNECTIONS: "0" }).spareConnections, 0);
  assert.equal(parse({ UPSTREAM_SPARE_CONNECTIONS: "16" }).spareConnections, 16);
});

Deno.test("parseConfig rejects UPSTREAM_SPARE_CONNECTIONS naming it when it is out of range or not whole", () => {
  for (const raw of ["17", "-1", "1.5", "abc", "1000", "0x2"]) {
    rejects({ ...BASE, UPSTREAM_SPARE_CONNECTIONS: raw }, [
      /UPSTREAM_SPARE_CONNECTIONS/,
      new RegExp(`"${raw.replace(".", "\\.")}"`),
      /from 0 to 16/,
    ]);
  }
});

Deno.test("parseConfig allows SHUTDOWN_GRACE_SEC to be 0 and converts it to milliseconds", () => {
  assert.equal(parse({ SHUTDOWN_GRACE_SEC: "0" }).shutdownGraceMs, 0);
  assert.equal(parse({ SHUTDOWN_GRACE_SEC: "2.5" }).shutdownGraceMs, 2_500);
  assert.equal(parse({ SHUTDOWN_GRACE_SEC: "60" }).shutdownGraceMs, 60_000);
});

Deno.test("parseConfig rejects SHUTDOWN_GRACE_SEC when it is negative or not a number", () => {
  for (const raw of ["-5", "abc", "-0", "1,5"]) {
    const msg = rejects({ ...BASE, SHUTDOWN_GRACE_SEC: raw }, [/SHUTDOWN_GRACE_SEC/, /seconds/]);
    assert.ok(!msg.includes("greater than 0"), msg);
  }
});

Deno.test("parseConfig converts RETRY_BODY_MAX_MB to bytes, decimals and 0 included", () => {
  assert.equal(parse({ RETRY_BODY_MAX_MB: "1" }).retryBodyMaxBytes, 1024 * 1024);
  assert.equal(parse({ RETRY_BODY_MAX_MB: "0.5" }).retryBodyMaxBytes, 512 * 1024);
  assert.equal(parse({ RETRY_BODY_MAX_MB: "64" }).retryBodyMaxBytes, 64 * 1024 * 1024);
  assert.equal(parse({ RETRY_BODY_MAX_MB: "0" }).retryBodyMaxBytes, 0);
});

Deno.test("parseConfig rejects RETRY_BODY_MAX_MB naming it when it is not a size", () => {
  for (const raw of ["abc", "-1", "8MB", "1e2", "2000000"]) {
    rejects({ ...BASE, RETRY_BODY_MAX_MB: raw }, [/RETRY_BODY_MAX_MB/, /megabytes/]);
  }
});

// ---------------------------------------------------------------------------------------------
// ROUTES and ROUTES_FILE

const ROUTES_OK = JSON.stringify({
  "1": { upstream: "https://a2.test/base/", apiKey: API_KEY, accessKey: ACCESS_KEY },
  "2": {},
  "30": { upstream: "http://b.test:9000, http://c.test:9001" },
});

Deno.test("parseConfig reads ROUTES JSON into a map keyed by route id", () => {
  const c = parse({ ROUTES: ROUTES_OK });
  assert.deepEqual([...c.routes.keys()], ["1", "2", "30"]);
  const r1 = c.routes.get("1")!;
  assert.equal(r1.id, "1");
  assert.equal(r1.apiKey, API_KEY);
  assert.equal(r1.accessKey, ACCESS_KEY);
  assert.deepEqual(r1.upstreams.map((u) => [u.url, u.prefix]), [["https://a2.test/base", "/base"]]);
  const r30 = c.routes.get("30")!;
  assert.deepEqual(r30.upstreams.map((u) => u.url), ["http://b.test:9000", "http://c.test:9001"]);
  assert.equal(r30.apiKey, undefined);
  assert.equal(r30.accessKey, undefined);
});

Deno.test("parseConfig defaults a route's upstream to UPSTREAM_SERVER_A when it has none", () => {
  const c = parse({ UPSTREAM_SERVER_A: "https://x.test/p, https://y.test", ROUTES: ROUTES_OK });
  assert.deepEqual(c.routes.get("2")!.upstreams, c.upstreams);
  assert.deepEqual(c.routes.get("2")!.upstreams.map((u) => u.url), [
    "https://x.test/p",
    "https://y.test",
  ]);
});

Deno.test("parseConfig reads ROUTES_FILE through the injected readFile", () => {
  const seen: string[] = [];
  const c = parse({ ROUTES_FILE: "/etc/relay/routes.json" }, (path) => {
    seen.push(path);
    return ROUTES_OK;
  });
  assert.deepEqual(seen, ["/etc/relay/routes.json"]);
  assert.deepEqual([...c.routes.keys()], ["1", "2", "30"]);
  assert.equal(c.routes.get("1")!.apiKey, API_KEY);
});

Deno.test("parseConfig refuses ROUTES_FILE when no readFile is injected", () => {
  rejects({ ...BASE, ROUTES_FILE: "/etc/relay/routes.json" }, [/ROUTES_FILE/]);
});

Deno.test("parseConfig reports an unreadable ROUTES_FILE with its path but not the error text", () => {
  const msg = rejects(
    { ...BASE, ROUTES_FILE: "/nope.json" },
    [/ROUTES_FILE/, /\/nope\.json/, /cannot be read/, /NotFound/],
    () => {
      throw new Deno.errors.NotFound("internal detail /var/secret/dir");
    },
  );
  assert.ok(!msg.includes("/var/secret/dir"), msg);
});

Deno.test("parseConfig refuses ROUTES and ROUTES_FILE when both are set", () => {
  rejects(
    { ...BASE, ROUTES: ROUTES_OK, ROUTES_FILE: "/r.json" },
    [/ROUTES/, /ROUTES_FILE/, /not both/],
    () => ROUTES_OK,
  );
});

/** Each entry is a ROUTES value that must be refused, with patterns its message must match. */
const BAD_ROUTES: ReadonlyArray<readonly [string, string, RegExp[]]> = [
  ["invalid JSON", `{"1": {"apiKey": "${API_KEY}", `, [/not valid JSON/]],
  ["a JSON array", `[{"apiKey": "${API_KEY}"}]`, [/must be/]],
  ["a JSON string", JSON.stringify(API_KEY), [/must be/]],
  ["JSON null", "null", [/must be/]],
  ["a non-numeric id", JSON.stringify({ abc: {} }), [/"abc"/, /must be numbers/]],
  ["a negative id", JSON.stringify({ "-1": {} }), [/must be numbers/]],
  ["a ten-digit id", JSON.stringify({ "1234567890": {} }), [/must be numbers/]],
  ["a route that is not an object", JSON.stringify({ "1": API_KEY }), [/must be an object/]],
  ["a route that is an array", JSON.stringify({ "1": [API_KEY] }), [/must be an object/]],
  [
    "an unknown key",
    JSON.stringify({ "1": { apikey: API_KEY, accessKey: ACCESS_KEY } }),
    [/unknown key "apikey"/],
  ],
  [
    "a non-string apiKey",
    JSON.stringify({ "1": { apiKey: 12345678, accessKey: ACCESS_KEY } }),
    [/"apiKey" must be a non-empty string/],
  ],
  [
    "an empty accessKey",
    JSON.stringify({ "1": { apiKey: API_KEY, accessKey: "" } }),
    [/"accessKey" must be a non-empty string/],
  ],
  [
    "an apiKey without accessKey",
    JSON.stringify({ "1": { apiKey: API_KEY } }),
    [/route "1"/, /"apiKey" but no "accessKey"/],
  ],
  [
    "an accessKey without apiKey",
    JSON.stringify({ "1": { accessKey: ACCESS_KEY } }),
    [/route "1"/, /"accessKey" but no "apiKey"/],
  ],
  [
    "a short accessKey",
    JSON.stringify({ "7": { apiKey: API_KEY, accessKey: "SECRET7" } }),
    [/route "7"/, /at least 8 characters/],
  ],
  [
    "a bad route upstream",
    JSON.stringify({ "1": { upstream: "ftp://x.test", apiKey: API_KEY, accessKey: ACCESS_KEY } }),
    [/route "1"/, /upstream/, /ftp:\/\/x\.test/],
  ],
  [
    "a route upstream with userinfo",
    JSON.stringify({
      "1": { upstream: `https://u:${API_KEY}@x.test`, apiKey: API_KEY, accessKey: ACCESS_KEY },
    }),
    [/route "1"/, /user name or password/],
  ],
];

for (const [what, routes, patterns] of BAD_ROUTES) {
  Deno.test(`parseConfig rejects ROUTES without repeating keys when it has ${what}`, () => {
    const msg = rejects({ ...BASE, ROUTES: routes }, [/ROUTES/, ...patterns]);
    assert.ok(!msg.includes(API_KEY), msg);
    assert.ok(!msg.includes(ACCESS_KEY), msg);
    assert.ok(!msg.includes("SECRET7"), msg);
  });

  Deno.test(`parseConfig rejects ROUTES_FILE without repeating keys when it has ${what}`, () => {
    const msg = rejects(
      { ...BASE, ROUTES_FILE: "/etc/routes.json" },
      [/ROUTES_FILE \(\/etc\/routes\.json\)/, ...patterns],
      () => routes,
    );
    assert.ok(!msg.includes(API_KEY), msg);
    assert.ok(!msg.includes(ACCESS_KEY), msg);
    assert.ok(!msg.includes("SECRET7"), msg);
  });
}

Deno.test("parseConfig accepts an accessKey of exactly 8 characters", () => {
  const c = parse({ ROUTES: JSON.stringify({ "1": { apiKey: API_KEY, accessKey: "12345678" } }) });
  assert.equal(c.routes.get("1")!.accessKey, "12345678");
});

Deno.test("parseConfig accepts an empty ROUTES object as no routes", () => {
  assert.equal(parse({ ROUTES: "{}" }).routes.size, 0);
});

Deno.test("UPSTREAM_HTTP2 is auto by default, accepts off, and names the allowed values otherwise", () => {
  const base = { UPSTREAM_SERVER_A: "https://a.example.com" };
  assert.equal(parseConfig(base).upstreamHttp2, "auto");
  assert.equal(parseConfig({ ...base, UPSTREAM_HTTP2: "off" }).upstreamHttp2, "off");
  rejects({ ...base, UPSTREAM_HTTP2: "yes" }, [/UPSTREAM_HTTP2/, /"yes"|yes/, /auto/, /off/]);
});

Deno.test("HTTP_SERVER, CLIENT_HEADER_TIMEOUT_SEC and CLIENT_IDLE_TIMEOUT_SEC: defaults, values, errors", () => {
  const base = { UPSTREAM_SERVER_A: "http://a.example.com" };
  const d = parseConfig(base);
  assert.equal(d.httpServer, "relay");
  assert.equal(d.clientHeaderTimeoutMs, 20_000);
  assert.equal(d.clientIdleTimeoutMs, 75_000);
  const c = parseConfig({
    ...base,
    HTTP_SERVER: "deno",
    CLIENT_HEADER_TIMEOUT_SEC: "2.5",
    CLIENT_IDLE_TIMEOUT_SEC: "30",
  });
  assert.equal(c.httpServer, "deno");
  assert.equal(c.clientHeaderTimeoutMs, 2500);
  assert.equal(c.clientIdleTimeoutMs, 30_000);
  rejects({ ...base, HTTP_SERVER: "nginx" }, [/HTTP_SERVER/, /relay/, /deno/]);
  rejects({ ...base, CLIENT_HEADER_TIMEOUT_SEC: "0" }, [/CLIENT_HEADER_TIMEOUT_SEC/, /seconds/]);
  rejects({ ...base, CLIENT_IDLE_TIMEOUT_SEC: "soon" }, [/CLIENT_IDLE_TIMEOUT_SEC/, /seconds/]);
});

Deno.test("CLIENT_SEND_TIMEOUT_SEC and MAX_CONNECTIONS_PER_IP: defaults, values, errors naming the variable and value", () => {
  const base = { UPSTREAM_SERVER_A: "http://a.example.com" };
  const d = parseConfig(base);
  assert.equal(d.clientSendTimeoutMs, 60_000);
  assert.equal(d.maxConnectionsPerIp, 0);
  const c = parseConfig({ ...base, CLIENT_SEND_TIMEOUT_SEC: "1.5", MAX_CONNECTIONS_PER_IP: "20" });
  assert.equal(c.clientSendTimeoutMs, 1500);
  assert.equal(c.maxConnectionsPerIp, 20);
  rejects({ ...base, CLIENT_SEND_TIMEOUT_SEC: "0" }, [/CLIENT_SEND_TIMEOUT_SEC/, /"0"/, /seconds/]);
  rejects({ ...base, CLIENT_SEND_TIMEOUT_SEC: "1m" }, [/CLIENT_SEND_TIMEOUT_SEC/, /"1m"/]);
  rejects({ ...base, MAX_CONNECTIONS_PER_IP: "-1" }, [/MAX_CONNECTIONS_PER_IP/, /"-1"/, /whole/]);
  rejects({ ...base, MAX_CONNECTIONS_PER_IP: "ten" }, [/MAX_CONNECTIONS_PER_IP/, /"ten"/]);
});
