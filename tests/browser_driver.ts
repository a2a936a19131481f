/**
 * Drives headless Chromium for `dashboard_browser_test.ts` and prints what it saw as one JSON line.
 *
 * It runs as its own process (`deno run -A`) because Playwright reads `/proc` while it loads and
 * Deno 2.9 grants `/proc` only to `--allow-all`; the test suite itself runs with narrower flags.
 * Assertions stay in the test: this script only observes.
 *
 * Usage: `deno run -A tests/browser_driver.ts '<json>'` where the JSON is a {@link Job}.
 */

import { type Browser, chromium, type Page } from "playwright-core";

/** What the test asks the driver to do. */
export interface Job {
  /** Chromium binary. */
  executablePath: string;
  /** The dashboard URL. */
  url: string;
  /** Before observing, fetch `url` once without credentials and report status and challenge. */
  anonymousFirst?: boolean;
  /** Basic credentials (ADMIN_TOKEN as password). */
  credentials?: { username: string; password: string };
  /** Dashboard updates to wait for after the first one (observe). */
  updates?: number;
  /** Also wait until the last-requests table has at least this many rows (observe). */
  minRows?: number;
  /** Write a full-page screenshot here (observe), after `screenshotUpdates` more updates. */
  screenshot?: string;
  screenshotUpdates?: number;
}

/** Dashboard readings at one moment. */
export interface Reading {
  updates: number;
  rps: string;
  ttfb: string;
  relay: string;
  errors: string;
  tokens: string;
  requests: string;
  status: string;
  rows: number;
  table: string;
  models: string;
  modelRows: number;
  upstreamStates: string[];
}

/** What the driver prints. */
export interface Observation {
  status?: number;
  /** With `anonymousFirst`: the status and `WWW-Authenticate` seen without credentials. */
  anonymous?: { status: number; wwwAuthenticate: string | null };
  first?: Reading;
  last?: Reading;
  /** Requests the page made to any other origin. */
  foreign?: string[];
  /** Console errors, page errors, failed responses. */
  problems?: string[];
  /** Whether any text on the page contained "SECRET". */
  secretShown?: boolean;
  /** Whether the hostile model name ran as HTML. */
  xss?: boolean;
  /** Non-transparent pixels on the requests chart. */
  inked?: number;
  screenshotBytes?: number;
  error?: string;
}

const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// Browser-side code is passed as text: this file is type-checked without the DOM types.
const UPDATES = `Number(document.body.dataset.updates ?? "0")`;
const INKED = `(() => {
  const c = document.getElementById("c-rps");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return n;
})()`;

async function waitUpdates(page: Page, n: number, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while ((await page.evaluate(UPDATES) as number) < n) {
    if (Date.now() > end) throw new Error(`dashboard made fewer than ${n} updates in ${ms} ms`);
    await sleep(100);
  }
}

async function read(page: Page): Promise<Reading> {
  const text = (selector: string) => page.locator(selector).innerText();
  return {
    updates: await page.evaluate(UPDATES) as number,
    rps: await text("#t-rps"),
    ttfb: await text("#t-ttfb"),
    relay: await text("#t-relay"),
    errors: await text("#t-errors"),
    tokens: await text("#t-tokens"),
    requests: await text("#t-requests"),
    status: await text("#status"),
    rows: await page.locator("#recent tbody tr").count(),
    table: await text("#recent"),
    models: await text("#models"),
    modelRows: await page.locator("#models tbody tr").count(),
    upstreamStates: await page.locator("#upstreams li").evaluateAll(
      (items) => items.map((li) => (li as unknown as { dataset: { state: string } }).dataset.state),
    ),
  };
}

async function observe(browser: Browser, job: Job): Promise<Observation> {
  const context = await browser.newContext({
    viewport: { width: 1440, height: 1000 },
    colorScheme: "light",
    ...(job.credentials ? { httpCredentials: job.credentials } : {}),
  });
  const page = await context.newPage();
  const origin = new URL(job.url).origin;
  const foreign: string[] = [];
  const problems: string[] = [];
  page.on("request", (r) => {
    if (!r.url().startsWith(origin)) foreign.push(r.url());
  });
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`${r.status()} ${r.url()}`);
  });
  const res = await page.goto(job.url);
  const status = res?.status();
  await waitUpdates(page, 1, 8000);
  const first = await read(page);
  await waitUpdates(page, first.updates + (job.updates ?? 3), 15_000);
  const end = Date.now() + 10_000;
  while ((await page.locator("#recent tbody tr").count()) < (job.minRows ?? 0)) {
    if (Date.now() > end) break;
    await sleep(100);
  }
  const last = await read(page);
  const out: Observation = {
    first,
    last,
    foreign,
    problems,
    secretShown: (await page.content()).includes("SECRET"),
    xss: (await page.evaluate("window.__xss")) !== undefined,
    inked: await page.evaluate(INKED) as number,
  };
  if (status !== undefined) out.status = status;
  if (job.screenshot !== undefined) {
    await waitUpdates(page, last.updates + (job.screenshotUpdates ?? 0), 60_000);
    const shot = await page.screenshot({ path: job.screenshot, fullPage: true });
    out.screenshotBytes = shot.byteLength;
  }
  await context.close();
  return out;
}

async function run(job: Job): Promise<Observation> {
  const browser = await chromium.launch({
    executablePath: job.executablePath,
    headless: true,
    args: ARGS,
  });
  // Playwright gives every launch a fresh temporary --user-data-dir and removes it on close.
  try {
    let anonymous: Observation["anonymous"];
    if (job.anonymousFirst) {
      const context = await browser.newContext();
      const res = await context.request.get(job.url);
      anonymous = {
        status: res.status(),
        wwwAuthenticate: res.headers()["www-authenticate"] ?? null,
      };
      await context.close();
    }
    const out = await observe(browser, job);
    if (anonymous !== undefined) out.anonymous = anonymous;
    return out;
  } finally {
    await browser.close();
  }
}

if (import.meta.main) {
  let out: Observation;
  try {
    out = await run(JSON.parse(Deno.args[0] ?? "{}") as Job);
  } catch (err) {
    out = { error: err instanceof Error ? err.message : String(err) };
  }
  await Deno.stdout.write(new TextEncoder().encode(JSON.stringify(out) + "\n"));
}
