/**
 * A small, strict parser for the Prometheus text exposition format 0.0.4, shared by the metrics
 * tests. It rejects anything the format does not allow and checks the family-level rules a
 * scraper relies on, so tests read `/metrics` the way Prometheus would instead of by eye.
 */

export interface Sample {
  name: string;
  labels: Map<string, string>;
  value: number;
}

export interface Family {
  name: string;
  help: string | undefined;
  type: string;
  samples: Sample[];
}

const METRIC_NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME_RE = /^[a-zA-Z_][a-zA-Z0-9_]*/;
const FLOAT_RE = /^[+-]?(?:Inf|NaN|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);

export function parseFloatStrict(text: string, where: string): number {
  if (!FLOAT_RE.test(text)) throw new Error(`${where}: bad float ${JSON.stringify(text)}`);
  if (/Inf$/.test(text)) return text.startsWith("-") ? -Infinity : Infinity;
  if (/NaN$/.test(text)) return NaN;
  return Number(text);
}

/** Decodes escapes in HELP text: only `\\` and `\n` exist there. */
function unescapeHelp(text: string, where: string): string {
  return text.replace(/\\(.?)/g, (_, c: string) => {
    if (c === "\\") return "\\";
    if (c === "n") return "\n";
    throw new Error(`${where}: invalid escape in HELP`);
  });
}

/** Parses one sample line strictly: name, optional `{label="value",...}`, one space, value. */
function parseSampleLine(line: string, where: string): Sample {
  const nameMatch = METRIC_NAME_RE.exec(line);
  if (!nameMatch) throw new Error(`${where}: missing metric name`);
  const name = nameMatch[0];
  let i = name.length;
  const labels = new Map<string, string>();
  if (line[i] === "{") {
    i++;
    while (line[i] !== "}") {
      const labelMatch = LABEL_NAME_RE.exec(line.slice(i));
      if (!labelMatch) throw new Error(`${where}: bad label name at ${i}`);
      const labelName = labelMatch[0];
      i += labelName.length;
      if (line.slice(i, i + 2) !== '="') throw new Error(`${where}: expected =" at ${i}`);
      i += 2;
      let value = "";
      for (;;) {
        const c = line[i];
        if (c === undefined) throw new Error(`${where}: unterminated label value`);
        if (c === '"') break;
        if (c === "\\") {
          const e = line[i + 1];
          if (e === "\\") value += "\\";
          else if (e === '"') value += '"';
          else if (e === "n") value += "\n";
          else throw new Error(`${where}: invalid escape \\${e} in label value`);
          i += 2;
        } else {
          value += c;
          i++;
        }
      }
      i++; // closing quote
      if (labels.has(labelName)) throw new Error(`${where}: duplicate label ${labelName}`);
      labels.set(labelName, value);
      if (line[i] === ",") i++;
      else if (line[i] !== "}") throw new Error(`${where}: expected , or } at ${i}`);
    }
    i++; // closing brace
  }
  if (line[i] !== " ") throw new Error(`${where}: expected one space before the value`);
  const rest = line.slice(i + 1).split(" ");
  if (rest.length > 2) throw new Error(`${where}: trailing garbage`);
  const value = parseFloatStrict(rest[0] ?? "", where);
  if (rest.length === 2 && !/^-?\d+$/.test(rest[1] ?? "")) {
    throw new Error(`${where}: bad timestamp`);
  }
  return { name, labels, value };
}

function familyOf(sampleName: string, families: Map<string, Family>): Family | undefined {
  const direct = families.get(sampleName);
  if (direct !== undefined && direct.type !== "histogram") return direct;
  const m = /^(.*)_(bucket|sum|count)$/.exec(sampleName);
  if (m) {
    const base = families.get(m[1] ?? "");
    if (base !== undefined && base.type === "histogram") return base;
  }
  return undefined;
}

function seriesKey(name: string, labels: Map<string, string>, skip?: string): string {
  return JSON.stringify([name, [...labels].filter(([k]) => k !== skip).sort()]);
}

