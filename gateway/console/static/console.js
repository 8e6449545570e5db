// calgate lab console: reads /api/... once, then follows /api/stream (server-sent events).
// No polling: the gateway pushes at most one update a second.
"use strict";

const WORDS = {
  valid: "✔ valid", due_soon: "◔ due soon", expired: "✖ expired", untraceable: "⚠ untraceable",
  suspect: "? suspect", none: "– no certificate",
  online: "● online", offline: "○ offline", unknown: "… no answer yet",
  pass: "✔ pass", fail: "✖ fail", conditional_pass: "◐ conditional pass",
  conditional_fail: "◑ conditional fail", indeterminate: "? indeterminate",
  good: "good", uncertain: "◐ uncertain", bad: "✖ bad",
  info: "info", warning: "⚠ warning", critical: "✖ critical",
};

const state = {
  board: [], selected: null, events: [], lastEvent: 0, registry: null,
  series: {}, plots: {}, windowS: 300, chainFor: null,
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function badge(status, extra) {
  const word = WORDS[status] || status || "–";
  return el("span", { class: `badge s-${status}`, "data-status": status, text: extra ? `${word} ${extra}` : word });
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function hms(iso) {
  if (!iso) return "";
  const t = new Date(iso);
  const time = t.toLocaleTimeString([], { hour12: false });
  // an older time (offline since yesterday) says its day too
  return t.toDateString() === new Date().toDateString() ? time : `${t.toLocaleDateString()} ${time}`;
}

function dayText(days) {
  if (days === null || days === undefined) return "";
  if (days < 0) return `overdue by ${-days} d`;
  if (days === 0) return "due today";
  return `${days} d to due`;
}

// -- board --------------------------------------------------------------------------------

function channelCell(ch) {
  const div = el("div", { class: "ch", "data-channel": ch.name });
  div.append(el("span", { class: "chname", text: `${ch.name}: ` }));
  let text;
  if (ch.value_text === null) text = ch.ts ? "no value" : "—";
  else if (ch.U_text !== null) text = `${ch.value_text} ± ${ch.U_text} ${ch.unit || ""}`;
  else text = `${ch.value_text} ${ch.unit || ""}`;
  div.append(el("span", { class: "val", text: text.trim() }));
  if (ch.U_text !== null && ch.k) div.append(el("span", { class: "muted", text: ` (k = ${ch.k})` }));
  if (ch.out_of_tolerance) div.append(el("span", { class: "oot", text: " ⚠ out of tolerance" }));
  return div;
}

function boardRow(eq) {
  const tr = el("tr", { "data-equipment": eq.id, "data-calibration": eq.calibration, "data-connection": eq.connection });
  if (eq.id === state.selected) tr.className = "selected";
  tr.addEventListener("click", () => select(eq.id));
  tr.append(el("td", {}, el("div", { class: "eq-id", text: eq.id }), el("div", { class: "desc", text: eq.description })));
  const conn = el("td", { class: "conn" }, badge(eq.connection));
  if (eq.connection === "offline" && eq.since) conn.append(el("div", { class: "small muted", text: `since ${hms(eq.since)}` }));
  if (eq.connection === "offline" && eq.last_error) conn.append(el("div", { class: "small muted", text: eq.last_error }));
  tr.append(conn);
  const values = el("td", { class: eq.connection === "offline" ? "values stale" : "values" }, ...eq.channels.map(channelCell));
  const last = eq.channels.map((c) => c.ts).filter((t) => t).sort().pop();
  if (eq.connection === "offline" && last) values.append(el("div", { class: "small muted", text: `last reading at ${hms(last)}` }));
  tr.append(values);
  tr.append(el("td", { class: "quality" }, ...eq.channels.map((ch) => {
    const d = el("div", { class: "ch" });
    if (ch.quality) d.append(el("span", { class: `s-${ch.quality}`, text: WORDS[ch.quality] || ch.quality }));
    if (ch.flags && ch.flags.length) d.append(el("span", { class: "flags", text: ` [${ch.flags.join(", ")}]` }));
    return d;
  })));
  tr.append(el("td", { class: "conformity" }, ...eq.channels.map((ch) =>
    el("div", { class: "ch" }, ch.conformity ? badge(ch.conformity) : el("span", { class: "muted", text: "—" })))));
  const cal = el("td", { class: "cal" }, badge(eq.calibration));
  if (eq.due) cal.append(el("div", { class: "small nowrap", text: dayText(eq.days_to_due) }),
    el("div", { class: "small muted nowrap", text: `due ${eq.due}` }));
  tr.append(cal);
  tr.append(el("td", { class: "cert", text: eq.certificate || "—" }));
  return tr;
}

function renderBoard() {
  const tbody = document.querySelector("#board tbody");
  tbody.replaceChildren(...state.board.map(boardRow));
  const sel = document.getElementById("filter-equipment");
  const have = new Set([...sel.options].map((o) => o.value));
  for (const eq of state.board) if (!have.has(eq.id)) sel.append(el("option", { value: eq.id, text: eq.id }));
}

function applyBoard(doc) {
  state.board = doc.equipment;
  renderHealth(doc.health);
  document.getElementById("site").textContent = `site ${doc.gateway.site} · gateway ${doc.gateway.id}`;
  if (state.selected === null || !state.board.some((e) => e.id === state.selected)) {
    const hash = decodeURIComponent(location.hash.slice(1));
    const attention = state.board.find((e) => ["expired", "untraceable", "suspect"].includes(e.calibration));
    state.selected = state.board.some((e) => e.id === hash) ? hash : (attention || state.board[0] || {}).id || null;
  }
  renderBoard();
  if (state.registry !== null && doc.registry !== state.registry) loadCalibration();
  state.registry = doc.registry;
  if (state.selected && state.chainFor !== state.selected) showDetail();
}

// -- coverage and due dates -----------------------------------------------------------------

function pct(share) { return share === null ? "–" : `${Math.floor(share * 1000) / 10} %`; }

function renderCoverage(doc) {
  const fig = document.getElementById("coverage-figure");
  const ins = doc.instruments, chs = doc.channels;
  fig.textContent = pct(ins.share);
  fig.dataset.full = ins.traceable === ins.total ? "yes" : "no";
  document.getElementById("coverage-text").textContent =
    `${ins.traceable} of ${ins.total} active instruments have a chain that reaches an NMI unbroken and in date today (${doc.on})`;
  document.getElementById("coverage-channels").textContent =
    `channels: ${chs.traceable} of ${chs.total} (${pct(chs.share)})`;
  const ul = document.getElementById("coverage-gaps");
  ul.replaceChildren(...doc.not_traceable.map((c) => el("li", { "data-equipment": c.item },
    el("strong", { text: `${c.item} ${c.channel} ` }), badge(c.status), " ",
    el("span", { class: "muted", text: c.reasons.join("; ") || "no certificate" }))));
  if (!doc.not_traceable.length) ul.append(el("li", { class: "s-valid", text: "✔ every active instrument is traceable" }));
}

function renderDue(doc) {
  document.getElementById("due-days").textContent = doc.highlight_days;
  const rows = doc.certificates.map((c) => {
    const tr = el("tr", { "data-certificate": c.number, class: c.days_left < 0 ? "soon over" : c.highlight ? "soon" : null });
    tr.append(el("td", { text: c.due }), el("td", { text: String(c.days_left) }),
      el("td", {}, badge(c.status)), el("td", { text: c.number + (c.nmi ? " · NMI" : ""), title: c.issued_by }),
      el("td", { text: c.channel ? `${c.item} ${c.channel}` : c.item }),
      el("td", { class: "small muted", text: c.role.replace("_", " ") }));
    return tr;
  });
  document.querySelector("#due tbody").replaceChildren(...rows);
}

async function loadCalibration() {
  const [cov, due] = await Promise.all([getJSON("api/coverage").catch(() => null), getJSON("api/due")]);
  if (cov) renderCoverage(cov);
  renderDue(due);
  if (state.selected) showDetail();
}

// -- chain and plots ------------------------------------------------------------------------

// A standard's status is judged on the day it was used (`evaluated_on`), as `calgate
// registry chain` says: "valid, due 2024-03-31" is right for a use in 2023.
function chainNode(n, usedBy = null) {
  const li = el("li", { "data-status": n.status });
  const head = el("div", { class: "node" }, el("span", { class: "num", text: n.number || "(no certificate)" }),
    el("span", { text: n.item + (n.channel ? ` ${n.channel}` : "") }), badge(n.status));
  if (n.nmi) head.append(el("span", { class: "small", text: "NMI" }));
  if (n.issued_by) head.append(el("span", { class: "small muted", text: n.issued_by }));
  const used = usedBy ? `; needed in force on ${n.evaluated_on}` : "";
  if (n.due) head.append(el("span", { class: "small muted", text: `calibrated ${n.calibrated}, due ${n.due}${used}` }));
  li.append(head);
  if (n.reasons.length) li.append(el("ul", { class: "reasons" }, ...n.reasons.map((r) => el("li", { text: r }))));
  if (n.standards.length) li.append(el("ul", {}, ...n.standards.map((s) => chainNode(s, n))));
  return li;
}

async function showDetail() {
  state.loadingDetail = true;
  try { await detail(); } finally { state.loadingDetail = false; }
}

async function detail() {
  const id = state.selected;
  state.chainFor = id;
  document.getElementById("detail-title").textContent = `${id}: traceability chain and live plot`;
  const box = document.getElementById("chain");
  try {
    const doc = await getJSON(`api/chain/${encodeURIComponent(id)}`);
    box.replaceChildren(...doc.trees.map((t) => el("ul", {}, chainNode(t))));
  } catch (e) {
    box.replaceChildren(el("p", { class: "muted", text: `no registry entry for ${id}` }));
  }
  const eq = state.board.find((e) => e.id === id);
  const plots = document.getElementById("plots");
  for (const p of Object.values(state.plots)) p.plot.destroy();
  state.plots = {};
  plots.replaceChildren();
  for (const ch of eq ? eq.channels : []) {
    const key = `${id}/${ch.name}`;
    try {
      const doc = await getJSON(`api/series?equipment=${encodeURIComponent(id)}&channel=${encodeURIComponent(ch.name)}`);
      state.windowS = doc.window_s;
      mergePoints(key, doc.points, true);
      makePlot(key, ch, doc, plots);
    } catch (e) { /* a channel without samples yet */ }
  }
}

function mergePoints(key, points, replace) {
  let s = state.series[key];
  if (!s || replace) s = state.series[key] = { t: [], v: [], U: [] };
  for (const [t, v, U] of points) {
    if (s.t.length && t <= s.t[s.t.length - 1]) continue;
    s.t.push(t); s.v.push(v); s.U.push(U);
  }
  const cut = Date.now() / 1000 - state.windowS;
  let i = 0;
  while (i < s.t.length && s.t[i] < cut) i++;
  if (i) { s.t.splice(0, i); s.v.splice(0, i); s.U.splice(0, i); }
}

function limitValues(limits) {
  return limits ? [["low limit", limits.low], ["high limit", limits.high]].filter(([, v]) => v !== null) : [];
}

function plotData(key, limits) {
  const s = state.series[key];
  const lo = s.v.map((v, i) => (v === null || s.U[i] === null ? null : v - s.U[i]));
  const hi = s.v.map((v, i) => (v === null || s.U[i] === null ? null : v + s.U[i]));
  return [s.t, lo, hi, s.v, ...limitValues(limits).map(([, v]) => s.t.map(() => v))];
}

function yRange(key) {
  const s = state.series[key];
  let lo = Infinity, hi = -Infinity, u = 0;
  s.v.forEach((v, i) => {
    if (v === null) return;
    const U = s.U[i] || 0;
    lo = Math.min(lo, v - U); hi = Math.max(hi, v + U); u = Math.max(u, U);
  });
  if (lo > hi) return [0, 1];
  const pad = Math.max((hi - lo) * 0.15, u, Math.abs(hi) * 1e-6, 1e-9);
  return [lo - pad, hi + pad];
}

// uPlot's time labels are American ("7:25am", "12/3/26"); the page writes 24-hour times
// and ISO dates, so the plot does too.
function isoTemplate(tpl) {
  return tpl.replace("{M}/{D}/{YY}", "{YYYY}-{MM}-{DD}").replace("{M}/{D}", "{MM}-{DD}")
    .replace("{h}:{mm}{aa}", "{HH}:{mm}").replace("{h}{aa}", "{HH}:00").replace(/\{h\}/g, "{HH}")
    .replace(/\{(aa|AA|a)\}/g, "");
}

function makePlot(key, ch, doc, parent) {
  const box = el("div", { class: "plot", "data-channel": ch.name });
  const lims = limitValues(doc.limits).map(([label, v]) => `${label} ${v}`).join(", ");
  box.append(el("h3", { text: `${ch.name} (${doc.unit || ch.unit || ""}): corrected value with its ± U band` +
    ` — last ${Math.round(doc.window_s / 60)} min` + (lims ? ` · ${lims} (dashed, when in view)` : "") }));
  parent.append(box);
  const width = Math.max(320, parent.clientWidth - 10);
  const axis = { stroke: "#9aa7b4", grid: { stroke: "#2c343d" }, ticks: { stroke: "#2c343d" } };
  const line = (label, stroke, width, dash) => ({ label, stroke, width, dash, points: { show: false } });
  const opts = {
    width, height: 220,
    fmtDate: (tpl) => uPlot.fmtDate(isoTemplate(tpl)),
    // a key of the lines, not the values under a cursor (a wall screen has none: it
    // showed "Time: -- value: --" as if data were missing)
    legend: { live: false },
    // the view follows the values and their U; a limit is drawn when it comes near them
    scales: { x: { time: true }, y: { range: () => yRange(key) } },
    axes: [axis, { ...axis, size: 70 }],
    series: [
      {},
      line("value − U", "rgba(86,180,233,.5)", 1),
      line("value + U", "rgba(86,180,233,.5)", 1),
      line("value", "#56b4e9", 2),
      ...limitValues(doc.limits).map(([label]) => line(label, "#d55e00", 1.5, [6, 4])),
    ],
    bands: [{ series: [2, 1], fill: "rgba(86,180,233,.18)" }],
  };
  const plot = new uPlot(opts, plotData(key, doc.limits), box);
  state.plots[key] = { plot, limits: doc.limits };
}

// -- events ---------------------------------------------------------------------------------

function renderEvents() {
  const eq = document.getElementById("filter-equipment").value;
  const type = document.getElementById("filter-type").value;
  const types = document.getElementById("filter-type");
  const have = new Set([...types.options].map((o) => o.value));
  for (const e of state.events) if (!have.has(e.type)) { types.append(el("option", { value: e.type, text: e.type })); have.add(e.type); }
  const shown = state.events.filter((e) => (!eq || e.equipment === eq) && (!type || e.type === type));
  const items = shown.slice(0, 200).map((e) => el("li", { "data-type": e.type, "data-equipment": e.equipment },
    el("span", { class: "t", text: hms(e.ts) }),
    el("span", {}, el("span", { class: `s-${e.severity}`, text: WORDS[e.severity] || e.severity })),
    el("span", {}, e.message.startsWith(e.equipment) ? null : el("strong", { text: `${e.equipment} ` }),
      el("span", { text: e.message }),
      el("div", { class: "type", text: e.type.replaceAll("_", " ") }))));
  if (!items.length) items.push(el("li", { class: "muted", text: "no events" }));
  document.getElementById("events").replaceChildren(...items);
}

function addEvents(list) {
  const fresh = list.filter((e) => e.n > state.lastEvent).sort((a, b) => b.n - a.n);
  if (!fresh.length) return;
  state.lastEvent = fresh[0].n;
  state.events = fresh.concat(state.events).slice(0, 500);
  renderEvents();
}

// -- the stream -----------------------------------------------------------------------------

function applyUpdate(doc) {
  applyBoard(doc);
  addEvents(doc.events);
  let missing = false;
  for (const [key, pts] of Object.entries(doc.points)) {
    mergePoints(key, pts, false);
    const p = state.plots[key];
    if (p) p.plot.setData(plotData(key, p.limits));
    else if (key.startsWith(`${state.selected}/`)) missing = true;
  }
  if (missing && !state.loadingDetail) showDetail();  // its first samples: now it has a plot
  const live = document.getElementById("live");
  const sick = doc.health && !doc.health.healthy;
  live.dataset.state = sick ? "unhealthy" : "live";
  live.textContent = `${sick ? "live, gateway unhealthy" : "live"} · updated ${hms(doc.now)}`;
}

function renderHealth(health) {
  const box = document.getElementById("health");
  const problems = health && !health.healthy ? health.problems : [];
  box.hidden = !problems.length;
  box.replaceChildren(el("strong", { text: "▲ gateway unhealthy: " }),
    ...problems.map((p, i) => el("span", { text: (i ? "; " : "") + p })));
}

async function loadAll() {
  const [board, events] = await Promise.all([getJSON("api/board"), getJSON("api/events")]);
  state.events = []; state.lastEvent = 0;
  applyBoard(board);
  addEvents(events.events);
  renderEvents();
  await loadCalibration();
}

function connect() {
  const es = new EventSource("api/stream");
  const live = document.getElementById("live");
  es.addEventListener("hello", () => { loadAll().catch(console.error); });
  es.addEventListener("update", (ev) => applyUpdate(JSON.parse(ev.data)));
  es.addEventListener("resync", () => { loadAll().catch(console.error); });
  es.onerror = () => { live.dataset.state = "lost"; live.textContent = "connection lost · retrying"; };
}

function select(id) {
  state.selected = id;
  history.replaceState(null, "", `#${encodeURIComponent(id)}`);
  renderBoard();
  showDetail();
}

document.getElementById("filter-equipment").addEventListener("change", renderEvents);
document.getElementById("filter-type").addEventListener("change", renderEvents);
window.addEventListener("resize", () => {
  const parent = document.getElementById("plots");
  for (const p of Object.values(state.plots)) p.plot.setSize({ width: Math.max(320, parent.clientWidth - 10), height: 220 });
});
connect();
