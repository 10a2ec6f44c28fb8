// Model Manager dashboard: polls /api/dashboard every two seconds and draws it, charts in inline SVG.
"use strict";

const POLL_MS = 2000;
const KEY_STORE = "model-manager-api-key";
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#3b6fd8", "#e08a1e", "#2e9e5b", "#b04fc1", "#d33c3c", "#1fa2a8", "#8a6d3b", "#5c6bc0"];
const authRequired = document.body.dataset.authRequired === "true";
const $ = (id) => document.getElementById(id);

// --- small helpers ---------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text != null) node.textContent = String(text);
  return node;
}

function gb(bytes) { return (bytes / 1e9).toFixed(bytes >= 1e10 ? 1 : 2) + " GB"; }

function secs(s) {
  if (s == null) return "–";
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 60) return s.toFixed(1) + " s";
  return Math.floor(s / 60) + "m " + Math.round(s % 60) + "s";
}

function clock(t) { return new Date(t).toLocaleTimeString([], { hour12: false }); }
function colorOf(name, names) { return PALETTE[names.indexOf(name) % PALETTE.length]; }
function shortId(id) { return id.slice(0, 8); }
function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colspan: columns }, empty))]));
}
function cell(value, cls) { return el("td", cls ? { class: cls } : {}, value); }

// --- the key --------------------------------------------------------------------------------------
let apiKey = sessionStorage.getItem(KEY_STORE) || "";

function showKeyState(message) {
  $("key-forget").hidden = !apiKey;
  $("key-needed").hidden = !message;
  if (message) $("key-needed").textContent = message;
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = $("key-input").value.trim();
  $("key-input").value = "";
  if (apiKey) sessionStorage.setItem(KEY_STORE, apiKey); else sessionStorage.removeItem(KEY_STORE);
  showKeyState("");
  poll();
});

$("key-forget").addEventListener("click", () => {
  apiKey = "";
  sessionStorage.removeItem(KEY_STORE);
  showKeyState(authRequired ? "This service needs an API key: enter yours above to see your jobs." : "");
  poll();
});

// --- polling --------------------------------------------------------------------------------------
let timer = null;

