/**
 * The variables table (lib/config/vars.ts) is the one list: parseConfig reads exactly its names,
 * and every setting it names is a field of the parsed configuration.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../lib/config/config.ts";
import { VARS } from "../lib/config/vars.ts";

/** The names parseConfig looks up in the environment. */
function namesRead(): Set<string> {
  const read = new Set<string>();
  const env = new Proxy({ UPSTREAM_SERVER_A: "http://127.0.0.1:9" } as Record<string, string>, {
    get(target, name) {
      if (typeof name === "string") read.add(name);
      return target[name as string];
    },
  });
  parseConfig(env);
  return read;
}

Deno.test("parseConfig reads exactly the variables VARS lists", () => {
  assert.deepEqual([...namesRead()].sort(), VARS.map((v) => v.name).sort());
});

Deno.test("every VARS setting is a field of the parsed config, and every field has a variable", () => {
  const config = parseConfig({ UPSTREAM_SERVER_A: "http://127.0.0.1:9" });
  const settings = new Set(VARS.map((v) => v.setting));
  assert.deepEqual([...settings].sort(), Object.keys(config).sort());
});

Deno.test("VARS names are unique and every default parses", () => {
  const names = VARS.map((v) => v.name);
  assert.equal(new Set(names).size, names.length);
  const env: Record<string, string> = { UPSTREAM_SERVER_A: "http://127.0.0.1:9" };
  for (const v of VARS) if (v.default !== undefined) env[v.name] = v.default;
  assert.deepEqual(parseConfig(env), parseConfig({ UPSTREAM_SERVER_A: "http://127.0.0.1:9" }));
});
