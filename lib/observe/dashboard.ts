/**
 * @module dashboard
 * The live dashboard at `/dashboard`: one small page, its stylesheet and its script, shipped with
 * the relay as string constants (no CDN, no build step, no external request of any kind).
 *
 * The page polls `dashboard/data` (the telemetry snapshot) every second and draws its charts
 * itself on `<canvas>`. Access is decided by the caller (`checkAdmin`), like `/debug/info`.
 *
 * Must never: load anything from another origin, put data into the page as HTML (every value
 * from a request - paths, models, ids - is set as text), or hold data of its own: everything it
 * shows comes from the snapshot, which carries no secret, query string or body.
 */

const HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>proxy-forwarder dashboard</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="dashboard/app.css">
<script src="dashboard/app.js" defer></script>
</head>
<body>
<header>
  <h1>proxy-forwarder</h1>
  <span id="version" class="muted"></span>
  <span id="uptime" class="muted"></span>
  <span id="status" class="status">connecting\u2026</span>
</header>
<main>
<section class="tiles">
  <div class="tile"><div class="label">Requests / s</div><div class="value" id="t-rps">\u2013</div>
    <div class="sub">last 10 s</div></div>
  <div class="tile"><div class="label">A time to first byte</div><div class="value" id="t-ttfb">\u2013</div>
    <div class="sub">p50 · p95, last 60 s</div></div>
  <div class="tile"><div class="label">Relay added</div><div class="value" id="t-relay">\u2013</div>
    <div class="sub">p50 · p95, last 60 s</div></div>
  <div class="tile"><div class="label">Open streams</div><div class="value" id="t-streams">\u2013</div>
    <div class="sub" id="t-inflight">in flight \u2013</div></div>
  <div class="tile"><div class="label">Error rate</div><div class="value" id="t-errors">\u2013</div>
    <div class="sub" id="t-errors-sub">5xx and broken streams, 60 s</div></div>
  <div class="tile"><div class="label">Tokens / min</div><div class="value" id="t-tokens">\u2013</div>
    <div class="sub" id="t-requests">\u2013 requests total</div></div>
</section>
<section class="charts">
  <figure><figcaption>Requests / s <span class="key k1">all</span> <span class="key k2">failed</span></figcaption>
    <canvas id="c-rps" aria-label="requests per second"></canvas></figure>
  <figure><figcaption>A time to first byte, ms <span class="key k1">p50</span> <span class="key k3">p95</span></figcaption>
    <canvas id="c-ttfb" aria-label="time to first byte"></canvas></figure>
  <figure><figcaption>Relay added, ms <span class="key k1">p50</span> <span class="key k3">p95</span></figcaption>
    <canvas id="c-relay" aria-label="relay added time"></canvas></figure>
</section>
<section class="row">
  <div class="panel">
    <h2>Tokens per minute by model</h2>
    <table id="models"><thead><tr><th>Model</th><th class="n">Input</th><th class="n">Output</th>
      <th class="n">Total</th><th></th></tr></thead><tbody></tbody></table>
    <p class="empty" id="models-empty">No token usage in the last minute.</p>
  </div>
  <div class="panel">
    <h2>Upstreams</h2>
    <ul id="upstreams"></ul>
  </div>
</section>
<section class="panel">
  <h2>Last 50 requests</h2>
  <div class="scroll">
  <table id="recent"><thead><tr><th>Time</th><th>Status</th><th>Method</th><th>Path</th>
    <th>Route</th><th>Upstream</th><th class="n">TTFB</th><th class="n">Total</th>
    <th class="n">Relay</th><th class="n">In</th><th class="n">Out</th><th>Model</th>
    <th class="n">Tokens</th><th>Error</th></tr></thead><tbody></tbody></table>
  </div>
  <p class="empty" id="recent-empty">No requests yet.</p>
</section>
</main>
</body>
</html>
`;

const CSS = `:root {
  --bg: #f6f7f9; --fg: #1d2330; --muted: #6b7385; --panel: #fff; --line: #e3e6ec;
  --c1: #2f6fed; --c2: #d64545; --c3: #e08a1e; --ok: #2e9d5b; --warn: #c98a00; --bad: #d64545;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #14171d; --fg: #e4e7ee; --muted: #8d95a7; --panel: #1c2029; --line: #2c313d; }
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
  background: var(--bg); color: var(--fg); }
header { display: flex; gap: 1rem; align-items: baseline; padding: .8rem 1.2rem;
  border-bottom: 1px solid var(--line); background: var(--panel); }