async function poll() {
  clearTimeout(timer);
  try {
    if (authRequired && !apiKey) {
      showKeyState("This service needs an API key: enter yours above to see your jobs.");
      $("board").hidden = true;
      return;
    }
    const headers = apiKey ? { Authorization: "Bearer " + apiKey } : {};
    const response = await fetch("/api/dashboard", { headers, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) {
      apiKey = "";
      sessionStorage.removeItem(KEY_STORE);
      showKeyState("That key was not accepted (" + (body.error || "401") + "): enter a valid one.");
      $("board").hidden = true;
      return;
    }
    if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
    $("error").hidden = true;
    $("board").hidden = false;
    showKeyState("");
    render(body);
  } catch (err) {
    $("error").hidden = false;
    $("error").textContent = "Could not read the service: " + err.message;
  } finally {
    timer = setTimeout(poll, POLL_MS);
  }
}

// --- drawing --------------------------------------------------------------------------------------
function render(d) {
  const rt = d.runtime || {};
  $("health").textContent = d.scheduler.reporting ? (rt.ok ? "runtime ok" : "runtime down") : "no scheduler yet";
  $("health").className = "pill " + (d.scheduler.reporting && rt.ok ? "ok" : "bad");
  $("viewer").textContent = d.viewer.tenant ? "tenant " + d.viewer.tenant + (d.viewer.admin ? " (admin)" : "")
    : (d.viewer.admin ? "all tenants" : "");
  $("updated").textContent = "updated " + clock(d.at * 1000) +
    (d.scheduler.epoch != null ? " · leader epoch " + d.scheduler.epoch : "");
  renderQueue(d.queue);
  renderMemory(d.memory, d.models);
  renderRunning(d.running, d.at);
  renderActivity(d.activity, d.scheduler, d.at);
  const names = [...new Set([...d.ledger.points.map((p) => p.model), ...d.models.map((m) => m.name)])].sort();
  renderTokens(d.ledger.points, names);
  renderTimes(d.ledger.models, names);
  renderRecent(d.recent_jobs);
  renderTenants(d.tenants);
}

function renderQueue(q) {
  $("queue-total").textContent = q.total + (q.yours != null ? " (yours " + q.yours + ")" : "");
  const most = Math.max(1, ...Object.values(q.by_priority));
  $("queue-priority").replaceChildren(...["high", "normal", "low"].map((p) => {
    const n = q.by_priority[p] || 0;
    return el("div", { class: "prio" }, el("span", { class: "name" }, p),
      el("span", { class: "bar " + p, style: "width:" + Math.round(140 * n / most) + "px" }), el("span", {}, n));
  }));
  const rows = Object.entries(q.by_model).sort((a, b) => b[1] - a[1])
    .map(([m, n]) => el("tr", {}, cell(m), cell(n, "num")));
  fill($("queue-models").tBodies[0], rows, "nothing waiting", 2);
}

function renderMemory(mem, models) {
  $("memory-total").textContent = gb(mem.used) + " used of " + gb(mem.total) + " · budget " + gb(mem.budget);
  const bars = mem.nodes.map((node) => memoryBar(node, models.filter((m) => m.node === node.url)));
  $("memory-bars").replaceChildren(...(bars.length ? bars : [el("p", { class: "empty" }, "no runtime read yet")]));
  const rows = models.map((m) => el("tr", {},
    cell(m.name), cell(m.node), cell(m.phase), cell(gb(m.memory_bytes), "num"), cell(gb(m.weights_bytes), "num"),
    cell(gb(m.kv_cache_bytes), "num"), cell(m.footprint),
    el("td", {}, slotBoxes(m.slots, m.slots_in_use), m.slots_in_use + "/" + m.slots)));
  fill($("models-table").tBodies[0], rows, "no model loaded", 8);
}

function slotBoxes(total, busy) {
  const boxes = el("span", { class: "slots" });
  for (let i = 0; i < Math.min(total, 16); i++) boxes.append(el("i", i < busy ? { class: "busy" } : {}));
  return boxes;
}

function memoryBar(node, models) {
  const W = 1000, H = 46, total = Math.max(node.total, 1), scale = (b) => (b / total) * W;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "memory of " + node.url });
  const defs = svg("defs");
  const hatch = svg("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" });
  hatch.append(svg("rect", { width: 3, height: 6, fill: "rgba(255,255,255,0.55)" }));
  defs.append(hatch);
  chart.append(defs, svg("rect", { x: 0, y: 4, width: W, height: 28, fill: "#eef0f3", rx: 3 }));
  let x = 0;
  for (const m of models) {
    const start = x;
    for (const [bytes, color] of [[m.weights_bytes, "var(--weights)"], [m.kv_cache_bytes, "var(--kv)"],
      [m.other_bytes, "var(--other)"]]) {
      const w = scale(bytes);
      if (w > 0) chart.append(svg("rect", { x, y: 4, width: w, height: 28, fill: color }));
      x += w;
    }
    if (m.footprint === "estimated") chart.append(svg("rect", { x: start, y: 4, width: x - start, height: 28, fill: "url(#hatch)" }));
    chart.append(svg("line", { x1: x, x2: x, y1: 4, y2: 32, stroke: "#fff", "stroke-width": 2 }));
    const title = svg("title", {}, `${m.name}: ${gb(m.memory_bytes)} (weights ${gb(m.weights_bytes)}, KV cache ${gb(m.kv_cache_bytes)}, ${m.footprint}), slots ${m.slots_in_use}/${m.slots}`);
    const label = svg("text", { x: start + 4, y: 22, fill: "#fff", style: "fill:#fff;font-size:12px" },
      x - start > 70 ? `${m.name} ${m.slots_in_use}/${m.slots}` : "");
    label.append(title);
    chart.append(label);
  }
  const bx = scale(node.budget);
  chart.append(svg("line", { x1: bx, x2: bx, y1: 0, y2: 36, stroke: "var(--budget)", "stroke-width": 3 }));
  chart.append(svg("text", { x: Math.min(bx, W - 60), y: 45 }, "budget " + gb(node.budget)));
  chart.append(svg("text", { x: 0, y: 45 }, `${gb(node.used)} used · ${gb(node.free)} free · ${gb(node.total)}`));
  return el("div", { class: "node-bar" }, el("div", { class: "label" }, node.url + (node.ok ? "" : " (not answering)")), chart);
}

function renderRunning(jobs, now) {
  $("running-total").textContent = jobs.length;
  const rows = jobs.map((j) => el("tr", {}, el("td", { title: j.job_id }, el("code", {}, shortId(j.job_id))),
    cell(j.model), cell(j.priority), cell(j.started_at ? secs(now - Date.parse(j.started_at) / 1000) : "–", "num")));
  fill($("running-jobs").tBodies[0], rows, "nothing running", 4);
}

