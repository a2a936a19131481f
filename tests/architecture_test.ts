/**
 * The import graph of `lib/` keeps the layers of docs/ARCHITECTURE.md: no cycles, and no import
 * that runs against the allowed directions. The graph is Deno's own (`deno info --json`, type-only
 * imports included), from every entry point.
 */

import assert from "node:assert/strict";
import { libFiles, listedFiles } from "../scripts/file_map.ts";

const ROOT = new URL("../", import.meta.url);
const ENTRIES = [
  "main.ts",
  "deploy.ts",
  "demo.ts",
  "scripts/doctor.ts",
  "scripts/start_args.ts",
  "scripts/healthcheck.ts",
];

/** Which layers (folders of lib/, or `errors.ts`) each layer may import. Its own is always fine. */
export const ALLOWED: Record<string, readonly string[]> = {
  "errors.ts": [],
  http: [],
  config: ["errors.ts", "http", "observe/record.ts"],
  server: ["errors.ts", "http", "observe/record.ts"],
  upstream: ["errors.ts", "http", "observe/record.ts"],
  observe: ["errors.ts", "http", "config"],
  pipeline: ["errors.ts", "http", "config", "upstream", "observe/record.ts"],
  ops: ["errors.ts", "http", "config", "upstream"],
  doctor: ["errors.ts", "http", "config", "upstream"],
  // The one place that wires every layer together; only the entry files import it.
  "relay.ts": ["errors.ts", "http", "config", "server", "upstream", "pipeline", "observe", "ops"],
};

type Graph = Map<string, Set<string>>;

/** Edges between modules under lib/ (paths relative to lib/), from `deno info --json`. */
async function libGraph(): Promise<Graph> {
  const entries = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(
      entries,
      ENTRIES.map((e) => `import ${JSON.stringify(new URL(e, ROOT).href)};\n`).join(""),
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", entries],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
      modules: Array<{
        specifier: string;
        dependencies?: Array<{ code?: { specifier?: string }; type?: { specifier?: string } }>;
      }>;
    };
    const lib = new URL("lib/", ROOT).href;
    const graph: Graph = new Map();
    for (const m of info.modules) {
      if (!m.specifier.startsWith(lib)) continue;
      const from = m.specifier.slice(lib.length);
      const deps = graph.get(from) ?? new Set<string>();
      graph.set(from, deps);
      for (const d of m.dependencies ?? []) {
        for (const to of [d.code?.specifier, d.type?.specifier]) {
          if (to?.startsWith(lib)) deps.add(to.slice(lib.length));
        }
      }
    }
    return graph;
  } finally {
    await Deno.remove(entries);
  }
}

function layerOf(path: string): string {
  const slash = path.indexOf("/");
  return slash < 0 ? path : path.slice(0, slash);
}

/** Edges that break {@link ALLOWED}, as `from -> to`. Pure, so a forbidden edge can be tried. */
export function forbiddenEdges(graph: Graph, allowed = ALLOWED): string[] {
  const out: string[] = [];
  for (const [from, deps] of graph) {
    const mine = layerOf(from);
    const may = allowed[mine];
    for (const to of deps) {
      const theirs = layerOf(to);
      if (theirs === mine) continue;
      if (may === undefined || !(may.includes(theirs) || may.includes(to))) {
        out.push(`${from} -> ${to}`);
      }
    }
  }
  return out.sort();
}