h1 { font-size: 1.1rem; margin: 0; }
h2 { font-size: .95rem; margin: 0 0 .6rem; }
main { padding: 1rem 1.2rem; display: grid; gap: 1rem; }
.muted { color: var(--muted); }
.status { margin-left: auto; font-size: .85rem; }
.status::before { content: ""; display: inline-block; width: .6rem; height: .6rem;
  border-radius: 50%; margin-right: .4rem; background: var(--muted); }
.status.live::before { background: var(--ok); }
.status.down::before { background: var(--bad); }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: .8rem; }
.tile, .panel, figure { background: var(--panel); border: 1px solid var(--line);
  border-radius: 8px; padding: .8rem 1rem; margin: 0; }
.label { color: var(--muted); font-size: .8rem; }
.value { font-size: 1.5rem; font-weight: 600; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.sub { color: var(--muted); font-size: .75rem; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: .8rem; }
figcaption { font-size: .85rem; margin-bottom: .4rem; }
canvas { width: 100%; height: 140px; display: block; }
.key::before { content: ""; display: inline-block; width: .8rem; height: 3px;
  vertical-align: middle; margin: 0 .25rem 0 .5rem; }
.k1::before { background: var(--c1); } .k2::before { background: var(--c2); }
.k3::before { background: var(--c3); }
.row { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 1rem; }
table { border-collapse: collapse; width: 100%; font-size: .8rem;
  font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
th { color: var(--muted); font-weight: 500; }
.n { text-align: right; }
td.path { max-width: 28rem; overflow: hidden; text-overflow: ellipsis; }
.scroll { overflow-x: auto; }
.s2 { color: var(--ok); } .s3 { color: var(--c1); } .s4 { color: var(--warn); }
.s5, .failed { color: var(--bad); font-weight: 600; } .s499 { color: var(--muted); }
.bar { height: .5rem; background: var(--c1); border-radius: 2px; min-width: 2px; }
ul#upstreams { list-style: none; margin: 0; padding: 0; }
ul#upstreams li { padding: .35rem 0; border-bottom: 1px solid var(--line); }
.dot { display: inline-block; width: .65rem; height: .65rem; border-radius: 50%;
  margin-right: .5rem; background: var(--muted); }
.dot.up { background: var(--ok); } .dot.down { background: var(--bad); }
.detail { color: var(--muted); font-size: .75rem; margin-left: 1.2rem; }
.empty { color: var(--muted); font-size: .8rem; margin: .4rem 0 0; }
`;

// Plain ES2020 without template literals, so it can live in this TypeScript template string.
const JS = `"use strict";
(function () {
  var HISTORY = 120;
  var ttfbHist = { p50: [], p95: [] };
  var relayHist = { p50: [], p95: [] };
  var updates = 0;
  var $ = function (id) { return document.getElementById(id); };

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }
  function fmtMs(v) {
    if (v === null || v === undefined) return "\u2013";
    if (v >= 10000) return (v / 1000).toFixed(1) + " s";
    if (v >= 1000) return (v / 1000).toFixed(2) + " s";
    if (v >= 100) return Math.round(v) + " ms";
    if (v >= 10) return v.toFixed(1) + " ms";
    return v.toFixed(2) + " ms";
  }
  function fmtNum(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (v >= 1e4) return (v / 1e3).toFixed(1) + "k";
    return String(Math.round(v));
  }
  function fmtBytes(n) {
    if (n >= 1048576) return (n / 1048576).toFixed(1) + " MB";
    if (n >= 1024) return (n / 1024).toFixed(1) + " kB";
    return n + " B";
  }
  function fmtAgo(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }
  function push(arr, v) {
    arr.push(v);
    if (arr.length > HISTORY) arr.shift();
  }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  // Draws lines on a canvas: series = [{values: (number|null)[], color}], scaled to the largest.
  // The time axis spans the data (at least 30 s, at most HISTORY), newest at the right.
  function draw(canvas, series, unit) {
    var dpr = window.devicePixelRatio || 1;
    var w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
    if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
    var ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var max = 0, n = 0;
    series.forEach(function (s) {
      n = Math.max(n, s.values.length);
      s.values.forEach(function (v) { if (v !== null && v > max) max = v; });
    });
    var span = Math.min(HISTORY, Math.max(30, n));
    max = niceMax(max);
    var left = 44, right = 6, top = 6, bottom = 16;
    var pw = w - left - right, ph = h - top - bottom;
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = css("--muted");
    ctx.strokeStyle = css("--line");
    ctx.lineWidth = 1;
    for (var g = 0; g <= 2; g++) {
      var gy = top + ph - (ph * g) / 2;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(gy) + 0.5);
      ctx.lineTo(left + pw, Math.round(gy) + 0.5);
      ctx.stroke();
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      ctx.fillText(label(max * g / 2, unit), left - 4, gy);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText("-" + span + " s", left, top + ph + 3);
    ctx.textAlign = "right";
    ctx.fillText("now", left + pw, top + ph + 3);
    if (n === 0) return;
    series.forEach(function (s) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.6;
      ctx.beginPath();
      var started = false;
      var offset = span - s.values.length;
      s.values.forEach(function (v, i) {
        if (v === null || i + offset < 0) { started = false; return; }
        var x = left + (pw * (i + offset)) / (span - 1);
        var y = top + ph - (max === 0 ? 0 : (ph * v) / max);
        if (started) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        started = true;
      });
      ctx.stroke();
    });
  }
  // "75.5 · 129 ms": p50 and p95 with one unit when both are below a second.
  function pair(p) {
    if (p.p50 === null) return "\u2013";
    if (p.p95 >= 1000) return fmtMs(p.p50) + " · " + fmtMs(p.p95);
    return fmtMs(p.p50).replace(" ms", "") + " · " + fmtMs(p.p95);
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }
  function label(v, unit) {
    if (unit === "ms") return fmtMs(v).replace(" ", "");
    return v >= 100 ? String(Math.round(v)) : String(Math.round(v * 10) / 10);
  }

  function render(d) {
    var now = Date.now();
    $("version").textContent = "v" + d.version;
    $("uptime").textContent = "up " + fmtAgo(d.time - d.startedAt).replace(" ago", "");
    $("t-rps").textContent = d.requestsPerSec.toFixed(d.requestsPerSec >= 100 ? 0 : 1);
    var t = d.latency.ttfbMs, r = d.latency.relayMs;
    $("t-ttfb").textContent = pair(t);
    $("t-relay").textContent = pair(r);
    $("t-streams").textContent = String(d.openStreams);
    $("t-inflight").textContent = "in flight " + d.inFlight;
    $("t-errors").textContent = (d.errorRate * 100).toFixed(1) + " %";
    $("t-errors").className = "value" + (d.errorRate > 0.05 ? " failed" : "");
    $("t-errors-sub").textContent = d.totals.failures + " failed, " + d.totals.clientClosed +
      " client closed, " + d.totals.rateLimited + " rate-limited";
    var tokens = 0;
    d.tokensPerMin.forEach(function (m) { tokens += m.total; });
    $("t-tokens").textContent = fmtNum(tokens);
    $("t-requests").textContent = fmtNum(d.totals.requests) + " requests total";

    push(ttfbHist.p50, t.p50); push(ttfbHist.p95, t.p95);
    push(relayHist.p50, r.p50); push(relayHist.p95, r.p95);
    if (d.series) {
      // Only the seconds since the relay started; and the last slot is the second in progress:
      // leave it out so the line does not dip.
      var up = Math.max(1, d.series.end - Math.floor(d.startedAt / 1000));
      var from = Math.max(0, d.series.requests.length - 1 - up);
      draw($("c-rps"), [
        { values: d.series.requests.slice(from, -1), color: css("--c1") },
        { values: d.series.failures.slice(from, -1), color: css("--c2") },
      ], "");
    }
    draw($("c-ttfb"), [
      { values: ttfbHist.p50, color: css("--c1") },
      { values: ttfbHist.p95, color: css("--c3") },
    ], "ms");
    draw($("c-relay"), [
      { values: relayHist.p50, color: css("--c1") },
      { values: relayHist.p95, color: css("--c3") },
    ], "ms");

    var mb = $("models").tBodies[0];
    mb.replaceChildren();
    var top = d.tokensPerMin.length ? d.tokensPerMin[0].total : 1;
    d.tokensPerMin.forEach(function (m) {
      var tr = document.createElement("tr");
      tr.appendChild(el("td", m.model));
      tr.appendChild(el("td", fmtNum(m.input), "n"));
      tr.appendChild(el("td", fmtNum(m.output), "n"));
      tr.appendChild(el("td", fmtNum(m.total), "n"));
      var cell = el("td");
      var bar = el("div", null, "bar");
      bar.style.width = Math.max(2, Math.round((m.total / top) * 120)) + "px";
      cell.appendChild(bar);
      tr.appendChild(cell);
      mb.appendChild(tr);
    });
    $("models-empty").hidden = d.tokensPerMin.length > 0;

    var ul = $("upstreams");
    ul.replaceChildren();
    d.upstreams.forEach(function (u) {
      var li = document.createElement("li");
      li.dataset.state = u.state;
      li.appendChild(el("span", null, "dot " + u.state));
      li.appendChild(el("span", u.url));
      li.appendChild(el("span", " " + u.state, u.state === "down" ? "failed" : "muted"));
      var bits = [];
      if (u.lastStatus !== null) bits.push("last answer " + u.lastStatus + " " + fmtAgo(now - u.lastSeen));
      if (u.lastFailure !== null) bits.push("last failure " + fmtAgo(now - u.lastFailure));
      if (typeof u.lastProbeMs === "number") bits.push("probe " + fmtMs(u.lastProbeMs));
      if (u.consecutiveFailures > 0) bits.push(u.consecutiveFailures + " failures in a row");
      if (u.downForSec > 0) bits.push("retried in " + u.downForSec + " s");
      if (typeof u.lastError === "string") bits.push("last error " + u.lastError);
      if (bits.length) li.appendChild(el("div", bits.join(" · "), "detail"));
      ul.appendChild(li);
    });

    var tb = $("recent").tBodies[0];
    tb.replaceChildren();
    (d.recent || []).forEach(function (q) {
      var tr = document.createElement("tr");
      if (q.failed) tr.className = "failed";
      tr.title = "id " + q.id + " · client " + q.clientIp;
      tr.appendChild(el("td", new Date(q.time).toLocaleTimeString()));
      var sc = q.status === 499 ? "s499" : "s" + String(q.status).charAt(0);
      tr.appendChild(el("td", q.status, sc));
      tr.appendChild(el("td", q.method));
      tr.appendChild(el("td", q.path + (q.stream ? "  \u21e3" : ""), "path"));
      tr.appendChild(el("td", q.route === null ? "" : "u" + q.route));
      tr.appendChild(el("td", q.upstream === null ? "" : q.upstream.replace(/^https?:\\/\\//, "")));
      tr.appendChild(el("td", fmtMs(q.ttfbMs), "n"));
      tr.appendChild(el("td", fmtMs(q.durationMs), "n"));
      tr.appendChild(el("td", fmtMs(q.relayMs), "n"));
      tr.appendChild(el("td", fmtBytes(q.requestBytes), "n"));
      tr.appendChild(el("td", fmtBytes(q.responseBytes), "n"));
      tr.appendChild(el("td", q.model === null ? "" : q.model));
      var tok = q.inputTokens === null && q.outputTokens === null ? ""
        : (q.inputTokens === null ? "?" : q.inputTokens) + " \u2192 " +
          (q.outputTokens === null ? "?" : q.outputTokens);
      tr.appendChild(el("td", tok, "n"));
      var err = q.error === null ? "" : q.error;
      if (q.failovers > 0) err += (err ? " · " : "") + q.failovers + " failover";
      if (q.retries > 0) err += (err ? " · " : "") + "resent";
      tr.appendChild(el("td", err));
      tb.appendChild(tr);
    });
    $("recent-empty").hidden = (d.recent || []).length > 0;
  }

  function status(text, cls) {
    var s = $("status");
    s.textContent = text;
    s.className = "status " + cls;
  }

  function tick() {
    fetch("dashboard/data", { cache: "no-store", credentials: "same-origin" })
      .then(function (res) {
        if (!res.ok) throw new Error(res.status === 401 || res.status === 403
          ? "not authorised (" + res.status + ")" : "HTTP " + res.status);
        return res.json();
      })
      .then(function (d) {
        render(d);
        updates++;
        document.body.dataset.updates = String(updates);
        status("live · " + new Date(d.time).toLocaleTimeString(), "live");
      })
      .catch(function (err) {
        status("disconnected: " + (err && err.message ? err.message : "error"), "down");
      })
      .finally(function () { setTimeout(tick, 1000); });
  }

  tick();
})();
`;

/** Response headers shared by the dashboard's files: nothing from elsewhere may run or load. */
const SECURITY_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
  "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; " +
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; " +
    "frame-ancestors 'none'",
});

const ASSETS: ReadonlyMap<string, { type: string; body: string }> = new Map([
  ["/dashboard", { type: "text/html; charset=utf-8", body: HTML }],
  ["/dashboard/app.js", { type: "text/javascript; charset=utf-8", body: JS }],
  ["/dashboard/app.css", { type: "text/css; charset=utf-8", body: CSS }],
]);

/**
 * The dashboard file for `path` (`/dashboard`, `/dashboard/app.js`, `/dashboard/app.css`), or
 * `null` for any other path. The caller has already checked access.
 */
export function dashboardAsset(path: string): Response | null {
  const asset = ASSETS.get(path);
  if (asset === undefined) return null;
  return new Response(asset.body, {
    headers: { ...SECURITY_HEADERS, "content-type": asset.type },
  });
}