function renderActivity(activity, sched, now) {
  $("activity-totals").textContent = `loads ${sched.loads} · unloads ${sched.unloads} · evictions ${sched.evictions}` +
    (sched.waiting_for_memory.length ? " · waiting for memory: " + sched.waiting_for_memory.join(", ") : "");
  const W = 1000, H = 150, lanesH = 54, minutes = 30, first = Math.floor(now / 60) - minutes + 1;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "loads, unloads and evictions over time" });
  // the last events, to the second, in one lane per kind over the span they cover (at least a minute)
  const events = activity.events;
  const span = Math.max(60, now - (events.length ? events[0].at : now));
  const ex = (t) => 70 + ((t - (now - span)) / span) * (W - 80);
  ["load", "unload", "evict"].forEach((kind, lane) => {
    const y = 4 + lane * 16;
    chart.append(svg("text", { x: 2, y: y + 10 }, kind), svg("line", { x1: 70, x2: W - 10, y1: y + 6, y2: y + 6, stroke: "#eef0f3" }));
    for (const e of events.filter((e) => e.kind === kind)) {
      const tick = svg("rect", { x: ex(e.at) - 2, y, width: 4, height: 12, fill: `var(--${kind})` });
      tick.append(svg("title", {}, `${clock(e.at * 1000)} ${kind} ${e.model}`));
      chart.append(tick);
    }
  });
  chart.append(svg("text", { x: W - 60, y: lanesH }, "now"), svg("text", { x: 70, y: lanesH }, "-" + secs(span)));
  // counts per minute over the last half hour
  const perMinute = new Map(activity.per_minute.map((b) => [Math.floor(b.minute / 60), b]));
  const most = Math.max(1, ...activity.per_minute.map((b) => b.load + b.unload + b.evict));
  const bw = (W - 80) / minutes, base = H - 14, room = base - lanesH - 16;
  for (let i = 0; i < minutes; i++) {
    const b = perMinute.get(first + i);
    let y = base;
    for (const kind of ["load", "unload", "evict"]) {
      const h = b ? (b[kind] / most) * room : 0;
      if (h > 0) {
        const bar = svg("rect", { x: 70 + i * bw + 2, y: y - h, width: bw - 4, height: h, fill: `var(--${kind})` });
        bar.append(svg("title", {}, `${clock((first + i) * 60000)}: ${b[kind]} ${kind}`));
        chart.append(bar);
      }
      y -= h;
    }
    if (i % 5 === 0) chart.append(svg("text", { x: 70 + i * bw + 2, y: H - 2 }, clock((first + i) * 60000).slice(0, 5)));
  }
  chart.append(svg("text", { x: 2, y: base - room / 2 }, "per minute"), svg("text", { x: 2, y: base - room / 2 + 12 }, `(max ${most})`));
  $("activity-chart").replaceChildren(chart);
  const items = events.slice().reverse().map((e) => el("li", { class: "kind-" + e.kind },
    `${clock(e.at * 1000)} ${e.kind} ${e.model}`));
  $("activity-events").replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, "no loads yet")]));
}

function axes(chart, W, H, pad, yMax, yLabel) {
  chart.append(svg("line", { x1: pad, x2: pad, y1: 6, y2: H - pad, stroke: "#ccd" }));
  chart.append(svg("line", { x1: pad, x2: W - 4, y1: H - pad, y2: H - pad, stroke: "#ccd" }));
  chart.append(svg("text", { x: 2, y: 12 }, yLabel));
  chart.append(svg("text", { x: 2, y: H - pad }, "0"));
  chart.append(svg("text", { x: 2, y: 26 }, yMax >= 100 ? Math.round(yMax) : yMax.toPrecision(2)));
}

function legend(chart, names, W) {
  names.forEach((name, i) => {
    chart.append(svg("rect", { x: W - 190, y: 6 + i * 14, width: 10, height: 10, fill: colorOf(name, names) }));
    chart.append(svg("text", { x: W - 176, y: 15 + i * 14 }, name));
  });
}

