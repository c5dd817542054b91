// The report page's script: it reads the JSON document the agent wrote into the page and
// builds the summary, the charts, the table and the ladders from it. Text from the trace is
// only ever given to textContent or setAttribute, never parsed as markup. The ladder is drawn
// as the agent's SVG export draws it (sinks/ladder/svg.rs): same layout, same classes, same
// words, in the same order.
"use strict";
(function () {
  const errors = [];
  function showError(text) {
    errors.push(text);
    const pre = document.getElementById("errors");
    pre.hidden = false;
    pre.textContent = errors.join("\n");
    document.body.dataset.errors = String(errors.length);
  }
  window.addEventListener("error", (e) => showError("script error: " + e.message));

  const dataElement = document.getElementById("report-data");
  const D = JSON.parse(dataElement.textContent);
  // Parsed: the text (most of the page's size) is not kept in the document twice.
  dataElement.remove();
  const S = D.strings;
  const G = D.layout;
  const SVG = "http://www.w3.org/2000/svg";
  const CONFORMANCE = ["deviates", "incomplete", "conforms"];
  const PAGE = 100;

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function sv(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs || {}) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  // As clock::decimal: rounded half up in integers (exact below 2^53 ns, 104 days, as no sum
  // passes it), where toFixed would round some ties apart from the SVG files.
  function decimal(v, unit, places) {
    const scale = 10 ** places, q = unit / scale, r = v % q;
    const n = (v - r) / q + (r >= Math.ceil(q / 2) ? 1 : 0);
    return Math.floor(n / scale) + "." + String(n % scale).padStart(places, "0");
  }
  function humanNs(ns) {
    if (ns < 1e3) return ns + "ns";
    if (ns < 1e6) return decimal(ns, 1e3, 1) + "µs";
    if (ns < 1e9) return decimal(ns, 1e6, 1) + "ms";
    return decimal(ns, 1e9, 2) + "s";
  }
  function utc(ms) {
    return new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
  }

  // A row of the table, as the agent wrote it (sinks/report/mod.rs).
  function row(r) {
    return {
      id: r[0], peer: r[1], local: r[2], remote: r[3], pid: r[4],
      comm: r[5] === null ? null : S[r[5]], netns: r[6], startMs: r[7], durNs: r[8],
      variant: S[r[9]], conf: r[10], role: S[r[11]], findings: r[12].map((i) => S[i]),
      zeekState: S[r[13]], history: r[14], ladder: r[15], bar: r[16],
    };
  }
  const rows = D.rows.map(row);
  const byId = new Map(rows.map((r) => [r.id, r]));

  function title(r) {
    let t = "#" + r.id + " " + r.local + " -> " + r.remote;
    if (r.pid !== null) t += "  pid " + r.pid + " (" + r.comm + ")";
    return t;
  }

  // ---- The ladder: the same drawing as svg::render.
  function laneText(role, us, traced) {
    const whose = us ? "this end" : traced ? "peer, traced" : "peer, not traced: drawn from this end's events";
    return role + " (" + whose + ")";
  }
  function legend(l) {
    const n = (v) => (v === null ? "?" : String(v));
    if (l[4] === null && l[5] === null && l[6] === null)
      return "no close began: the documented sequence (faint) for comparison";
    let s = "U=" + n(l[4]) + " V=" + n(l[5]) + " W=" + n(l[6]);
    if (l[7] !== null) s += "  W-V=" + l[7] + " bytes";
    return s;
  }
  function timeWaitText(bar) {
    let s = "TIME_WAIT";
    if (bar[5]) s += " (a timewait socket's)";
    if (bar[2] !== null && bar[4] !== null) s += " " + humanNs(bar[4] * 1e6) + ", " + bar[2];
    else if (bar[2] !== null) s += ", " + bar[2];
    else s += ": 2MSL (60 s on Linux), its end not seen";
    if (bar[3] > 0) s += ", restarted " + bar[3] + "x";
    return s;
  }
  function ladderSvg(r) {
    const l = r.ladder;
    const times = l[0];
    const y = (row) => G.top + row * G.rowHeight;
    const h = G.top + (times.length + G.timeWaitRows + 1) * G.rowHeight + G.bottom;
    const svg = sv("svg", { class: "ladder", width: G.width, height: h, viewBox: "0 0 " + G.width + " " + h, "data-connection": r.id });
    const defs = sv("defs");
    for (const k of G.kinds) {
      const m = sv("marker", { id: "head-" + k, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" });
      m.appendChild(sv("path", { d: "M0,0L10,5L0,10z", fill: G.heads[k] }));
      defs.appendChild(m);
    }
    svg.appendChild(defs);
    svg.appendChild(sv("rect", { width: G.width, height: h, fill: "#fff" }));
    svg.appendChild(sv("text", { class: "title", x: 10, y: 22 }, title(r)));
    svg.appendChild(sv("text", { class: "headline", x: 10, y: 42 }, S[l[12]]));
    svg.appendChild(sv("text", { class: "legend", x: 10, y: 60 }, legend(l)));
    const bottom = h - G.bottom;
    const usLane = l[8];
    for (let i = 0; i < 2; i++) {
      const x = G.laneX[i];
      const us = i === usLane;
      const traced = us || l[9] === 1;
      const g = sv("g", { class: "lane", "data-lane": i });
      g.appendChild(sv("text", { class: "endpoint", x: x, y: 84, "text-anchor": "middle" }, us ? r.local : r.remote));
      g.appendChild(sv("text", { class: "role", x: x, y: 100, "text-anchor": "middle" }, laneText(S[us ? l[10] : l[11]], us, traced)));
      g.appendChild(sv("line", { class: traced ? "lifeline" : "lifeline untraced", x1: x, y1: 106, x2: x, y2: bottom }));
      svg.appendChild(g);
    }
    const tmpl = sv("g", { class: "template" });
    l[3].forEach((row, k) => {
      const sender = G.senders[k]; // the document's arrows: the active closer is on the left
      const x1 = G.laneX[sender], x2 = G.laneX[1 - sender], yy = y(row);
      const g = sv("g", { class: "tmpl", "data-step": k + 1 });
      g.appendChild(sv("title", {}, "documented step " + (k + 1) + ": " + G.steps[k]));
      g.appendChild(sv("line", { x1: x1, y1: yy, x2: x2, y2: yy + G.rowHeight / 2 }));
      tmpl.appendChild(g);
    });
    svg.appendChild(tmpl);
    let last = null;
    times.forEach((t, i) => {
      if (t !== last) svg.appendChild(sv("text", { class: "time", x: 10, y: y(i) + 4 }, "+" + decimal(t, 1e6, 3) + " ms"));
      last = t;
    });
    let prevStep = null;
    for (const a of l[1]) {
      const [from, rowFrom, rowTo, kindIndex, label, count, step] = a;
      const kind = G.kinds[kindIndex];
      const x1 = G.laneX[Math.min(from, 1)], x2 = G.laneX[1 - Math.min(from, 1)];
      const y1 = y(rowFrom);
      const y2 = rowTo > rowFrom ? y(rowTo) : y1 + G.rowHeight / 2;
      const attrs = { class: "arrow " + kind, "data-kind": kind };
      if (step !== null) attrs["data-step"] = step;
      const g = sv("g", attrs);
      g.appendChild(sv("line", { x1: x1, y1: y1, x2: x2, y2: y2, "marker-end": "url(#head-" + kind + ")" }));
      const text = count > 1 ? S[label] + " x" + count : S[label];
      const mx = Math.floor((x1 + x2) / 2), my = Math.floor((y1 + y2) / 2);
      // As svg::label_y: a merged step's words go under the arrow it rides on.
      g.appendChild(sv("text", { class: "label", x: mx, y: kind === "merged" ? my + 30 : my - 6, "text-anchor": "middle" }, text));
      if (kind === "step") {
        const t = times[rowFrom] || 0;
        if (prevStep !== null) g.appendChild(sv("text", { class: "dt", x: mx, y: my + 14, "text-anchor": "middle" }, "+" + humanNs(Math.max(0, t - prevStep))));
        prevStep = t;
      }
      svg.appendChild(g);
    }
    for (const [row, lane, name, inferred] of l[2]) {
      const left = lane === 0;
      const x = left ? G.laneX[0] - 12 : G.laneX[1] + 12;
      const g = sv("g", { class: inferred ? "state inferred" : "state", "data-lane": lane, "data-state": S[name] });
      g.appendChild(sv("text", { x: x, y: y(row) + 16, "text-anchor": left ? "end" : "start" }, inferred ? "(" + S[name] + ")" : S[name]));
      svg.appendChild(g);
    }
    const bar = r.bar;
    if (bar) {
      const lane = Math.min(bar[0], 1);
      const x = G.laneX[lane], yy = y(bar[1]) + 22;
      // As svg::render: down to the last row, its words under it.
      const end = y(Math.max(0, times.length + G.timeWaitRows - 1));
      const height = Math.max(end - yy, G.rowHeight);
      const g = sv("g", { class: bar[5] ? "timewait inferred" : "timewait" });
      g.appendChild(sv("rect", { x: x - 6, y: yy, width: 12, height: height }));
      g.appendChild(sv("text", { x: lane === 0 ? x - 6 : x + 6, y: yy + height + 16, "text-anchor": lane === 0 ? "start" : "end" }, timeWaitText(bar)));
      svg.appendChild(g);
    }
    if (r.findings.length) svg.appendChild(sv("text", { class: "findings", x: 10, y: h - 20 }, "findings: " + r.findings.join(", ")));
    return svg;
  }

  function showLadder(id) {
    const r = byId.get(id);
    const view = document.getElementById("ladder-view");
    view.replaceChildren();
    if (!r) {
      view.appendChild(el("p", { class: "none" }, "no connection #" + id + " in this report"));
      return;
    }
    view.dataset.connection = String(r.id);
    const facts = el("p", { class: "facts" });
    facts.appendChild(el("span", {}, CONFORMANCE[r.conf] + ", " + r.variant + " (" + r.role + "); Zeek " + r.zeekState + " " + r.history + "; " + humanNs(r.durNs) + " from the first event"));
    if (r.peer !== null && byId.has(r.peer)) {
      facts.appendChild(document.createTextNode(" · "));
      facts.appendChild(el("a", { href: "#conn=" + r.peer }, "the other end, #" + r.peer));
    }
    view.appendChild(facts);
    view.appendChild(ladderSvg(r));
    for (const tr of document.querySelectorAll("#table tbody tr")) tr.classList.toggle("selected", tr.dataset.id === String(id));
  }

  // ---- Summary.
  document.getElementById("source").textContent = "from " + D.source + ": " + D.totals.connections + " connections, " + D.totals.events + " events, " + D.totals.lost_events + " lost events";
  const totals = document.getElementById("totals");
  for (const k of ["deviates", "incomplete", "conforms"]) {
    const b = el("div", { class: "total " + k, "data-verdict": k });
    b.appendChild(el("span", { class: "n" }, String(D.totals[k])));
    b.appendChild(el("span", { class: "what" }, k));
    totals.appendChild(b);
  }
  function fill(table, head, data) {
    const tr = el("tr");
    for (const h of head) tr.appendChild(el("th", {}, h));
    table.appendChild(tr);
    for (const cells of data) {
      const r = el("tr");
      for (const c of cells) r.appendChild(el("td", {}, String(c)));
      table.appendChild(r);
    }
  }
  fill(document.getElementById("by-variant"), ["variant", "", "ends"], D.by_variant.map((v) => [v[0], v[1], v[2]]));
  fill(document.getElementById("by-finding"), ["finding", "ends"], D.by_finding);
  fill(document.getElementById("by-namespace"), ["network namespace", "ends", "deviating", "entered TIME_WAIT", "were in CLOSE_WAIT"], D.namespaces.map((n) => n.slice(1)));

  // ---- Over time.
  function chart(name, points) {
    const w = 640, h = 130, pad = 34;
    const max = Math.max(1, ...points);
    const svg = sv("svg", { class: "chart", width: w, height: h + 30, "data-series": name });
    svg.appendChild(sv("text", { x: 4, y: 14 }, name + ": at most " + Math.max(0, ...points) + " sockets"));
    const pts = points.map((p, i) => (pad + (i * (w - pad - 6)) / Math.max(1, points.length - 1)).toFixed(1) + "," + (20 + h - (p / max) * (h - 10)).toFixed(1));
    svg.appendChild(sv("polyline", { points: pts.join(" "), class: "line " + name }));
    svg.appendChild(sv("line", { x1: pad, y1: 20 + h, x2: w - 6, y2: 20 + h, class: "axis" }));
    svg.appendChild(sv("text", { x: pad, y: h + 30 + 0, class: "tick" }, utc(D.series.t0_ms)));
    svg.appendChild(sv("text", { x: w - 6, y: h + 30, class: "tick", "text-anchor": "end" }, utc(D.series.t0_ms + D.series.step_ms * (points.length - 1))));
    return svg;
  }
  if (D.series) {
    const c = document.getElementById("charts");
    c.appendChild(chart("TIME_WAIT", D.series.time_wait));
    c.appendChild(chart("CLOSE_WAIT", D.series.close_wait));
  }

  // ---- The table.
  const variantSelect = document.getElementById("filter-variant");
  for (const v of D.by_variant) variantSelect.appendChild(el("option", { value: v[0] }, v[0] + " (" + v[2] + ")"));
  const keys = {
    id: (r) => r.id, local: (r) => r.local, remote: (r) => r.remote, process: (r) => r.comm || "",
    verdict: (r) => r.conf, variant: (r) => r.variant, duration: (r) => r.durNs,
  };
  let sortKey = "verdict", sortDir = 1, page = 0, view = rows;
  function search(r) {
    return [r.id, r.local, r.remote, r.comm || "", r.variant, r.findings.join(" "), r.history, CONFORMANCE[r.conf]].join(" ").toLowerCase();
  }
  function refresh() {
    const text = document.getElementById("filter-text").value.trim().toLowerCase();
    const verdict = document.getElementById("filter-verdict").value;
    const variant = variantSelect.value;
    view = rows.filter((r) => (verdict === "" || String(r.conf) === verdict) && (variant === "" || r.variant === variant) && (text === "" || search(r).includes(text)));
    const key = keys[sortKey];
    view.sort((a, b) => {
      const x = key(a), y = key(b);
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir || a.id - b.id;
    });
    page = Math.min(page, Math.max(0, Math.ceil(view.length / PAGE) - 1));
    draw();
  }
  function draw() {
    const body = document.querySelector("#table tbody");
    body.replaceChildren();
    for (const r of view.slice(page * PAGE, page * PAGE + PAGE)) {
      const tr = el("tr", { "data-id": r.id, class: CONFORMANCE[r.conf] });
      const cells = [r.id, r.local, r.remote, r.pid === null ? "" : r.comm + " (" + r.pid + ")", CONFORMANCE[r.conf], r.variant, r.findings.join(", "), humanNs(r.durNs)];
      for (const c of cells) tr.appendChild(el("td", {}, String(c)));
      tr.addEventListener("click", () => { location.hash = "conn=" + r.id; });
      body.appendChild(tr);
    }
    const from = view.length ? page * PAGE + 1 : 0;
    document.getElementById("shown").textContent = from + "-" + Math.min(view.length, (page + 1) * PAGE) + " of " + view.length + " shown";
    const pager = document.getElementById("pager");
    pager.replaceChildren();
    const prev = el("button", { type: "button" }, "previous");
    prev.disabled = page === 0;
    prev.addEventListener("click", () => { page--; draw(); });
    const next = el("button", { type: "button" }, "next");
    next.disabled = (page + 1) * PAGE >= view.length;
    next.addEventListener("click", () => { page++; draw(); });
    pager.append(prev, next);
  }
  for (const th of document.querySelectorAll("#table th[data-sort]")) {
    th.addEventListener("click", () => {
      sortDir = sortKey === th.dataset.sort ? -sortDir : 1;
      sortKey = th.dataset.sort;
      refresh();
    });
  }
  for (const id of ["filter-text", "filter-verdict", "filter-variant"]) document.getElementById(id).addEventListener("input", () => { page = 0; refresh(); });
  refresh();

  // ---- Which ladder: the address's #conn=ID, else the first row.
  function fromHash() {
    const m = /conn=(\d+)/.exec(location.hash);
    if (m) showLadder(Number(m[1]));
    else if (view.length) showLadder(view[0].id);
  }
  window.addEventListener("hashchange", fromHash);
  fromHash();
  document.body.dataset.readyMs = performance.now().toFixed(0);
  document.body.dataset.ready = "1";
})();
