// PtychoStream operator dashboard: polls health, the job list and the followed job's view; follows its loss over
// SSE. Reads use an HttpOnly session cookie where they need a token (POST /api/session); writes (submit, cancel,
// clear) send the API token from this tab's sessionStorage in an Authorization header, never in a URL.
"use strict";

import { drawFrameMap, drawLoss, drawScanMap } from "./plots.js";
import { resizeScalebars, showChannels } from "./images.js";
import { phase, etaText, accountingRows } from "./status.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "ptychostream.token";
const ENDED = new Set(["succeeded", "failed", "cancelled"]);
const ui = { selected: null, pinned: false, source: null, losses: [], job: null, view: null, health: null, log: "" };

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function fmt(x, digits = 4) {
  return x === null || x === undefined || x === "" ? "—" : Number(x).toPrecision(digits);
}

class SignInNeeded extends Error {}

/** GET ``url`` as JSON; ``also`` lists error statuses whose body is still the answer (health's 503). */
async function getJSON(url, also = []) {
  const r = await fetch(url, { cache: "no-store", signal: AbortSignal.timeout(10000) });
  if (r.status === 401) throw new SignInNeeded(url);
  if (!r.ok && !also.includes(r.status)) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

/** A write call with this tab's API token; resolves to the reply's JSON or throws the server's one-line detail. */
async function write(method, url, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) throw new Error("enter the API token (top right) to do this");
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const reply = await r.json().catch(() => ({}));
  if (r.status === 401) throw new Error("this token cannot write: enter the API token");
  if (!r.ok) throw new Error(reply.detail || `${method} ${url}: ${r.status}`);
  return reply;
}

function showToken() {
  const held = sessionStorage.getItem(TOKEN_KEY) !== null;
  $("token-state").textContent = held ? "token held in this tab" : "read-only";
  $("token-form").hidden = held;
  $("token-forget").hidden = !held;
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("write-token-input").value.trim();
  $("write-token-input").value = "";
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  showToken();
});
$("token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showToken(); });

function askToSignIn() {
  $("login").hidden = false;
  $("status").textContent = "Sign in to see the jobs.";
  if (ui.source) { ui.source.close(); ui.source = null; }
  ui.selected = null;
}

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const token = $("token").value;
  $("token").value = "";
  try {
    const r = await fetch("/api/session", { method: "POST", headers: { Authorization: `Bearer ${token}` } });
    if (!r.ok) throw new Error(r.status === 401 ? "wrong token" : `sign-in failed: ${r.status}`);
    sessionStorage.setItem(TOKEN_KEY, token);  // writes say so if it is only the read token
    showToken();
    $("login").hidden = true;
    $("login-error").textContent = "";
    $("status").textContent = "Signed in: loading the jobs…";
    loadFiles();
    poll();
  } catch (err) {
    $("login-error").textContent = err.message;
  }
});

/** The epoch at which a stream job's scan ended (the schedule's epochs all come after it), or null. */
function scanEnd(job) {
  const p = job.progress;
  if (!("stream" in job.request.input) || p.streaming || p.iteration === 0) return null;
  const after = job.request.schedule.reduce((n, s) => n + (s.iterations || 0), 0);
  return Math.max(p.total_iterations - after, 0);
}

function redraw() {
  const job = ui.job;
  const end = job ? scanEnd(job) : null;
  $("loss-curve").dataset.points = drawLoss($("loss-curve"), ui.losses, end, job?.progress.streaming);
  $("loss-curve").dataset.scanEnd = end ?? "";
  $("scan-map").dataset.points = drawScanMap($("scan-map"), ui.view?.positions, Boolean(ui.view?.frames));
  $("frame-map").dataset.cells = drawFrameMap($("frame-map"), ui.view?.frames);
}

