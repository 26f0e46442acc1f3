// The devenv dashboard: resources, charts, live logs and traces of one running environment.
// Plain DOM and inline SVG, no libraries; everything comes from this engine's /api.
//
// The token: `devenv dashboard` prints /#token=..., a fragment the browser never sends to a
// server. It is kept in sessionStorage (this tab, this origin only), dropped from the address
// bar, and sent as `Authorization: Bearer` with every API call. No cookie: a browser would
// send one to every service on 127.0.0.1.
"use strict";

const MAX_LINES = 3000; // the log view keeps the newest lines only
const POLL_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";

const $ = (sel) => document.querySelector(sel);

function el(tag, props, ...kids) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const kid of kids) if (kid != null) node.append(kid);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function color(name) {
  let h = 7;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 60%, 45%)`;
}

function bytes(n) {
  if (n == null) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function ms(n) {
  if (n == null) return "-";
  return n >= 1000 ? `${(n / 1000).toFixed(2)} s` : `${n.toFixed(n < 10 ? 2 : 1)} ms`;
}

function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

// ---- the token

const TOKEN_KEY = "devenv-dashboard-token";
const token = takeToken();
let stopped = false; // no token, or the engine refused it: nothing more is asked

function takeToken() {
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

// Without a (valid) token the page says what to do instead of showing an empty dashboard.
function needsToken() {
  stopped = true;
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(poller);
  if (stream) stream.abort();
  $("main").hidden = true;
  $("#needs-token").hidden = false;
  const conn = $("#conn");
  conn.className = "conn down";
  conn.textContent = "token needed";
}

function authHeaders(accept) {
  return { Accept: accept, Authorization: `Bearer ${token}` };
}

async function api(path) {
  if (stopped) throw new Error("stopped");
  const resp = await fetch(path, { headers: authHeaders("application/json"), cache: "no-store" });
  if (resp.status === 401) {
    needsToken();
    throw new Error("unauthorized");
  }
  return resp.json();
}

// ---- resources

let services = []; // names, in the engine's order
let series = null;

async function refreshStatus() {
  let data;
  try {
    data = await api("/api/status");
  } catch (e) {
    setConn(false);
    return;
  }
  $("#project").textContent = data.project;
  document.title = `${data.project} · devenv`;
  if (data.engine) $("#engine").textContent = `engine pid ${data.engine.pid}`;
  services = data.services.map((s) => s.name);
  const body = $("#resources tbody");
  const rows = data.services.map((s) => {
    const url = s.url ? el("a", { href: s.url, target: "_blank", rel: "noopener noreferrer" }, s.url) : "-";
    const dot = el("span", { class: "dot" });
    dot.style.background = color(s.name);
    return el("tr", { dataset: { service: s.name } },
      el("td", {}, dot, s.name),
      el("td", { class: `state state-${s.state}`, title: s.detail || "" }, s.state),
      el("td", { class: "num" }, s.job ? "-" : `${s.replicas.ready}/${s.replicas.desired}`),
      el("td", { class: "num" }, String(s.restarts)),
      el("td", {}, url),
      el("td", { class: "num cpu" }, s.cpu_percent == null ? "-" : `${s.cpu_percent.toFixed(1)}%`,
        sparkline(series, s.name, "cpu")),
      el("td", { class: "num rss" }, bytes(s.rss_bytes), sparkline(series, s.name, "rss")));
  });
  body.replaceChildren(...rows);
  updateServiceFilter();
  tracesNote(data.traces);
  setConn(true);
}

function sparkline(data, name, key) {
  let values = data && data.services[name] ? data.services[name][key] : null;
  const box = svg("svg", { class: "spark", width: 80, height: 18, viewBox: "0 0 80 18" });
  if (!values) return box;
  // from the first sample on (at least the last 30), so a young series is not a dot
  const first = values.findIndex((v) => v != null);
  values = values.slice(Math.max(Math.min(first, values.length - 30), 0));
  const max = Math.max(...values.filter((v) => v != null), key === "cpu" ? 1 : 1);
  for (const d of paths(values, 80, 16, max)) {
    box.append(svg("path", { d, fill: "none", stroke: color(name), "stroke-width": 1.2,
      transform: "translate(0,1)" }));
  }
  return box;
}

// Polyline paths of the values (nulls break the line) scaled into width x height.
function paths(values, width, height, max) {
  const out = [];
  let current = "";
  const step = width / Math.max(values.length - 1, 1);
  values.forEach((v, i) => {
    if (v == null) {
      if (current) out.push(current);
      current = "";
      return;
    }
    const x = (i * step).toFixed(1);
    const y = (height - (v / max) * height).toFixed(1);
    current += `${current ? "L" : "M"}${x},${y}`;
  });
  if (current) out.push(current);
  // a lone point is drawn as a short dash
  return out.map((d) => (d.includes("L") ? d : `${d}h1.5`));
}

// ---- charts

const CHARTS = [
  ["#chart-rate", "rate", (v) => v.toFixed(v < 10 ? 2 : 0)],
  ["#chart-p95", "p95_ms", (v) => ms(v)],
  ["#chart-cpu", "cpu", (v) => `${v.toFixed(0)}%`],
  ["#chart-rss", "rss", (v) => bytes(v)],
];

async function refreshSeries() {
  try {
    series = await api("/api/series");
  } catch (e) {
    return;
  }
  const names = Object.keys(series.services);
  for (const [sel, key, fmt] of CHARTS) drawChart($(sel), names, key, fmt);
  $("#legend").replaceChildren(...names.map((n) => {
    const dot = el("span", { class: "dot" });
    dot.style.background = color(n);
    return el("span", {}, dot, n);
  }));
}

function drawChart(figure, names, key, fmt) {
  const W = 300, H = 100, TOP = 12;
  let max = 0;
  for (const n of names) for (const v of series.services[n][key]) if (v != null && v > max) max = v;
  const box = svg("svg", { viewBox: `0 0 ${W} ${H + TOP + 12}`, preserveAspectRatio: "none",
    role: "img", "aria-label": figure.querySelector("figcaption").textContent });
  box.append(svg("line", { x1: 0, x2: W, y1: TOP + H, y2: TOP + H, stroke: "#d0d7de" }));
  box.append(svg("line", { x1: 0, x2: W, y1: TOP, y2: TOP, stroke: "#eef0f2" }));
  const top = svg("text", { x: 2, y: 9, "font-size": 9, fill: "#6b7075" });
  top.textContent = max ? fmt(max) : "no data yet";
  box.append(top);
  for (const [x, label, anchor] of [[0, "-15m", "start"], [W, "now", "end"]]) {
    const t = svg("text", { x, y: TOP + H + 10, "font-size": 9, fill: "#6b7075", "text-anchor": anchor });
    t.textContent = label;
    box.append(t);
  }
  if (max) {
    for (const n of names) {
      for (const d of paths(series.services[n][key], W, H, max)) {
        box.append(svg("path", { d, fill: "none", stroke: color(n), "stroke-width": 1.4,
          transform: `translate(0,${TOP})`, "vector-effect": "non-scaling-stroke" }));
      }
    }
  }
  const old = figure.querySelector("svg");
  if (old) old.replaceWith(box); else figure.append(box);
}

// ---- logs

const lines = []; // {node, service, text, stream}
let filter = { service: "", search: "", devenv: true };

function matches(line) {
  if (filter.service && line.service !== filter.service) return false;
  if (!filter.devenv && (line.stream === "devenv")) return false;
  return !filter.search || line.lower.includes(filter.search);
}

function render(line) {
  const svc = el("span", { class: "svc" }, line.replica ? `${line.service}-${line.replica}` : line.service);
  svc.style.color = color(line.service);
  const text = el("span", { class: "text" });
  highlight(text, line.text);
  return el("div", { class: `line ${line.stream}`, dataset: { service: line.service } },
    el("span", { class: "ts" }, clock(line.ts)), svc, text);
}

function highlight(node, text) {
  const q = filter.search;
  if (!q) { node.textContent = text; return; }
  const lower = text.toLowerCase();
  let at = 0;
  const parts = [];
  for (let i = lower.indexOf(q); i >= 0; i = lower.indexOf(q, at)) {
    parts.push(text.slice(at, i), el("mark", {}, text.slice(i, i + q.length)));
    at = i + q.length;
  }
  parts.push(text.slice(at));
  node.replaceChildren(...parts);
}

function addLines(batch) {
  const view = $("#logs");
  const atBottom = view.scrollHeight - view.scrollTop - view.clientHeight < 30;
  const frag = document.createDocumentFragment();
  for (const data of batch) {
    const line = { ...data, lower: data.text.toLowerCase() };
    line.node = render(line);
    line.node.hidden = !matches(line);
    lines.push(line);
    frag.append(line.node);
  }
  view.append(frag);
  const extra = lines.length - MAX_LINES;
  if (extra > 0) for (const old of lines.splice(0, extra)) old.node.remove();
  if (atBottom) view.scrollTop = view.scrollHeight;
  countLines();
}

function countLines() {
  const shown = lines.reduce((n, l) => n + (l.node.hidden ? 0 : 1), 0);
  $("#log-count").textContent = shown === lines.length ? `${lines.length} lines` : `${shown} of ${lines.length}`;
}

function refilter() {
  filter = { service: $("#log-service").value, search: $("#log-search").value.toLowerCase(),
    devenv: $("#log-devenv").checked };
  for (const line of lines) {
    line.node.hidden = !matches(line);
    if (!line.node.hidden) highlight(line.node.querySelector(".text"), line.text);
  }
  const view = $("#logs");
  view.scrollTop = view.scrollHeight;
  countLines();
}

function updateServiceFilter() {
  const select = $("#log-service");
  const have = [...select.options].map((o) => o.value).filter(Boolean);
  if (have.join() === services.join()) return;
  const value = select.value;
  select.replaceChildren(el("option", { value: "" }, "all services"),
    ...services.map((n) => el("option", { value: n }, n)));
  select.value = services.includes(value) ? value : "";
}

// Log lines and state changes arrive as server-sent events, read from a streamed fetch()
// (EventSource cannot send the token); lines are added once per frame. A lost stream is
// opened again with backoff (0.5 s doubling to 15 s); a silent one (no heartbeat) is dropped.
const BACKOFF_MS = [500, 15000];
const SILENT_MS = 45000; // the engine writes a heartbeat every 15 s
let stream = null; // the open stream's AbortController

async function connect() {
  let delay = BACKOFF_MS[0];
  while (!stopped) {
    let heard = false;
    try {
      await follow(() => { heard = true; delay = BACKOFF_MS[0]; });
    } catch (e) {
      // a network error, an abort, or an engine that went away: try again below
    }
    if (stopped) return;
    setConn(false);
    if (!heard) delay = Math.min(delay * 2, BACKOFF_MS[1]);
    await new Promise((done) => setTimeout(done, delay * (0.8 + Math.random() * 0.4)));
  }
}

async function follow(onHello) {
  const ctrl = new AbortController();
  stream = ctrl;
  const resp = await fetch("/api/events", { headers: authHeaders("text/event-stream"),
    cache: "no-store", signal: ctrl.signal });
  if (resp.status === 401) { needsToken(); return; }
  if (!resp.ok || !resp.body) throw new Error(`events: HTTP ${resp.status}`);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let last = Date.now();
  const watchdog = setInterval(() => { if (Date.now() - last > SILENT_MS) ctrl.abort(); }, 5000);
  try {
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      last = Date.now();
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event) {
          if (event.kind === "hello") onHello();
          received(event);
        }
      }
    }
  } finally {
    clearInterval(watchdog);
    ctrl.abort();
  }
}

// One server-sent event block -> {kind, data}; null for a comment (the heartbeat).
function parseEvent(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") kind = value;
    else if (field === "data") data.push(value);
  }
  return data.length || kind !== "message" ? { kind, data: data.join("\n") } : null;
}

let pending = [];
let scheduled = false;
let stateTimer = null;

function flushLines() {
  scheduled = false;
  const batch = pending;
  pending = [];
  addLines(batch);
}

function received(event) {
  if (event.kind === "hello") {
    pending = [];
    for (const line of lines.splice(0)) line.node.remove(); // a reconnect sends the recent lines again
    setConn(true);
  } else if (event.kind === "log") {
    pending.push(JSON.parse(event.data));
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(flushLines);
      setTimeout(() => scheduled && flushLines(), 100);
    }
  } else if (event.kind === "state") {
    clearTimeout(stateTimer);
    stateTimer = setTimeout(refreshStatus, 150);
  }
}

function setConn(ok) {
  if (stopped) return;
  const node = $("#conn");
  node.className = `conn ${ok ? "live" : "down"}`;
  node.textContent = ok ? "live" : "engine not reachable";
}

// ---- traces

let tracesAvailable = null;
let selected = null;

function tracesNote(available) {
  tracesAvailable = available;
  $("#traces-note").textContent = available ? "" : "traces: not available";
  $("#traces").hidden = !available;
}

async function refreshTraces() {
  if (!tracesAvailable) return;
  let data;
  try {
    data = await api("/api/traces?limit=50");
  } catch (e) {
    return;
  }
  if (!data.available) { tracesNote(false); return; }
  const rows = data.traces.map((t) => {
    const names = el("td", {});
    for (const s of t.services) {
      const dot = el("span", { class: "dot", title: s });
      dot.style.background = color(s);
      names.append(dot);
    }
    const row = el("tr", { dataset: { trace: t.trace_id }, class: t.trace_id === selected ? "selected" : "" },
      el("td", { class: "num" }, clock(t.start_ns / 1e9)),
      el("td", { class: t.errors ? "err" : "" }, `${t.root_service}: ${t.root_name}`),
      names,
      el("td", { class: "num" }, String(t.span_count)),
      el("td", { class: "num" }, ms(t.duration * 1000)));
    row.addEventListener("click", () => showTrace(t.trace_id));
    return row;
  });
  $("#traces tbody").replaceChildren(...rows);
  if (data.traces.length === 0) $("#traces-note").textContent = "no traces yet";
  else $("#traces-note").textContent = "";
}

async function showTrace(id) {
  selected = id;
  for (const row of document.querySelectorAll("#traces tbody tr")) {
    row.classList.toggle("selected", row.dataset.trace === id);
  }
  const box = $("#waterfall");
  let t;
  try {
    t = await api(`/api/traces/${encodeURIComponent(id)}`);
  } catch (e) {
    return;
  }
  if (t.error) { box.replaceChildren(el("div", { class: "dim" }, t.error)); return; }
  const total = Math.max(t.duration * 1000, 0.001);
  const head = el("div", { class: "wf-head" },
    el("span", {}, `trace ${t.trace_id}`),
    el("span", {}, `${t.spans.length} spans · ${ms(t.duration * 1000)}`));
  const rows = [head];
  for (const s of t.spans) {
    const label = el("div", { class: "wf-label", title: `${s.service}: ${s.name}` });
    label.style.paddingLeft = `${s.depth * 12}px`;
    const dot = el("span", { class: "dot" });
    dot.style.background = color(s.service);
    label.append(dot, el("b", {}, s.service), ` ${s.name}`);
    const bar = el("div", { class: `wf-bar ${s.status === "error" ? "error" : ""}` });
    const left = (s.offset_ms / total) * 100;
    bar.style.left = `${left}%`;
    bar.style.width = `${Math.max((s.duration_ms / total) * 100, 0.3)}%`;
    bar.style.background = color(s.service);
    const dur = el("span", { class: "wf-dur" }, ms(s.duration_ms));
    const right = left + (s.duration_ms / total) * 100;
    if (right < 80) dur.style.left = `calc(${right}% + 4px)`; else dur.style.right = `calc(${100 - left}% + 4px)`;
    const row = el("div", { class: `wf-row ${s.status === "error" ? "error" : ""}`, dataset: { span: s.span_id } },
      label, el("div", { class: "wf-track" }, bar, dur));
    const detail = el("div", { class: "wf-detail", hidden: true }, describe(s));
    row.addEventListener("click", () => { detail.hidden = !detail.hidden; });
    rows.push(row, detail);
  }
  box.replaceChildren(...rows);
}

function describe(s) {
  const out = [`${s.kind} · ${s.status}${s.status_message ? `: ${s.status_message}` : ""}` +
    `${s.instance ? ` · ${s.instance}` : ""} · at +${ms(s.offset_ms)}`];
  for (const [k, v] of Object.entries(s.attributes || {})) out.push(`${k} = ${v}`);
  return out.join("\n");
}

// ---- start

let poller = null;

function start() {
  if (!token) { needsToken(); return; }
  $("#log-service").addEventListener("change", refilter);
  $("#log-search").addEventListener("input", refilter);
  $("#log-devenv").addEventListener("change", refilter);
  connect();
  const tick = async () => {
    await refreshSeries();
    await refreshStatus();
    await refreshTraces();
  };
  tick();
  poller = setInterval(tick, POLL_MS);
}

start();
