// The prune dashboard: the jobs page (/) and a job's page (/jobs/ID), drawn from the JSON API
// under /api/. No libraries; charts are hand-written SVG.
"use strict";

const TOKEN_KEY = "prune-token";
const POLL_MS = 1000;
const COLORS = ["#1f6fb2", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#0b7285", "#5c940d", "#862e9c"];
const main = document.getElementById("main");
let timer = null;

// A token in the fragment (/jobs/ID#token=T) is kept for this tab and taken out of the address
// bar; fragments never reach the server.
(function takeToken() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

class ApiError extends Error {
  constructor(status, body) { super(body.error || ("HTTP " + status)); this.status = status; this.code = body.code; }
}

async function api(path, options) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  const res = await fetch(path, Object.assign({ headers }, options || {}));
  if (!res.ok) {
    let body = {};
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    throw new ApiError(res.status, body);
  }
  return res;
}
async function json(path, options) { return (await api(path, options)).json(); }

function showWho() {
  const who = document.getElementById("who");
  who.innerHTML = token() ? 'token set <button id="forget">forget token</button>' : "";
  const b = document.getElementById("forget");
  if (b) b.onclick = () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); };
}

// 401: no job data, a form for the token instead.
function askToken(message) {
  stop();
  main.innerHTML = `<h1>Sign in</h1><p class="error">${esc(message)}</p>
    <form class="token" id="token-form"><p>This server needs a bearer token (the one <code>prunectl</code> uses).
    It is kept in this tab only (sessionStorage).</p>
    <input type="password" id="token-input" placeholder="token" autocomplete="off"> <button>Use token</button></form>`;
  document.getElementById("token-form").onsubmit = (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value.trim());
    route();
  };
}

function failed(e) {
  if (e instanceof ApiError && e.status === 401) return askToken(e.message);
  stop();
  main.innerHTML = `<p class="error">${esc(e.message)}</p><p><a href="/">all jobs</a></p>`;
}

function stop() { if (timer) { clearTimeout(timer); timer = null; } }
function poll(fn) { stop(); timer = setTimeout(fn, POLL_MS); }

const fmt = {
  pct: (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%"),
  num: (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d === undefined ? 4 : d)),
  bytes: (n) => {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  },
  secs: (s) => {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  },
  age: (ms) => (ms ? fmt.secs((Date.now() - ms) / 1000) + " ago" : "–"),
};

function meanSparsity(job) {
  const s = job.sparsity || [];
  return s.length ? s.reduce((a, t) => a + t.sparsity, 0) / s.length : null;
}
function stateBadge(state) { return `<span class="state ${esc(state)}">${esc(state)}</span>`; }
function labels(job) {
  return Object.entries(job.labels || {}).map(([k, v]) => `<span class="label">${esc(k)}=${esc(v)}</span>`).join("");
}
// A tracked run reports from a loop outside the service (docs/python.md).
function kindBadge(job) { return job.kind === "TRACKED" ? ' <span class="label">tracked</span>' : ""; }
function terminal(state) { return ["SUCCEEDED", "FAILED", "CANCELLED"].includes(state); }

// ---- the jobs page ----

const STATES = ["ALL", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];

function jobsPage() {
  const params = new URLSearchParams(location.search);
  const state = STATES.includes(params.get("state")) ? params.get("state") : "ALL";
  main.innerHTML = `<h1>Jobs</h1><p>State: <select id="state">${STATES.map((s) =>
    `<option${s === state ? " selected" : ""}>${s}</option>`).join("")}</select></p><div id="jobs"></div>`;
  document.getElementById("state").onchange = (ev) => {
    const s = ev.target.value;
    history.replaceState(null, "", s === "ALL" ? "/" : "/?state=" + s);
    jobsPage();
  };
  const refresh = async () => {
    try {
      const data = await json("/api/jobs?state=" + state);
      renderJobs(data.jobs);
      showWho();
      poll(refresh);
    } catch (e) { failed(e); }
  };
  refresh();
}

function renderJobs(jobs) {
  const el = document.getElementById("jobs");
  if (!el) return;
  if (!jobs.length) { el.innerHTML = '<p class="muted">No jobs.</p>'; return; }
  el.innerHTML = `<table id="jobs-table"><tr><th>job</th><th>name</th><th>state</th><th>progress</th>
    <th>sparsity</th><th>accuracy</th><th>age</th><th>labels</th></tr>${jobs.map((j) => `<tr>
    <td><a href="/jobs/${encodeURIComponent(j.id)}">${esc(j.id)}</a></td><td>${esc(j.name)}${kindBadge(j)}</td>
    <td>${stateBadge(j.state)}</td><td class="num">${j.step}/${j.total_steps || "?"}</td>
    <td class="num">${fmt.pct(meanSparsity(j))}</td><td class="num">${fmt.pct(j.accuracy)}</td>
    <td>${fmt.age(j.created_unix_ms)}</td><td>${labels(j)}</td></tr>`).join("")}</table>`;
}