function renderTokens(points, names) {
  const W = 600, H = 220, pad = 30, shown = points.filter((p) => p.tokens_per_s != null);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "tokens per second of recent jobs" });
  if (!shown.length) {
    chart.append(svg("text", { x: pad, y: H / 2 }, "no finished jobs in the ledger yet"));
  } else {
    const t0 = shown[0].at, t1 = Math.max(shown[shown.length - 1].at, t0 + 1);
    const yMax = Math.max(...shown.map((p) => p.tokens_per_s)) * 1.1;
    axes(chart, W, H, pad, yMax, "tokens/s");
    for (const p of shown) {
      const dot = svg("circle", { cx: pad + ((p.at - t0) / (t1 - t0)) * (W - 200 - pad), r: 3.5,
        cy: H - pad - (p.tokens_per_s / yMax) * (H - pad - 8), fill: colorOf(p.model, names), "fill-opacity": 0.8 });
      dot.append(svg("title", {}, `${p.model}: ${p.tokens_per_s} tokens/s at ${clock(p.at * 1000)}`));
      chart.append(dot);
    }
    chart.append(svg("text", { x: pad, y: H - 8 }, clock(t0 * 1000)));
    chart.append(svg("text", { x: W - 250, y: H - 8 }, clock(t1 * 1000)));
    legend(chart, [...new Set(shown.map((p) => p.model))].sort(), W);
  }
  $("tps-chart").replaceChildren(chart);
}

function renderTimes(models, names) {
  const W = 600, rowH = 34, pad = 110, H = Math.max(60, models.length * rowH + 30);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "wait and run time per model" });
  if (!models.length) {
    chart.append(svg("text", { x: 10, y: 30 }, "no finished jobs in the ledger yet"));
  } else {
    const most = Math.max(0.001, ...models.map((m) => Math.max(m.wait_p95_s, m.run_p95_s)));
    const x = (s) => pad + (s / most) * (W - pad - 170);
    models.forEach((m, i) => {
      const y = 8 + i * rowH;
      chart.append(svg("text", { x: 2, y: y + 16, style: `fill:${colorOf(m.model, names)}` }, m.model));
      for (const [k, off, color] of [["wait", 0, "var(--evict)"], ["run", 13, "var(--weights)"]]) {
        const p50 = m[k + "_p50_s"], p95 = m[k + "_p95_s"];
        const bar = svg("rect", { x: pad, y: y + off, width: Math.max(x(p50) - pad, 1), height: 10, fill: color });
        bar.append(svg("title", {}, `${m.model} ${k}: median ${secs(p50)}, p95 ${secs(p95)} (${m.jobs} jobs)`));
        chart.append(bar, svg("line", { x1: x(p50), x2: x(p95), y1: y + off + 5, y2: y + off + 5, stroke: color }));
        chart.append(svg("text", { x: x(p95) + 4, y: y + off + 9 }, `${k} ${secs(p50)} / p95 ${secs(p95)}`));
      }
    });
    chart.append(svg("text", { x: pad, y: H - 4 }, "bar: median · line: to the 95th percentile · wait = queue + load"));
  }
  $("times-chart").replaceChildren(chart);
}

function renderRecent(jobs) {
  const rows = jobs.map((j) => {
    const m = j.metrics || {};
    const wait = m.queue_wait_s != null ? m.queue_wait_s + (m.load_s || 0) : null;
    // a waiting job: its place in its model's line and when it should start
    const ahead = j.position != null ? `#${j.position + 1}` + (j.eta_s != null ? `, in ~${secs(j.eta_s)}` : "") : null;
    const status = j.preempted ? `${j.status} (preempted ${j.preempted}x)` : j.status;
    return el("tr", { "data-job-id": j.job_id },
      el("td", { title: j.job_id }, el("code", {}, shortId(j.job_id))), cell(j.model), cell(j.priority),
      el("td", { title: j.error || "" }, el("span", { class: "status " + j.status }, status)),
      cell(j.submitted_at ? clock(Date.parse(j.submitted_at)) : "–"), cell(ahead || secs(wait), "num"),
      cell(secs(m.run_s), "num"), cell(m.tokens_per_s != null ? Math.round(m.tokens_per_s) : "–", "num"),
      cell(m.output_tokens != null ? m.output_tokens : "–", "num"));
  });
  fill($("recent-jobs").tBodies[0], rows, "no jobs yet", 9);
}

function renderTenants(tenants) {
  $("tenants-card").hidden = tenants == null;           // admins only
  if (tenants == null) return;
  const rows = tenants.map((t) => el("tr", {}, cell(t.tenant), cell(t.jobs, "num"),
    cell((t.prompt_tokens || 0) + (t.output_tokens || 0), "num"), cell(secs(t.run_s), "num"),
    cell(secs(t.cpu_s), "num"), cell(t.gpu_energy_j ? Math.round(t.gpu_energy_j) + " J" : "–", "num")));
  fill($("tenants-table").tBodies[0], rows, "no finished jobs in the last day", 6);
}

showKeyState("");
poll();
