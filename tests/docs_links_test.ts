/**
 * Unit: every relative link in the project's Markdown (README, docs/, bench/, deploy/) names a file
 * that exists and, with a `#fragment`, a heading of that file, slugged as GitHub slugs them. Docs
 * are moved and split; a link that silently stops pointing anywhere is how a newcomer gets lost.
 */

import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url).pathname;

/** The Markdown files the project publishes (not dependencies, not generated results). */
function markdownFiles(): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(`${ROOT}${dir}`)) {
      const path = dir === "" ? e.name : `${dir}/${e.name}`;
      if (e.isDirectory) {
        if (!["node_modules", ".git", "results", "dist"].includes(e.name)) walk(path);
      } else if (e.name.endsWith(".md")) out.push(path);
    }
  };
  walk("");
  return out.sort();
}

/**
 * GitHub's heading anchor: lower case, markup and punctuation dropped (letters, digits, `-`, `_`
 * and spaces stay, in any script), spaces to `-`; a repeated heading gets `-1`, `-2`, ...
 */
function slug(heading: string): string {
  const text = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1") // links and images: their text
    .replace(/<[^>]+>/g, "") // inline HTML
    .trim()
    .toLowerCase();
  return text.replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, "").replace(/ /g, "-");
}

/** Every anchor a file offers: its headings' slugs (with GitHub's numbering of repeats). */
function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  let fenced = false;
  for (const line of markdown.split("\n")) {
    if (/^\s*(```|~~~)/.test(line)) fenced = !fenced;
    if (fenced) continue;
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (m === null) continue;
    const base = slug(m[1]!);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  for (const m of markdown.matchAll(/<a\s+(?:name|id)="([^"]+)"/g)) out.add(m[1]!);
  return out;
}

/** Relative link targets in `markdown` outside code: `[text](target)`. */
function relativeLinks(markdown: string): string[] {
  const out: string[] = [];
  let fenced = false;
  for (const line of markdown.split("\n")) {
    if (/^\s*(```|~~~)/.test(line)) fenced = !fenced;
    if (fenced) continue;
    const prose = line.replace(/`[^`]*`/g, "");
    for (const m of prose.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      const target = m[1]!;
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // http:, https:, mailto:
      out.push(target);
    }
  }
  return out;
}

Deno.test("slug follows GitHub's rules for the headings these docs use", () => {
  assert.equal(slug("Where the goals of issue #14 stand"), "where-the-goals-of-issue-14-stand");
  assert.equal(
    slug("Eleventh sitting (2026-12-07): the relay's own HTTP/2 client"),
    "eleventh-sitting-2026-12-07-the-relays-own-http2-client",
  );
  assert.equal(slug("Where a c=1 request's time goes"), "where-a-c1-requests-time-goes");
  assert.equal(slug("3.3 HTTPS with OpenResty"), "33-https-with-openresty");
  assert.equal(slug("`deno task start`"), "deno-task-start");
  assert.equal(slug("启动：`deno task start`"), "启动deno-task-start");
  assert.deepEqual([...anchors("# A\n## A\n```\n# not a heading\n```\n### B c\n")], [
    "a",
    "a-1",
    "b-c",
  ]);
});

Deno.test("every relative link in the docs names an existing file and heading", () => {
  const problems: string[] = [];
  const cache = new Map<string, Set<string>>();
  const anchorsOf = (path: string) => {
    let a = cache.get(path);
    if (a === undefined) cache.set(path, a = anchors(Deno.readTextFileSync(`${ROOT}${path}`)));
    return a;
  };
  const files = markdownFiles();
  assert.ok(files.includes("README.md") && files.some((f) => f.startsWith("docs/")));
  for (const file of files) {
    const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/") + 1) : "";
    for (const link of relativeLinks(Deno.readTextFileSync(`${ROOT}${file}`))) {
      const [pathPart, fragment] = link.split("#", 2) as [string, string | undefined];
      const target = pathPart === ""
        ? file
        : new URL(decodeURI(pathPart), `file://${ROOT}${dir}`).pathname.slice(ROOT.length);
      let stat: Deno.FileInfo;
      try {
        stat = Deno.statSync(`${ROOT}${target}`);
      } catch {
        problems.push(`${file}: ${link} (no such file)`);
        continue;
      }
      if (fragment === undefined || !stat.isFile || !target.endsWith(".md")) continue;
      if (!anchorsOf(target).has(decodeURIComponent(fragment))) {
        problems.push(`${file}: ${link} (no such heading in ${target})`);
      }
    }
  }
  assert.deepEqual(problems, []);
});