// ---- the schedule's target sparsity ----

// The sparsity the schedule has applied at each update step up to maxStep, as [[step, s], ...]
// (docs/pruning-semantics.md: masks change only at begin + k*frequency, never at step 0).
function targetSteps(schedule, maxStep) {
  if (!schedule || !schedule.kind) return [];
  const poly = schedule.kind === "polynomial_decay";
  const begin = schedule.begin_step ?? 0;
  const end = schedule.end_step ?? -1;
  const freq = Math.max(1, schedule.frequency ?? 100);
  const power = schedule.power ?? 3;
  const at = (u) => {
    if (!poly) return schedule.target_sparsity ?? 0;
    const p = Math.min(1, Math.max(0, (u - begin) / (end - begin)));
    const initial = schedule.initial_sparsity ?? 0, final = schedule.final_sparsity ?? 0;
    return final + (initial - final) * Math.pow(1 - p, power);
  };
  const out = [];
  for (let u = begin; u <= maxStep && (end < 0 || u <= end) && out.length < 5000; u += freq) {
    if (u >= 1) out.push([u, at(u)]);
  }
  return out;
}

// ---- SVG charts ----

const W = 420, H = 220, PAD = { l: 48, r: 12, t: 12, b: 28 };

// series: {name, color, points: [[x, y]], kind: "line" | "dots" | "steps"}
function chart(title, series, opts) {
  opts = opts || {};
  const all = series.flatMap((s) => s.points);
  if (!all.length) return `<div class="chart"><div class="title">${esc(title)}</div><p class="muted">no data yet</p></div>`;
  let x0 = 0, x1 = Math.max(1, opts.xmax || 0, ...all.map((p) => p[0]));
  let y0 = opts.ymin ?? Math.min(...all.map((p) => p[1]));
  let y1 = opts.ymax ?? Math.max(...all.map((p) => p[1]));
  if (y1 - y0 < 1e-9) { y1 += 0.5; y0 -= 0.5; }
  // A fraction (accuracy, sparsity) is drawn within 0-100%, never past it.
  if (opts.pct) {
    y0 = Math.max(0, y0); y1 = Math.min(1, y1);
    if (y1 - y0 < 1e-9) { if (y1 >= 0.01) y0 = y1 - 0.01; else y1 = y0 + 0.01; }
  }
  const sx = (x) => PAD.l + ((x - x0) / (x1 - x0)) * (W - PAD.l - PAD.r);
  const sy = (y) => H - PAD.b - ((y - y0) / (y1 - y0)) * (H - PAD.t - PAD.b);
  const f = (v) => v.toFixed(1);
  let svg = `<svg width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" class="plot">`;
  svg += `<rect x="${PAD.l}" y="${PAD.t}" width="${W - PAD.l - PAD.r}" height="${H - PAD.t - PAD.b}" fill="#fff" stroke="#d0d5dd"/>`;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4, x = x0 + ((x1 - x0) * i) / 4;
    svg += `<line x1="${PAD.l}" x2="${W - PAD.r}" y1="${f(sy(y))}" y2="${f(sy(y))}" stroke="#eef0f3"/>`;
    svg += `<text x="${PAD.l - 4}" y="${f(sy(y) + 4)}" font-size="10" text-anchor="end" fill="#6b7280">${esc(opts.pct ? (100 * y).toFixed(0) + "%" : y.toPrecision(3))}</text>`;
    svg += `<text x="${f(sx(x))}" y="${H - PAD.b + 14}" font-size="10" text-anchor="middle" fill="#6b7280">${Math.round(x)}</text>`;
  }
  svg += `<text x="${W - PAD.r}" y="${H - 2}" font-size="10" text-anchor="end" fill="#6b7280">step</text>`;
  for (const s of series) {
    if (!s.points.length) continue;
    if (s.kind === "dots") {
      for (const [x, y] of s.points) svg += `<circle cx="${f(sx(x))}" cy="${f(sy(y))}" r="2.5" fill="${s.color}"/>`;
    } else if (s.kind === "steps") {
      let d = `M${f(sx(0))},${f(sy(0))}`;
      for (const [x, y] of s.points) d += `H${f(sx(x))}V${f(sy(y))}`;
      d += `H${f(sx(x1))}`;
      svg += `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.5" stroke-dasharray="5,3"/>`;
    } else {
      const d = s.points.map(([x, y], i) => (i ? "L" : "M") + f(sx(x)) + "," + f(sy(y))).join("");
      svg += `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.5"/>`;
    }
  }
  svg += "</svg>";
  const legend = series.map((s) => `<span><svg width="14" height="8"><line x1="0" x2="14" y1="4" y2="4" stroke="${s.color}" stroke-width="3"/></svg> ${esc(s.name)}</span>`).join("");
  return `<div class="chart"><div class="title">${esc(title)}</div>${svg}<div class="legend">${legend}</div></div>`;
}

