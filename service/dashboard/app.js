// PtychoStream operator dashboard: polls the job list and health, follows one job over SSE.
// Where reads need a token, it asks for one once and trades it for an HttpOnly session cookie
// (POST /api/session), which the browser then sends with every fetch, image and event stream.
"use strict";

const $ = (id) => document.getElementById(id);
let selected = null;   // job id shown on the right
let pinned = false;    // true once the operator clicked a job
let source = null;     // EventSource of the selected job
let losses = [];

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function fmt(x, digits = 4) {
  return x === null || x === undefined || x === "" ? "—" : Number(x).toPrecision(digits);
}

class SignInNeeded extends Error {}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store", signal: AbortSignal.timeout(10000) });
  if (r.status === 401) throw new SignInNeeded(url);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

function askToSignIn() {
  $("login").hidden = false;
  if (source) { source.close(); source = null; }
  selected = null;
}

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const token = $("token").value;
  $("token").value = "";
  try {
    const r = await fetch("/api/session", { method: "POST", headers: { Authorization: `Bearer ${token}` } });
    if (!r.ok) throw new Error(r.status === 401 ? "wrong token" : `sign-in failed: ${r.status}`);
    $("login").hidden = true;
    $("login-error").textContent = "";
    poll();
  } catch (err) {
    $("login-error").textContent = err.message;
  }
});

function drawLoss() {
  const c = $("loss-curve"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const ys = losses.filter((v) => v > 0).map(Math.log10);
  if (ys.length < 2) return;
  const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1;
  g.strokeStyle = "#58a6ff"; g.lineWidth = 2; g.beginPath();
  ys.forEach((y, i) => {
    const px = 10 + (i / (ys.length - 1)) * (c.width - 20);
    const py = 10 + (1 - (y - lo) / span) * (c.height - 20);
    i ? g.lineTo(px, py) : g.moveTo(px, py);
  });
  g.stroke();
  g.fillStyle = "#8b949e"; g.font = "14px system-ui";
  g.fillText(`log10 loss: ${hi.toFixed(2)} … ${lo.toFixed(2)}`, 14, 20);
}

function showJob(job) {
  const p = job.progress;
  $("job-id").textContent = job.id;
  $("job-state").textContent = job.state;
  $("job-state").className = `state ${job.state}`;
  $("iteration").textContent = `${p.iteration} / ${p.total_iterations}`;
  $("loss").textContent = fmt(p.loss);
  $("frames").textContent = `${p.frames_received} / ${p.frames_expected ?? "?"}`;
  $("frames-used").textContent = p.frames_used;
  $("ingest").textContent = `${fmt(p.frames_rate, 3)} frames/s`;
  $("iter-rate").textContent = `${fmt(p.iteration_rate, 3)} it/s`;
  $("eta").textContent = p.eta_s === null || p.eta_s < 0 ? "—" : `${Math.round(p.eta_s)} s`;
  $("frames-bar").max = p.frames_expected || 1;
  $("frames-bar").value = p.frames_received;
  $("message").textContent = job.message;
  if (p.preview_iteration !== null) refreshImages(job.id, p.preview_iteration);
}

let shownPreview = null;
function refreshImages(id, iteration) {
  const key = `${id}:${iteration}`;
  if (key === shownPreview) return;
  shownPreview = key;
  for (const kind of ["amplitude", "phase", "probe"]) {
    $(`img-${kind}`).src = `/api/jobs/${id}/preview/${kind}.png?i=${iteration}`;
  }
}

async function follow(id) {
  if (source) source.close();
  selected = id;
  losses = await getJSON(`/api/jobs/${id}/loss`);
  drawLoss();
  showJob(await getJSON(`/api/jobs/${id}`));
  source = new EventSource(`/api/jobs/${id}/events`);
  source.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    if (d.loss !== undefined) { losses.push(d.loss); drawLoss(); }
  });
  source.addEventListener("preview", (e) => refreshImages(id, JSON.parse(e.data).iteration));
  source.onerror = () => { source.close(); source = null; };
}

async function poll() {
  try {
    const health = await getJSON("/api/health");
    $("health").textContent = `redis ${health.redis ? "ok" : "down"} · queue ${health.queue_depth} · workers ${health.workers.length}`;
    $("health").className = `health ${health.status === "ok" ? "ok" : "bad"}`;
    $("workers").innerHTML = health.workers
      .map((w) => `<li>${esc(w.name)} — ${esc(w.device)}${w.job ? ` — job ${esc(w.job)}` : " — idle"}</li>`).join("");
    const jobs = (await getJSON("/api/jobs?limit=50")).data;
    $("jobs").innerHTML = jobs.map((j) =>
      `<tr data-id="${esc(j.id)}" class="${j.id === selected ? "selected" : ""}"><td>${esc(j.id)}</td>` +
      `<td class="state ${esc(j.state)}">${esc(j.state)}</td><td>${j.progress.iteration}</td>` +
      `<td>${fmt(j.progress.loss, 3)}</td></tr>`
    ).join("");
    const running = jobs.find((j) => j.state === "running");
    const target = pinned ? selected : (running || jobs[0] || {}).id;
    if (target && target !== selected) await follow(target);
    const current = jobs.find((j) => j.id === selected);
    if (current) showJob(current);
  } catch (err) {
    if (err instanceof SignInNeeded) { askToSignIn(); return; }
    $("health").textContent = `API unreachable: ${err.message}`;
    $("health").className = "health bad";
  }
}

$("jobs").addEventListener("click", (e) => {
  const row = e.target.closest("tr");
  if (row) { pinned = true; follow(row.dataset.id); }
});
// The next poll starts a second after the last one ended: a slow server never piles up requests.
(async function loop() {
  await poll();
  setTimeout(loop, 1000);
})();
