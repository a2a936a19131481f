/**
 * The pipeline's steps (lib/pipeline/steps.ts) in memory: their order and what each decides, and
 * that a request with nothing to wait for is admitted without a promise.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../lib/config/config.ts";
import { Logger } from "../lib/observe/log.ts";
import { Guards } from "../lib/pipeline/guards.ts";
import { type Admission, admit } from "../lib/pipeline/steps.ts";
import { RelayError } from "../lib/errors.ts";

const log = new Logger({ sink: () => {} });

function admission(env: Record<string, string>, path: string, init: RequestInit = {}) {
  const cfg = parseConfig({ UPSTREAM_SERVER_A: "http://127.0.0.1:9", ...env });
  const a: Admission = {
    req: new Request(`http://relay${path}`, init),
    cfg,
    id: "t",
    clientIp: "127.0.0.1",
    path,
    query: "",
    routeId: undefined,
    route: undefined,
    upstreams: cfg.upstreams,
    headers: [],
    target: { path: "", query: "" },
    announced: null,
    body: null,
  };
  const guards = new Guards(() => cfg, { log });
  return { a, deps: { guards, log }, close: () => guards.close() };
}

Deno.test("admit decides route, headers and body without a promise when nothing is limited", () => {
  const { a, deps, close } = admission({}, "/v1/messages", {
    method: "POST",
    body: "{}",
    headers: { "content-length": "2", "x-a": "1" },
  });
  try {
    assert.equal(admit(a, deps), undefined);
    assert.deepEqual(a.target, { path: "/v1/messages", query: "" });
    assert.ok(a.headers.some(([n, v]) => n === "x-a" && v === "1"));
    assert.equal(a.announced, 2);
    assert.notEqual(a.body, null);
  } finally {
    a.body?.cancel();
    close();
  }
});

Deno.test("admit waits only when a rate limit applies, and runs the body step after it", async () => {
  const { a, deps, close } = admission({ RATE_LIMIT: "100/minute" }, "/v1/messages", {
    method: "POST",
    body: "{}",
    headers: { "content-length": "2" },
  });
  try {
    const pending = admit(a, deps);
    assert.ok(pending instanceof Promise);
    assert.equal(a.body, null, "the body step runs after the admission");
    await pending;
    assert.notEqual(a.body, null);
    a.release?.();
  } finally {
    a.body?.cancel();
    close();
  }
});

Deno.test("admit refuses in step order: an unknown route before a GET body", () => {
  const { a, deps, close } = admission({}, "/u9/v1/models", {
    headers: { "content-length": "5" },
  });
  try {
    assert.throws(
      () => admit(a, deps),
      (e: unknown) => e instanceof RelayError && e.code === "unknown_route",
    );
    assert.equal(a.routeId, "9", "the route id is known for the log even when refused");
  } finally {
    close();
  }
});
