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

const ROOT = new URL("../", import.meta.url);

Deno.test(".env.example lists exactly the variables VARS lists", async () => {
  const text = await Deno.readTextFile(new URL(".env.example", ROOT));
  const listed = new Set([...text.matchAll(/^#?\s*([A-Z][A-Z0-9_]+)=/gm)].map((m) => m[1]!));
  const names = new Set(VARS.map((v) => v.name));
  assert.deepEqual([...names].filter((n) => !listed.has(n)), [], "missing from .env.example");
  assert.deepEqual([...listed].filter((n) => !names.has(n)), [], "in .env.example, not in VARS");
});

Deno.test("the configuration reference documents every variable VARS lists, in English and Chinese", async () => {
  for (
    const [doc, fallback] of [["CONFIGURATION.md", "README.md"], [
      "CONFIGURATION.zh-CN.md",
      "README.zh-CN.md",
    ]] as const
  ) {
    let text: string;
    try {
      text = await Deno.readTextFile(new URL(`docs/${doc}`, ROOT));
    } catch {
      text = await Deno.readTextFile(new URL(fallback, ROOT));
    }
    // A table row whose first cell names the variable.
    const rows = new Set([...text.matchAll(/^\|\s*`([A-Z][A-Z0-9_]+)`\s*\|/gm)].map((m) => m[1]!));
    assert.deepEqual(VARS.map((v) => v.name).filter((n) => !rows.has(n)), [], doc);
  }
});
