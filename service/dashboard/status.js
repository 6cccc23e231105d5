// What the dashboard says in words: the job's phase (startup included), its ETA in both phases of a stream,
// and the frame accounting with reasons.
"use strict";

/** Seconds as "42 s", "3 min 5 s" or "1 h 2 min". */
export function duration(s) {
  if (s === null || s === undefined || s < 0 || !Number.isFinite(s)) return "unknown";
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

const isStream = (job) => "stream" in job.request.input;

/** One line on what is happening now, from the first second on (no job, no worker yet, Prefect starting,
 *  waiting for the detector, frames arriving, reconstructing, refining, ended). */
export function phase(job, health, view, log) {
  if (!job) return "No job yet: submit a file job (left) or start a stream.";
  const p = job.progress, workers = health ? health.workers.length : 0;
  const last = log ? ` Last: ${log.replace(/^\S+ /, "")}` : "";
  switch (job.state) {
    case "queued":
      return workers
        ? `Queued (${health.queue_depth} in the queue): waiting for a free worker.`
        : "Queued: no worker is alive yet. A worker starting up (serve starts one) connects within a minute.";
    case "succeeded":
      return `Finished: ${job.message}`;
    case "failed":
      return `FAILED: ${job.message}`;
    case "cancelled":
      return `Cancelled: ${job.message}`;
  }
  if (isStream(job) && !job.listening) {
    return `Starting the reconstruction on ${job.worker || "a worker"} (a worker's first job also starts Prefect's local server: up to a minute on a busy machine).${last}`;
  }
  if (!isStream(job) && p.iteration === 0) {
    return `Starting the reconstruction on ${job.worker || "a worker"}: loading the scan (a worker's first job also starts Prefect's local server).${last}`;
  }
  if (isStream(job) && p.streaming !== false && p.frames_received === 0) {
    return `Waiting for the detector: listening on ${job.listening}; no frame received yet.`;
  }
  if (isStream(job) && p.iteration === 0) {
    return `${p.frames_received} frames received (${p.frames_rate} /s); the reconstruction starts after the first frames are buffered.`;
  }
  if (p.streaming) {
    const of = p.frames_expected ? ` of ${p.frames_expected}` : "";
    return `Streaming: ${p.frames_received}${of} frames received, reconstructing live (epoch ${p.iteration}).`;
  }
  return `${isStream(job) ? "Scan complete; refining" : "Reconstructing"}: epoch ${p.iteration} of ${p.total_iterations}.`;
}

/** The ETA: total and, while streaming, its two parts (the scan left, then the epochs after it). */
export function etaText(job, view) {
  const p = job.progress;
  if (["succeeded", "failed", "cancelled"].includes(job.state)) return { total: "ended", detail: "" };
  if (job.state === "queued") return { total: "queued", detail: "" };
  if (p.streaming) {
    const scan = view?.eta_scan_s;
    const detail = scan === null || scan === undefined
      ? "scan length or frame rate not known yet"
      : `scan ${duration(scan)}, then ${p.total_iterations - p.iteration} epochs`;
    return { total: p.eta_s === null ? "unknown" : duration(p.eta_s), detail };
  }
  if (p.iteration === 0) return { total: "unknown", detail: "after the first epochs" };
  return { total: duration(p.eta_s), detail: `${p.total_iterations - p.iteration} epochs at ${p.iteration_rate.toPrecision(3)} /s` };
}

/** The frame accounting as rows (label, value, class): received, missing, rejected by reason, duplicates. */
export function accountingRows(job, view) {
  const f = view.frames;
  if (!f) {
    if (job && !isStream(job)) return [["source", "file"], ["frames", String(job.progress.frames_used || "loading")]];
    return [["frames", "none received yet"]];
  }
  const rejected = Object.values(f.rejected).reduce((a, b) => a + b, 0);
  const rows = [
    ["received", `${f.received}${f.expected ? ` of ${f.expected}` : ""}`],
    ["missing", `${f.missing}${f.ended ? "" : " so far"}`, f.missing ? "warn" : ""],
    ["rejected", String(rejected), rejected ? "bad" : ""],
  ];
  for (const [reason, n] of Object.entries(f.rejected)) rows.push([`· ${reason}`, String(n), "bad"]);
  rows.push(["duplicates", String(f.duplicates)]);
  const malformed = Object.entries(f.malformed);
  if (malformed.length) rows.push(["malformed", malformed.map(([k, n]) => `${k}: ${n}`).join(", "), "bad"]);
  rows.push(["scan", f.ended ? "ended" : "streaming"]);
  return rows;
}
