/**
 * @module dashboard_entry
 * The dashboard's files (`dashboard.ts`), imported when someone first opens the dashboard.
 *
 * Why: most relays are never looked at through it, and its page, script and style loaded at
 * start-up are idle memory (see `pipeline/ws_entry.ts`, which loads the WebSocket bridge the same
 * way). The import names a fixed module, so `deno compile` and Deno Deploy include it, and the
 * relay's narrow permissions need no read access for it.
 */

let files: Promise<typeof import("./dashboard.ts")> | null = null;

/**
 * The dashboard file for `path` (`/dashboard`, `/dashboard/app.js`, `/dashboard/app.css`), or
 * `null` for any other path. The caller has already checked access.
 */
export async function dashboardAsset(path: string): Promise<Response | null> {
  // A failed import (a broken deployment) is tried again by the next request, not kept.
  files ??= import("./dashboard.ts").catch((err) => {
    files = null;
    throw err;
  });
  return (await files).dashboardAsset(path);
}
