// The mongoferry dashboard: polls the job's own API once a second and draws it. Plain JavaScript,
// no library and no network access beyond this server, so it works offline and stays small.
"use strict";
const HISTORY = 300;  // samples kept for the charts (five minutes at one per second)
const history = [];
let ui = { kind: "", progress: "/api/v1/progress", controls: [], tokenRequired: false };
let previous = null;

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === null || n === undefined || Number.isNaN(n)) ? "–"
  : Math.abs(n) >= 1e6 ? (n / 1e6).toFixed(2) + " M" : Math.abs(n) >= 1e4 ? (n / 1e3).toFixed(1) + " k"
  : Number.isInteger(n) ? String(n) : n.toFixed(1);
const duration = (s) => (s === null || s === undefined) ? "–" : s < 90 ? `${s.toFixed(1)} s`
  : s < 5400 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`;

function token() { return sessionStorage.getItem("mongoferry-token") || ""; }

async function control(path, body) {
  const send = () => fetch(path, { method: "POST", headers: { "Content-Type": "application/json",
    ...(token() ? { Authorization: `Bearer ${token()}` } : {}) }, body: JSON.stringify(body || {}) });
  let reply = await send();
  if (reply.status === 401) {  // the page asks for the token the job was started with
    const given = window.prompt("This job's controls need its token (--http-token):");
    if (!given) { $("control-result").textContent = "not sent: no token"; return; }
    sessionStorage.setItem("mongoferry-token", given);
    reply = await send();
  }
  const answer = await reply.json().catch(() => ({}));
  $("control-result").textContent = `${path}: ${reply.ok ? "done" : (answer.error || reply.status)}`;
  poll();
}

// One shape for every job: sync, split and backup share JobStatus; prune and verify have their own.
function normalise(data) {
  if (data.progress && typeof data.progress === "object") {  // the verifier (migration-verifier's API)
    const p = data.progress;
    return { state: (p.phase || "").toUpperCase(), lag: null, docsDone: null, eventsTotal: null,
      docsPerSecond: p.docsComparedPerSecond, errors: p.error ? 1 : 0, lastError: p.error, raw: p };
  }
  if ("deleted" in data && "scanned" in data) {  // prune
    return { state: data.state, lag: null, docsDone: data.deleted, eventsTotal: null,
      copyTotal: null, eta: data.etaSeconds, errors: data.lastError ? 1 : 0, lastError: data.lastError,
      namespaces: data.namespaces, raw: data };
  }
  const events = data.events ? Object.values(data.events).reduce((a, b) => a + b, 0) : null;
  return { state: data.state, lag: data.lagTimeSeconds, docsDone: data.copy ? data.copy.copiedDocs : null,
    copyTotal: data.copy ? data.copy.totalDocs : null, eta: data.copy ? data.copy.etaSeconds : null,
    eventsTotal: events, errors: data.errors, lastError: data.lastError, recentErrors: data.recentErrors,
    copyNamespaces: data.copyNamespaces, namespaces: data.namespaces, sinks: data.sinks,
    throttle: data.throttle, raw: data };
}

function rate(now, key) {
  if (!previous || now[key] === null || previous[key] === null || now[key] === undefined) return null;
  const dt = (now.at - previous.at) / 1000;
  return dt > 0 ? Math.max(0, (now[key] - previous[key]) / dt) : null;
}

function badge(state) {
  const el = $("state");
  el.textContent = state || "?";
  el.className = "badge " + (/FAIL|UNREACHABLE|ERROR/.test(state) ? "bad"
    : /PAUSE|WAIT|COMMITTING/.test(state) ? "warn" : "ok");
}

function chart(svg, series, colours) {
  const values = series.flat().filter((v) => v !== null);
  const top = Math.max(1e-9, ...values);
  svg.innerHTML = series.map((s, i) => {
    const pts = s.map((v, x) => v === null ? null : `${(x / (HISTORY - 1)) * 300},${80 - (v / top) * 76}`)
      .filter(Boolean).join(" ");
    return `<polyline points="${pts}" stroke="${colours[i]}"></polyline>`;
  }).join("") + `<text x="2" y="10" font-size="9" fill="#6b7280">${fmt(top)}</text>`;
}

function table(el, headers, rows) {
  const esc = (v) => String(v ?? "").replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[c]);
  el.innerHTML = `<tr>${headers.map((h) => `<th>${esc(h)}</th>`).join("")}</tr>` + rows.map((r) =>
    `<tr>${r.map((c) => typeof c === "object" && c && c.html ? `<td>${c.html}</td>`
      : `<td class="${typeof c === "number" ? "num" : ""}">${esc(typeof c === "number" ? fmt(c) : c)}</td>`)
      .join("")}</tr>`).join("");
}

function render(view) {
  $("kind").textContent = ui.kind;
  badge(view.state);
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  $("lag").textContent = view.lag === null || view.lag === undefined ? "–" : `${view.lag.toFixed(1)} s`;
  $("docs-rate").textContent = fmt(view.docsPerSecond);
  $("events-rate").textContent = fmt(view.eventsPerSecond);
  $("copy").textContent = view.copyTotal ? `${Math.floor(100 * view.docsDone / view.copyTotal)} %`
    : fmt(view.docsDone);
  $("copy-eta").textContent = view.eta ? `ETA ${duration(view.eta)}` : "";
  $("events-total").textContent = fmt(view.eventsTotal);
  $("errors").textContent = fmt(view.errors);
  chart($("chart-lag"), [history.map((h) => h.lag ?? null)], ["#7c3aed"]);
  chart($("chart-rate"), [history.map((h) => h.docsPerSecond ?? null), history.map((h) => h.eventsPerSecond ?? null)],
    ["#2563eb", "#d97706"]);
  if (view.copyNamespaces && view.copyNamespaces.length) {
    $("namespaces-section").hidden = false;
    const delta = Object.fromEntries((view.namespaces || []).map((n) => [n.source, n]));
    table($("namespaces"), ["source", "destination", "copied", "of", "progress", "ETA", "count delta"],
      view.copyNamespaces.map((n) => [n.source, n.destination, n.copiedDocs, n.totalDocs,
        { html: `<progress max="${n.totalDocs || 1}" value="${n.done ? (n.totalDocs || 1) : n.copiedDocs}"></progress>` },
        n.done ? "done" : duration(n.etaSeconds), delta[n.source] ? delta[n.source].delta ?? "" : ""]));
  } else if (view.namespaces && view.namespaces.length) {
    $("namespaces-section").hidden = false;
    const keys = Object.keys(view.namespaces[0]);
    table($("namespaces"), keys, view.namespaces.map((n) => keys.map((k) => n[k])));
  }
  const sinks = Object.entries(view.sinks || {});
  $("sinks-section").hidden = sinks.length === 0;
  table($("sinks"), ["sink", "events", "lag", "errors", "last error"],
    sinks.map(([name, s]) => [name, s.events, duration(s.lagSeconds), s.errors, s.lastError || ""]));
  const scalars = Object.entries(view.raw).filter(([k, v]) => !["namespaces", "copyNamespaces", "sinks",
    "recentErrors"].includes(k) && v !== null && v !== undefined);
  table($("details"), ["field", "value"], scalars.map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : v]));
  const errors = view.recentErrors || (view.lastError ? [{ at: "", message: view.lastError }] : []);
  $("errors-section").hidden = errors.length === 0;
  $("recent-errors").innerHTML = "";
  for (const e of errors.slice().reverse()) {
    const li = document.createElement("li");
    li.textContent = `${e.at} ${e.message}`;
    $("recent-errors").appendChild(li);
  }
  if (view.throttle) {
    const t = view.throttle;
    const source = t.maxSourceLatencyMs ? `, source latency ≤ ${t.maxSourceLatencyMs} ms (now ${t.sourceLatencyMs ?? "?"} ms)` : "";
    const holding = t.holdingFor ? `; holding: ${t.holdingFor}` : "";
    $("throttle-now").textContent = `now: ${t.maxDocsPerSecond ?? "no limit"} docs/s, `
      + `${t.maxBytesPerSecond ?? "no limit"} bytes/s${source}; throttled ${duration(t.throttledSeconds)}${holding}`;
  }
}

async function poll() {
  try {
    const reply = await fetch(ui.progress, { cache: "no-store" });
    const view = normalise(await reply.json());
    view.at = Date.now();
    view.docsPerSecond = view.docsPerSecond ?? rate(view, "docsDone");
    view.eventsPerSecond = rate(view, "eventsTotal");
    previous = view;
    history.push(view);
    if (history.length > HISTORY) history.shift();
    while (history.length < HISTORY) history.unshift({});
    render(view);
    $("connection").textContent = "";
  } catch (err) {
    $("connection").textContent = "the job does not answer (stopped?)";
  }
}

async function start() {
  try { ui = await (await fetch("/api/v1/ui")).json(); } catch (err) { /* an older job: defaults */ }
  const controls = new Set(ui.controls);
  $("controls").hidden = controls.size === 0;
  for (const name of ["pause", "resume", "commit"]) {
    $(name).hidden = !controls.has(name);
    $(name).addEventListener("click", () => control(`/api/v1/${name}`));
  }
  $("throttle-form").hidden = !controls.has("throttle");
  $("throttle-apply").addEventListener("click", (e) => {
    e.preventDefault();
    const body = {};
    for (const [id, key] of [["throttle-docs", "maxDocsPerSecond"], ["throttle-bytes", "maxBytesPerSecond"],
                             ["throttle-latency", "maxSourceLatencyMs"]]) {
      if ($(id).value !== "") body[key] = Number($(id).value);
    }
    control("/api/v1/throttle", body);
  });
  poll();
  setInterval(poll, 1000);
}
start();