/** Every cycle's members (strongly connected components of more than one module). */
export function cycles(graph: Graph): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  let next = 0;
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const members: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        members.push(w);
      } while (w !== v);
      if (members.length > 1) found.push(members.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

const graph = await libGraph();

Deno.test("lib/ has no import cycle", () => {
  assert.deepEqual(cycles(graph), []);
});

Deno.test("lib/ imports run only in the allowed directions", () => {
  assert.deepEqual(forbiddenEdges(graph), [], "forbidden imports (see docs/ARCHITECTURE.md)");
});

/** Cross-folder edges that skip the folder's `mod.ts` (the leaves everyone shares excepted). */
export function pastModTs(graph: Graph): string[] {
  const out: string[] = [];
  for (const [from, deps] of graph) {
    for (const to of deps) {
      const theirs = layerOf(to);
      if (theirs === layerOf(from) || theirs === to || to === "observe/record.ts") continue;
      if (!to.endsWith("/mod.ts")) out.push(`${from} -> ${to}`);
    }
  }
  return out.sort();
}

Deno.test("code outside a folder imports it through its mod.ts only", () => {
  assert.deepEqual(pastModTs(graph), []);
});

Deno.test("nothing under lib/ imports relay.ts: only the entry files wire the relay", () => {
  const importers = [...graph].filter(([, deps]) => deps.has("relay.ts")).map(([f]) => f);
  assert.deepEqual(importers, []);
});

Deno.test("the checks catch a forbidden import and a cycle when one is added", () => {
  const withBad: Graph = new Map([...graph].map(([k, v]) => [k, new Set(v)]));
  withBad.get("server/server.ts")!.add("pipeline/proxy.ts");
  assert.deepEqual(forbiddenEdges(withBad), ["server/server.ts -> pipeline/proxy.ts"]);
  withBad.get("pipeline/proxy.ts")!.add("upstream/http1.ts");
  assert.deepEqual(pastModTs(withBad), [
    "pipeline/proxy.ts -> upstream/http1.ts",
    "server/server.ts -> pipeline/proxy.ts",
  ]);
  withBad.get("http/headers.ts")!.add("http/bytes.ts");
  withBad.get("http/bytes.ts")!.add("http/headers.ts");
  assert.deepEqual(cycles(withBad), [["http/bytes.ts", "http/headers.ts"]]);
});

Deno.test("every module under lib/ is reached from an entry point and sits in a known layer", async () => {
  const files: string[] = [];
  const walk = async (dir: URL, prefix: string): Promise<void> => {
    for await (const e of Deno.readDir(dir)) {
      if (e.isDirectory) await walk(new URL(`${e.name}/`, dir), `${prefix}${e.name}/`);
      else if (e.name.endsWith(".ts")) files.push(`${prefix}${e.name}`);
    }
  };
  await walk(new URL("lib/", ROOT), "");
  for (const f of files) assert.ok(ALLOWED[layerOf(f)] !== undefined, `${f}: no layer`);
  assert.deepEqual(files.filter((f) => !graph.has(f)).sort(), []);
});

Deno.test("the file map of docs/ARCHITECTURE (en, zh-CN) lists exactly the files under lib/", () => {
  const files = libFiles();
  for (const doc of ["docs/ARCHITECTURE.md", "docs/ARCHITECTURE.zh-CN.md"]) {
    const listed = listedFiles(Deno.readTextFileSync(new URL(doc, ROOT)));
    assert.deepEqual(
      {
        missing: files.filter((f) => !listed.includes(f)),
        stale: listed.filter((f) => !files.includes(f)),
      },
      { missing: [], stale: [] },
      `${doc}: run deno run --allow-read --allow-write scripts/file_map.ts`,
    );
  }
});

/** What `deno info --json entry` says an entry loads: code imports only, with or without dynamic ones. */
async function loaded(entry: string): Promise<{ atStart: Set<string>; inGraph: Set<string> }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", "--no-config", new URL(entry, ROOT).href],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    roots: string[];
    modules: Array<{
      specifier: string;
      dependencies?: Array<{ code?: { specifier?: string }; isDynamic?: boolean }>;
    }>;
  };
  const bySpecifier = new Map(info.modules.map((m) => [m.specifier, m]));
  const walk = (withDynamic: boolean): Set<string> => {
    const seen = new Set<string>();
    const todo = [...info.roots];
    while (todo.length > 0) {
      const spec = todo.pop()!;
      if (seen.has(spec)) continue;
      seen.add(spec);
      for (const d of bySpecifier.get(spec)?.dependencies ?? []) {
        if (d.code?.specifier !== undefined && (withDynamic || !d.isDynamic)) {
          todo.push(d.code.specifier);
        }
      }
    }
    const lib = new URL("lib/", ROOT).href;
    return new Set([...seen].filter((s) => s.startsWith(lib)).map((s) => s.slice(lib.length)));
  };
  return { atStart: walk(false), inGraph: walk(true) };
}

/** Modules the relay imports on first use: each costs idle memory when loaded at start. */
const ON_FIRST_USE = [
  "observe/dashboard.ts",
  "pipeline/websocket.ts",
  "pipeline/ws_frames.ts",
  "upstream/h2_fields.ts",
  "upstream/h2_session.ts",
  "upstream/hpack.ts",
  "upstream/http2.ts",
];

for (const entry of ["main.ts", "deploy.ts"]) {
  Deno.test(`${entry} loads the dashboard, the WebSocket bridge and HTTP/2 on first use, and never the doctor`, async () => {
    const { atStart, inGraph } = await loaded(entry);
    assert.deepEqual(ON_FIRST_USE.filter((f) => atStart.has(f)), [], "loaded at start");
    // Still in the graph (a fixed import name), so `deno compile` and Deno Deploy include them.
    assert.deepEqual(ON_FIRST_USE.filter((f) => !inGraph.has(f)), [], "not in the module graph");
    assert.deepEqual([...inGraph].filter((f) => f.startsWith("doctor/")), [], "the doctor");
    assert.ok(atStart.has("server/connection.ts") && atStart.has("pipeline/proxy.ts"));
  });
}

/** Offsets and code points of the characters above U+00FF in a text. */
export function wideChars(text: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c > 0xff) out.push(`${i}: U+${c.toString(16).toUpperCase().padStart(4, "0")}`);
  }
  return out;
}

// V8 keeps each module's source (with its inline source map) as a string for as long as the
// process runs; one character above U+00FF makes it a two-byte string, twice the heap. At the
// eighteenth sitting's end that was 0.86 MB of an idle relay's 9.5 MB heap. Write such characters
// as `\u2192` escapes in strings, and in ASCII in comments.
Deno.test("every module the relay runs is Latin-1 text, so V8 stores its source one byte a character", () => {
  assert.deepEqual(wideChars("a \u2192 b, caf\u00e9"), ["2: U+2192"]);
  const files = [...libFiles(), "main.ts", "deploy.ts", "demo.ts"];
  const wide = files
    .map((f) => ({ f, at: wideChars(Deno.readTextFileSync(new URL(f, ROOT))).slice(0, 3) }))
    .filter((w) => w.at.length > 0);
  assert.deepEqual(wide, []);
});