function charts(job, points) {
  const by = new Map();
  for (const p of points) {
    if (!by.has(p.name)) by.set(p.name, []);
    by.get(p.name).push([p.step, p.value]);
  }
  const maxStep = Math.max(job.total_steps || 0, ...points.map((p) => p.step), 1);
  const line = (name, i) => ({ name, color: COLORS[i % COLORS.length], points: by.get(name) || [], kind: "line" });
  let html = '<div class="charts" id="charts">';
  html += chart("loss", [line("loss", 0), line("val_loss", 1)].filter((s) => s.points.length), { xmax: maxStep });
  html += chart("accuracy", [line("accuracy", 0), line("val_accuracy", 1)].filter((s) => s.points.length),
    { xmax: maxStep, pct: true });
  const schedule = job.spec && job.spec.pruning ? job.spec.pruning.schedule : null;
  const target = targetSteps(schedule, maxStep);
  [...by.keys()].filter((n) => n.startsWith("sparsity/")).sort().forEach((name) => {
    // The target first: the measured dots are drawn over its line.
    const series = target.length ? [{ name: "schedule target", color: COLORS[1], points: target, kind: "steps" }] : [];
    series.push({ name: "measured", color: COLORS[0], points: by.get(name), kind: "dots" });
    html += chart(name.slice("sparsity/".length) + " sparsity", series, { xmax: maxStep, ymin: 0, ymax: 1, pct: true });
  });
  return html + "</div>";
}

// ---- a job's page ----

function jobPage(id) {
  let report = null, reportTried = false;
  const refresh = async () => {
    try {
      const [job, metrics] = await Promise.all([
        json("/api/jobs/" + encodeURIComponent(id)),
        json("/api/jobs/" + encodeURIComponent(id) + "/metrics"),
      ]);
      if (job.state === "SUCCEEDED" && !reportTried) {
        reportTried = true;
        report = await json("/api/jobs/" + encodeURIComponent(id) + "/report");
      }
      renderJob(job, metrics.points, report);
      showWho();
      if (!terminal(job.state)) poll(refresh); else stop();
    } catch (e) { failed(e); }
  };
  refresh();
}