function showJob(job) {
  const p = job.progress, live = !ENDED.has(job.state);
  ui.job = job;
  $("job-id").textContent = job.id;
  $("job-state").textContent = job.state;
  $("job-state").className = `state ${job.state}`;
  $("job-engine").textContent = p.engine ? `${p.engine} (stage ${p.stage + 1})` : "";
  $("iteration").textContent = p.iteration ? `${p.iteration} / ${p.total_iterations}` : live ? "not yet" : "none";
  $("loss").textContent = p.loss === null ? (live ? "not yet" : "none") : fmt(p.loss);
  const stream = "stream" in job.request.input;
  $("frames").textContent = stream ? `${p.frames_received} / ${p.frames_expected ?? "?"}` : p.frames_used ? `${p.frames_used} (file)` : "file";
  $("frames-used").textContent = p.frames_used;
  const scanOver = !live || ui.view?.frames?.ended;
  $("ingest").textContent = !stream ? "file" : scanOver ? "scan ended" : p.frames_received ? `${fmt(p.frames_rate, 3)} /s` : "—";
  $("iter-rate").textContent = live && p.iteration_rate ? `${fmt(p.iteration_rate, 3)} /s` : "—";
  const eta = etaText(job, ui.view);
  $("eta").textContent = eta.total;
  $("eta-detail").textContent = eta.detail;
  $("message").textContent = job.message;
  $("cancel").disabled = !live;
  const result = job.state === "succeeded" || job.state === "cancelled" || /partial result/.test(job.message);
  $("download").classList.toggle("disabled", !result);
  $("download").setAttribute("aria-disabled", String(!result));
  if (result) { $("download").href = `/api/jobs/${job.id}/result`; $("download").download = `${job.id}.h5`; }
  else $("download").removeAttribute("href");
}

function showView(view) {
  ui.view = view;
  showChannels($("channels"), view.id, view.channels);
  const box = $("accounting");
  box.innerHTML = accountingRows(ui.job, view).map(([k, v, cls]) => `<dt>${esc(k)}</dt><dd class="${cls || ""}">${esc(v)}</dd>`).join("");
  const pos = view.positions;
  const ringed = view.frames ? ", newest ringed" : "";
  $("scan-caption").textContent = pos ? `scan map: ${pos.frames_used} positions used${ringed}` : "scan map";
  $("frame-map").hidden = $("frame-legend").hidden = !view.frames;
}

async function follow(id) {
  if (ui.source) ui.source.close();
  if (id !== ui.selected) $("control-result").textContent = "";
  ui.selected = id;
  ui.view = null;
  $("channels").replaceChildren();
  const losses = await getJSON(`/api/jobs/${id}/loss`), job = await getJSON(`/api/jobs/${id}`);
  if (ui.selected !== id) return;  // the operator picked another job meanwhile
  ui.losses = losses;
  showJob(job);
  redraw();
  ui.source = new EventSource(`/api/jobs/${id}/events`);
  ui.source.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    if (d.loss !== undefined && ui.selected === id) { ui.losses.push(d.loss); redraw(); }
  });
  ui.source.onerror = () => { ui.source.close(); ui.source = null; };
}

/** Refresh the followed job, its view, last log line and (once ended) its whole loss curve; whatever arrives
 *  after the operator picked another job is dropped. */
async function refreshSelected(jobs) {
  const id = ui.selected, current = () => ui.selected === id;
  const job = jobs.find((j) => j.id === id) || (await getJSON(`/api/jobs/${id}`));
  const live = !ENDED.has(job.state);
  const stale = live || !ui.view || ui.view.id !== id || ui.view.state !== job.state;
  const view = stale ? await getJSON(`/api/jobs/${id}/view`) : ui.view;
  if (!current()) return;
  ui.view = view;  // before showJob, which reads the scan's end from it
  showJob(job);
  if (stale) showView(view);
  const log = live ? (await getJSON(`/api/jobs/${id}/logs`)).lines.at(-1) || "" : "";
  const losses = !live && ui.losses.length < job.progress.iteration ? await getJSON(`/api/jobs/${id}/loss`) : null;
  if (!current()) return;
  ui.log = log;
  if (losses) ui.losses = losses;
  redraw();
}

function showJobs(jobs) {
  $("jobs").innerHTML = jobs.map((j) =>
    `<tr data-id="${esc(j.id)}" class="${j.id === ui.selected ? "selected" : ""}"><td class="id">${esc(j.id)}</td>` +
    `<td class="state ${esc(j.state)}">${esc(j.state)}</td><td>${j.progress.iteration}</td>` +
    `<td>${fmt(j.progress.loss, 3)}</td></tr>`
  ).join("");
  const filter = $("job-filter").value;
  $("jobs-note").textContent = `${jobs.length} ${filter || ""} job${jobs.length === 1 ? "" : "s"}`.replace("  ", " ");
}

