/**
 * Writes the file map of docs/ARCHITECTURE.md and docs/ARCHITECTURE.zh-CN.md: each file under
 * `lib/` with its line count and the first sentence of its `@module` comment.
 *
 *   deno run --allow-read --allow-write scripts/file_map.ts          # rewrite both docs
 *   deno run --allow-read scripts/file_map.ts --check                # list files missing or stale
 *
 * `tests/architecture_test.ts` checks that the map names exactly the files that exist (not the
 * line counts, which change with every edit).
 */

const ROOT = new URL("../", import.meta.url);
const DOCS = ["docs/ARCHITECTURE.md", "docs/ARCHITECTURE.zh-CN.md"];
const START = "<!-- file-map:start -->";
const END = "<!-- file-map:end -->";

/** Files under lib/, relay.ts and errors.ts first, then folders in name order. */
export function libFiles(): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    const entries = [...Deno.readDirSync(new URL(dir, ROOT))].sort((a, b) =>
      a.name.localeCompare(b.name)
    );
    for (const e of entries) {
      const path = `${dir}/${e.name}`;
      if (e.isDirectory) walk(path);
      else if (e.name.endsWith(".ts")) out.push(path);
    }
  };
  walk("lib");
  const top = ["lib/errors.ts", "lib/relay.ts"];
  return [...top.filter((f) => out.includes(f)), ...out.filter((f) => !top.includes(f))];
}

/** The first sentence of a file's `@module` comment. */
export function moduleSentence(text: string): string {
  const m = text.match(/@module\s+\S+\n((?:\s*\*.*\n)+?)\s*\*\s*(?:\n|\/)/);
  const para = (m?.[1] ?? "").split("\n").map((l) => l.replace(/^\s*\*\s?/, "").trim()).join(" ")
    .trim();
  const end = para.search(/\.(\s|$)/);
  return (end >= 0 ? para.slice(0, end) : para).replaceAll("|", "\\|");
}

function table(): string {
  const rows = libFiles().map((f) => {
    const text = Deno.readTextFileSync(new URL(f, ROOT));
    const lines = text.split("\n").length - (text.endsWith("\n") ? 1 : 0);
    return `| \`${f}\` | ${lines} | ${moduleSentence(text)} |`;
  });
  return ["| file | lines | what it owns |", "| --- | ---: | --- |", ...rows].join("\n");
}

/** The files a doc's map lists. */
export function listedFiles(doc: string): string[] {
  const i = doc.indexOf(START);
  const j = doc.indexOf(END);
  if (i < 0 || j < i) return [];
  return [...doc.slice(i, j).matchAll(/^\| `([^`]+)`/gm)].map((m) => m[1]!);
}

if (import.meta.main) {
  const check = Deno.args.includes("--check");
  const files = libFiles();
  let bad = 0;
  for (const d of DOCS) {
    const url = new URL(d, ROOT);
    const doc = Deno.readTextFileSync(url);
    if (check) {
      const listed = listedFiles(doc);
      const problems = [
        ...files.filter((f) => !listed.includes(f)).map((f) => `${d}: missing ${f}`),
        ...listed.filter((f) => !files.includes(f)).map((f) => `${d}: stale ${f}`),
      ];
      bad += problems.length;
      // deno-lint-ignore no-console
      for (const p of problems) console.log(p);
      continue;
    }
    const i = doc.indexOf(START);
    const j = doc.indexOf(END);
    if (i < 0 || j < i) throw new Error(`${d} has no ${START} … ${END} block`);
    const next = `${doc.slice(0, i + START.length)}\n\n${table()}\n\n${doc.slice(j)}`;
    Deno.writeTextFileSync(url, next);
  }
  if (bad > 0) Deno.exit(1);
}
