/**
 * @module dotenv
 * Parses `.env` text the way `deno run --env-file` reads it, for reloading settings on SIGHUP.
 *
 * Owns: the line format: `KEY=value`, optional `export `, `#` comments (a `#` ends an unquoted
 * value), single quotes (literal), double quotes (`\n` is a newline, may span lines), and `$VAR` /
 * `${VAR}` substitution in unquoted and double-quoted values (from the environment first, then from
 * earlier lines). Must never: read files or the environment itself (callers pass both in), or
 * throw on a malformed line (it is skipped, as Deno does).
 */

/** Parses `.env` text. `lookup` supplies `$VAR` values that are not defined earlier in the text. */
export function parseDotenv(
  text: string,
  lookup: (name: string) => string | undefined = () => undefined,
): Record<string, string> {
  const out: Record<string, string> = {};
  const resolve = (name: string) => lookup(name) ?? out[name] ?? "";
  const src = text.replace(/\r\n?/g, "\n");
  let i = 0;
  while (i < src.length) {
    const lineEnd = endOfLine(src, i);
    const line = src.slice(i, lineEnd);
    const m = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*/.exec(line);
    if (m === null) {
      i = lineEnd + 1;
      continue;
    }
    const key = m[1]!;
    let p = i + m[0].length;
    const quote = src[p];
    if (quote === "'" || quote === '"') {
      // A quoted value may span lines; it ends at the matching unescaped quote.
      let j = p + 1;
      while (j < src.length && src[j] !== quote) j += src[j] === "\\" && quote === '"' ? 2 : 1;
      if (j >= src.length) {
        // Unterminated: skip the line, like Deno.
        i = lineEnd + 1;
        continue;
      }
      const raw = src.slice(p + 1, j);
      out[key] = quote === "'" ? raw : substitute(raw.replace(/\\n/g, "\n"), resolve);
      p = j + 1;
      i = endOfLine(src, p) + 1;
      continue;
    }
    const hash = line.indexOf("#", m[0].length);
    const raw = (hash >= 0 ? line.slice(m[0].length, hash) : line.slice(m[0].length)).trim();
    out[key] = substitute(raw, resolve);
    i = lineEnd + 1;
  }
  return out;
}

function endOfLine(s: string, from: number): number {
  const n = s.indexOf("\n", from);
  return n < 0 ? s.length : n;
}

function substitute(value: string, resolve: (name: string) => string): string {
  return value.replace(
    /\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (_, braced: string | undefined, bare: string | undefined) => resolve((braced ?? bare)!),
  );
}