/** Checks a histogram family: le order, cumulative counts, +Inf equals _count, _sum present. */
function checkHistogram(family: Family): void {
  const groups = new Map<
    string,
    { le: number[]; counts: number[]; sum?: number; count?: number; lastLe?: string }
  >();
  for (const s of family.samples) {
    const key = seriesKey(family.name, s.labels, "le");
    let g = groups.get(key);
    if (g === undefined) groups.set(key, g = { le: [], counts: [] });
    if (s.name === `${family.name}_bucket`) {
      const le = s.labels.get("le");
      if (le === undefined) throw new Error(`${family.name}: bucket without le`);
      g.le.push(parseFloatStrict(le, `${family.name} le`));
      g.counts.push(s.value);
      g.lastLe = le;
    } else if (s.name === `${family.name}_sum`) {
      if (s.labels.has("le")) throw new Error(`${family.name}_sum has le`);
      g.sum = s.value;
    } else if (s.name === `${family.name}_count`) {
      if (s.labels.has("le")) throw new Error(`${family.name}_count has le`);
      g.count = s.value;
    } else {
      throw new Error(`${family.name}: unexpected sample ${s.name}`);
    }
  }
  for (const [key, g] of groups) {
    if (g.lastLe !== "+Inf") throw new Error(`${key}: last bucket must be le="+Inf"`);
    for (let i = 1; i < g.le.length; i++) {
      if (!((g.le[i] as number) > (g.le[i - 1] as number))) {
        throw new Error(`${key}: le not strictly increasing`);
      }
      if (!((g.counts[i] as number) >= (g.counts[i - 1] as number))) {
        throw new Error(`${key}: bucket counts not cumulative`);
      }
    }
    if (g.count === undefined || g.sum === undefined) {
      throw new Error(`${key}: missing _sum/_count`);
    }
    if (g.counts.at(-1) !== g.count) throw new Error(`${key}: +Inf bucket != _count`);
  }
}

/** Parses and validates a whole exposition; throws with the offending line on any violation. */
export function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  if (text === "") return families;
  if (!text.endsWith("\n")) throw new Error("exposition must end with a newline");
  const lines = text.slice(0, -1).split("\n");
  const closed = new Set<string>();
  const seenSeries = new Set<string>();
  let current: Family | undefined;
  let pendingHelp: { name: string; help: string } | undefined;
  lines.forEach((line, n) => {
    const where = `line ${n + 1} ${JSON.stringify(line)}`;
    if (line === "") throw new Error(`${where}: empty line`);
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) ([^ ]+) ?(.*)$/.exec(line);
      if (!m) throw new Error(`${where}: unexpected comment`);
      const [, kind, name = "", rest = ""] = m;
      if (!METRIC_NAME_RE.test(name) || METRIC_NAME_RE.exec(name)?.[0] !== name) {
        throw new Error(`${where}: bad metric name`);
      }
      if (families.has(name) || closed.has(name)) throw new Error(`${where}: family repeated`);
      if (kind === "HELP") {
        if (pendingHelp !== undefined) throw new Error(`${where}: two HELP lines in a row`);
        pendingHelp = { name, help: unescapeHelp(rest, where) };
      } else {
        if (!TYPES.has(rest)) throw new Error(`${where}: bad type`);
        if (pendingHelp !== undefined && pendingHelp.name !== name) {
          throw new Error(`${where}: HELP for another family`);
        }
        if (current !== undefined) closed.add(current.name);
        current = { name, help: pendingHelp?.help, type: rest, samples: [] };
        families.set(name, current);
        pendingHelp = undefined;
      }
      return;
    }
    if (pendingHelp !== undefined) throw new Error(`${where}: HELP without TYPE`);
    const sample = parseSampleLine(line, where);
    const family = familyOf(sample.name, families);
    if (family === undefined) throw new Error(`${where}: sample before its TYPE`);
    if (family !== current) throw new Error(`${where}: family not contiguous`);
    const key = seriesKey(sample.name, sample.labels);
    if (seenSeries.has(key)) throw new Error(`${where}: duplicate series`);
    seenSeries.add(key);
    if (family.type === "counter" && !(sample.value >= 0)) {
      throw new Error(`${where}: counter must be a non-negative number`);
    }
    if (family.type !== "histogram" && sample.labels.has("le") && family.type !== "summary") {
      // le is legal on other types, but our registry never emits it there.
      throw new Error(`${where}: unexpected le label`);
    }
    family.samples.push(sample);
  });
  if (pendingHelp !== undefined) throw new Error("HELP without TYPE at end");
  for (const family of families.values()) {
    if (family.type === "histogram") checkHistogram(family);
  }
  return families;
}

/** The value of one series, found by name and exact label set. */
export function valueOf(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const want = seriesKey(name, new Map(Object.entries(labels)));
  for (const family of families.values()) {
    for (const s of family.samples) {
      if (seriesKey(s.name, s.labels) === want) return s.value;
    }
  }
  return undefined;
}
