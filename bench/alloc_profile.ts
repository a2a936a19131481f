/**
 * Shared by `alloc_requests.ts` and `alloc_streams.ts`: samples what the relay allocates (running
 * under `alloc_main.ts`, V8's sampling heap profiler, garbage included) while `work` runs, and
 * tables the bytes by allocating function and by the nearest `lib/` frame.
 */
import { sleep } from "./common.ts";

/** Starts sampling in the relay (`pid`), runs `work`, stops, and returns the profile's root. */
export async function sampleAllocation(
  pid: number,
  profile: string,
  work: () => Promise<unknown>,
): Promise<ProfileNode> {
  Deno.kill(pid, "SIGUSR2");
  await sleep(300);
  await work();
  Deno.kill(pid, "SIGUSR2");
  for (let i = 0; i < 50; i++) {
    await sleep(200);
    try {
      if (Deno.statSync(profile).size > 0) break;
    } catch { /* not written yet */ }
  }
  await sleep(500);
  const root = (JSON.parse(Deno.readTextFileSync(profile)) as { head: ProfileNode }).head;
  Deno.removeSync(profile);
  return root;
}

export interface ProfileNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: ProfileNode[];
}

/** Bytes allocated in all, by allocating function, and by the nearest `lib/` frame. */
export interface Allocation {
  total: number;
  byFunction: Map<string, number>;
  byOurs: Map<string, number>;
}

export function allocation(root: ProfileNode): Allocation {
  const a: Allocation = { total: 0, byFunction: new Map(), byOurs: new Map() };
  const walk = (node: ProfileNode, ours: string): void => {
    const f = node.callFrame;
    const name = `${f.functionName || "(anonymous)"} ${
      f.url.replace(/^.*?\/(lib|bench)\//, "$1/")
    }:${f.lineNumber + 1}`;
    if (/\blib\//.test(name)) ours = name;
    if (node.selfSize > 0) {
      a.total += node.selfSize;
      a.byFunction.set(name, (a.byFunction.get(name) ?? 0) + node.selfSize);
      a.byOurs.set(ours, (a.byOurs.get(ours) ?? 0) + node.selfSize);
    }
    for (const c of node.children) walk(c, ours);
  };
  walk(root, "(outside lib/)");
  return a;
}

/** The `top` entries of `m` as a Markdown table, in bytes per `unit` (`per` of them). */
export function allocationTable(
  title: string,
  m: Map<string, number>,
  per: number,
  unit: string,
  top: number,
): string {
  return [`| ${title} | bytes per ${unit} |`, "|---|---:|"].concat(
    [...m].sort((a, b) => b[1] - a[1]).slice(0, top).map(([k, v]) =>
      `| \`${k}\` | ${Math.round(v / per)} |`
    ),
  ).join("\n");
}