function renderJob(job, points, report) {
  const attempts = (job.attempt_history || []).map((a) =>
    `<tr><td class="num">${a.number}</td><td>${esc(a.node)}</td><td>${esc(a.outcome || "running")}</td>
     <td class="num">${a.resumed_step ?? "–"}</td><td>${esc(a.error || "")}</td></tr>`).join("");
  let html = `<h1>${esc(job.name || "job")} <code id="job-id">${esc(job.id)}</code> <span id="job-state">${stateBadge(job.state)}</span></h1>
  <dl class="facts">
    <dt>progress</dt><dd id="job-step">step ${job.step} of ${job.total_steps || "?"} (epoch ${job.epoch})</dd>
    <dt>ETA</dt><dd>${terminal(job.state) ? "–" : fmt.secs(job.eta_seconds)}</dd>
    <dt>sparsity (mean)</dt><dd>${fmt.pct(meanSparsity(job))}</dd>
    <dt>loss / accuracy</dt><dd>${fmt.num(job.loss)} / ${fmt.pct(job.accuracy)}</dd>
    <dt>created</dt><dd>${fmt.age(job.created_unix_ms)}</dd>
    <dt>node</dt><dd>${esc(job.node || "–")}</dd>
    ${job.kind === "TRACKED" ? `<dt>tracked run</dt><dd id="job-client">reported by ${esc(job.client || "?")}${
      job.reported_unix_ms > 0 ? ", last " + fmt.age(job.reported_unix_ms) : ""}</dd>` : ""}
    <dt>attempts</dt><dd>${job.attempts} of ${job.max_attempts}</dd>
    <dt>labels</dt><dd>${labels(job) || "–"}</dd>
  </dl>`;
  if (job.error) html += `<p class="error">${esc(job.error)}</p>`;
  if (!terminal(job.state)) html += '<p><button id="cancel">Cancel job</button></p>';
  if (attempts) {
    html += `<h2>Attempts</h2><table><tr><th>#</th><th>node</th><th>outcome</th><th>resumed at step</th><th>error</th></tr>${attempts}</table>`;
  }
  html += "<h2>Training</h2>" + charts(job, points);
  if (report) {
    html += `<h2>Tensors</h2><table id="report"><tr><th>tensor</th><th>shape</th><th>pruned</th><th>nonzero / numel</th><th>sparsity</th></tr>
      ${report.tensors.map((t) => `<tr><td>${esc(t.name)}</td><td>[${t.shape.join(", ")}]</td><td>${t.pruned ? "yes" : "no"}</td>
      <td class="num">${t.nonzero} / ${t.numel}</td><td class="num">${fmt.pct(t.sparsity)}</td></tr>`).join("")}</table>`;
    const sizes = [["dense (safetensors)", report.dense_bytes], ["dense, gzip", report.gzip_dense_bytes]]
      .concat(Object.entries(report.artifact_bytes || {}).sort());
    const max = Math.max(...sizes.map((s) => s[1]), 1);
    html += `<h2>Sizes</h2><table id="sizes"><tr><th>file</th><th>bytes</th><th></th><th>vs dense</th></tr>${sizes.map(([n, b]) =>
      `<tr><td>${esc(n)}</td><td class="num">${fmt.bytes(b)}</td><td><svg width="200" height="10"><rect width="${(200 * b / max).toFixed(1)}" height="10" fill="#7a9cc6"/></svg></td>
      <td class="num">${report.dense_bytes ? (100 * b / report.dense_bytes).toFixed(1) + "%" : "–"}</td></tr>`).join("")}</table>`;
  }
  if (job.state === "SUCCEEDED" && (job.artifacts || []).length) {
    // One button per format: an export of several files (a sharded checkpoint) is served as
    // one tar archive of them all.
    const byFormat = {};
    for (const a of job.artifacts) (byFormat[a.format] = byFormat[a.format] || []).push(a);
    html += `<h2>Artifacts</h2><p id="artifacts">${Object.entries(byFormat).map(([format, files]) => {
      const total = files.reduce((n, a) => n + a.size, 0);
      const name = files.length === 1 ? files[0].file_name : `${job.id}-${format}.tar`;
      const what = files.length === 1 ? fmt.bytes(total) : `${files.length} files as one tar, ${fmt.bytes(total)}`;
      return `<button data-format="${esc(format)}" data-name="${esc(name)}">Download ${esc(format)} (${what})</button> `;
    }).join("")}</p>`;
    // The files are served as stored: compressed and, for bitmask, packed.
    const stored = job.artifacts.filter((a) => a.compression && a.compression !== "none" || a.sparse_format === "bitmask");
    if (stored.length) {
      const a = stored[0];
      const how = [a.compression && a.compression !== "none" ? `${a.compression}-compressed` : "", a.sparse_format === "bitmask" ? "bitmask-packed" : ""]
        .filter(Boolean).join(" and ");
      html += `<p class="muted" id="artifact-note">Downloads are the files as stored (${esc(how)}): <code>prunectl download ${esc(job.id)} -o FILE</code> decompresses, <code>prunectl unpack</code> restores dense weights.</p>`;
    }
  }
  main.innerHTML = html;
  const cancel = document.getElementById("cancel");
  if (cancel) {
    cancel.onclick = async () => {
      if (!confirm("Cancel job " + job.id + "?")) return;
      try { await api("/api/jobs/" + encodeURIComponent(job.id) + "/cancel", { method: "POST" }); jobPage(job.id); } catch (e) { failed(e); }
    };
  }
  for (const b of document.querySelectorAll("#artifacts button")) {
    b.onclick = () => download(job.id, b.dataset.format, b.dataset.name);
  }
}

// Downloads go through fetch (they need the Authorization header), then a blob link.
async function download(id, format, name) {
  try {
    const res = await api("/api/jobs/" + encodeURIComponent(id) + "/artifacts/" + encodeURIComponent(format));
    const url = URL.createObjectURL(await res.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = name || (id + "." + format);
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { failed(e); }
}

function route() {
  showWho();
  const m = /^\/jobs\/([^/]+)\/?$/.exec(location.pathname);
  if (m) return jobPage(decodeURIComponent(m[1]));
  return jobsPage();
}

route();