async function poll() {
  try {
    const health = await getJSON("/api/health", [503]);
    ui.health = health;
    $("health").textContent = `redis ${health.redis ? "ok" : "down"} · queue ${health.queue_depth} · workers ${health.workers.length}`;
    $("health").className = `health ${health.status === "ok" ? "ok" : "bad"}`;
    $("workers").innerHTML = health.workers.length
      ? health.workers.map((w) => `<li>${esc(w.name)} — ${esc(w.device)}${w.job ? ` — job ${esc(w.job)}` : " — idle"}</li>`).join("")
      : "<li class=\"dim\">none alive yet</li>";
    const filter = $("job-filter").value;
    const jobs = (await getJSON(`/api/jobs?limit=100${filter ? `&state=${filter}` : ""}`)).data;
    showJobs(jobs);
    const running = jobs.find((j) => j.state === "running") || jobs.find((j) => j.state === "queued");
    const newest = (running || jobs[0] || {}).id;  // followed until the operator picks a job (checked now: a
    if (!ui.pinned && newest && newest !== ui.selected) await follow(newest);  // submit may have picked one)
    if (ui.selected) await refreshSelected(jobs);
    $("status").textContent = phase(ui.job && ui.selected ? ui.job : null, health, ui.view, ui.log);
    $("status").className = `status ${ui.job?.state || ""}`;
  } catch (err) {
    if (err instanceof SignInNeeded) { askToSignIn(); return; }
    $("health").textContent = `API unreachable: ${err.message}`;
    $("health").className = "health bad";
    $("status").textContent = "The API does not answer; retrying every second.";
  }
}

$("jobs").addEventListener("click", (e) => {
  const row = e.target.closest("tr");
  if (row) { ui.pinned = true; follow(row.dataset.id).then(poll); }
});
$("job-filter").addEventListener("change", poll);

$("cancel").addEventListener("click", async () => {
  try {
    const reply = await write("POST", `/api/jobs/${ui.selected}/cancel`);
    $("control-result").textContent = reply.detail;
    $("control-result").className = "dim";
  } catch (err) {
    $("control-result").textContent = `cancel: ${err.message}`;
    $("control-result").className = "bad";
  }
  poll();
});

$("clear-ended").addEventListener("click", async () => {
  const filter = $("job-filter").value, which = ENDED.has(filter) ? filter : "ended";
  if (!confirm(`Delete every ${which} job's record from the list? Their result files stay on disk.`)) return;
  try {
    const reply = await write("DELETE", `/api/jobs${ENDED.has(filter) ? `?state=${filter}` : ""}`);
    const busy = reply.finishing.length ? `; ${reply.finishing.length} still finishing, try again shortly` : "";
    $("clear-result").textContent = `· deleted ${reply.count} ended job${reply.count === 1 ? "" : "s"}${busy}`;
    if (reply.deleted.includes(ui.selected)) { ui.pinned = false; ui.selected = null; }
  } catch (err) { $("clear-result").textContent = `· clear: ${err.message}`; }
  poll();
});

/** The schedule field: comma-separated ``engine:epochs`` stages or transform names; empty: the default. */
function parseSchedule(text) {
  return text.split(",").map((s) => s.trim()).filter(Boolean).map((stage) => {
    const [name, epochs] = stage.split(":").map((s) => s.trim());
    if (epochs === undefined) return { transform: name };
    if (!/^\d+$/.test(epochs)) throw new Error(`schedule: "${stage}": epochs must be a whole number`);
    return { engine: name, iterations: Number(epochs) };
  });
}

async function loadFiles() {
  const select = $("submit-file"), kept = select.value;
  try {
    const { files, truncated } = await getJSON("/api/files");
    select.innerHTML = files.length
      ? files.map((f) => `<option value="${esc(f.path)}">${esc(f.path)} (${(f.size / 1e6).toFixed(1)} MB)</option>`).join("")
      : "<option value=\"\">(no scan files under the data root)</option>";
    if (truncated) select.insertAdjacentHTML("beforeend", "<option disabled>(more not listed)</option>");
    if (files.some((f) => f.path === kept)) select.value = kept;
  } catch (err) {
    if (!(err instanceof SignInNeeded)) select.innerHTML = `<option value="">(cannot list files: ${esc(err.message)})</option>`;
  }
}
$("submit-file").addEventListener("focus", loadFiles);

$("submit").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const body = { input: { file: $("submit-file").value }, device: $("submit-device").value, modes: Number($("submit-modes").value) };
    const schedule = parseSchedule($("submit-schedule").value);
    if (schedule.length) body.schedule = schedule;
    const { id } = await write("POST", "/api/jobs", body);
    $("submit-result").textContent = `queued job ${id}`;
    $("submit-result").className = "ok";
    ui.pinned = true;
    await follow(id);
  } catch (err) {
    $("submit-result").textContent = err.message;
    $("submit-result").className = "bad";
  }
  poll();
});

window.addEventListener("resize", () => { redraw(); resizeScalebars($("channels")); });
showToken();
loadFiles();
// The next poll starts a second after the last one ended: a slow server never piles up requests.
(async function loop() {
  await poll();
  setTimeout(loop, 1000);
})();
