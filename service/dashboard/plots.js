// Canvas plots of the dashboard: the loss curve (log axis, scan-end mark), the scan map (probe positions in
// metres, the newest frame ringed) and the frame map (one cell per frame index: received, missing, rejected).
"use strict";

const COLOURS = { axis: "#8b949e", grid: "#30363d", line: "#58a6ff", mark: "#d29922", text: "#c9d1d9" };
export const CELL_COLOURS = { r: "#3fb950", m: "#d29922", x: "#f85149", ".": "#30363d" };

/** The canvas's 2D context, its backing store sized to its CSS box at the screen's pixel ratio. */
function context(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const font = parseFloat(getComputedStyle(canvas).fontSize) || 14;
  g.font = `${font}px system-ui, sans-serif`;
  return { g, w, h, font };
}

/** Ticks within [lo, hi]: the 1, 2 or 5 x 10^k step giving closest to ``count`` of them (as workers/images.py). */
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const within = (step) => {
    const out = [];
    for (let k = Math.ceil(lo / step - 1e-9); k <= Math.floor(hi / step + 1e-9); k++) out.push(k * step);
    return out;
  };
  const e = Math.floor(Math.log10((hi - lo) / count));
  const steps = [e - 1, e, e + 1].flatMap((k) => [1, 2, 5].map((f) => f * 10 ** k));
  const miss = (step) => Math.abs(within(step).length - count);
  return within(steps.reduce((best, step) => (miss(step) < miss(best) ? step : best)));
}

function label(value, step) {
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return decimals <= 4 && Math.abs(value) < 1e5 ? value.toFixed(decimals) : value.toPrecision(3);
}

/** Draw axes for the box [x0, x1] x [y0, y1] in data units; returns the mapping to canvas pixels. */
function axes(ctx, box, pad, xTicks, yTicks, yLabel, xTitle, yDown = false) {
  const { g, w, h } = ctx;
  const left = pad.left, right = w - pad.right, top = pad.top, bottom = h - pad.bottom;
  const X = (x) => left + ((x - box.x0) / (box.x1 - box.x0 || 1)) * (right - left);
  const up = (y) => ((y - box.y0) / (box.y1 - box.y0 || 1)) * (bottom - top);
  const Y = yDown ? (y) => top + up(y) : (y) => bottom - up(y);
  g.strokeStyle = COLOURS.grid; g.fillStyle = COLOURS.axis; g.lineWidth = 1;
  g.textAlign = "right"; g.textBaseline = "middle";
  const labelled = [];  // ticks come most important first; a label closer than a line height to one drawn is left out
  for (const y of yTicks) {
    g.beginPath(); g.moveTo(left, Y(y)); g.lineTo(right, Y(y)); g.stroke();
    if (labelled.some((at) => Math.abs(Y(y) - at) < ctx.font * 1.3)) continue;
    g.fillText(yLabel(y), left - 6, Y(y));
    labelled.push(Y(y));
  }
  g.textAlign = "center"; g.textBaseline = "top";
  const xStep = xTicks.length > 1 ? xTicks[1] - xTicks[0] : 1;
  for (const x of xTicks) {
    g.beginPath(); g.moveTo(X(x), bottom); g.lineTo(X(x), bottom + 4); g.stroke();
    g.fillText(label(x, xStep), X(x), bottom + 6);
  }
  g.strokeStyle = COLOURS.axis; g.strokeRect(left, top, right - left, bottom - top);
  g.textAlign = "right"; g.textBaseline = "bottom";
  g.fillText(xTitle, right, h - 2);
  return { X, Y, left, right, top, bottom };
}

/** Ticks (log10 values) of a log axis over [lo, hi] (log10): decades, or 1-2-5 or every digit when it spans little;
 *  decades first, then 2 and 5, then the other digits (the order labels are given room in). */
function logTicks(lo, hi) {
  const ranked = [[1], [2, 5], [3, 4, 6, 7, 8, 9]];
  for (let n = 1; n <= ranked.length; n++) {
    const out = [];
    for (const digits of ranked.slice(0, n)) {
      for (const f of digits) {
        for (let d = Math.floor(lo); d <= Math.ceil(hi); d++) {
          const t = d + Math.log10(f);
          if (t >= lo && t <= hi) out.push(t);
        }
      }
    }
    if (out.length >= 3 || n === ranked.length) return out;
  }
  return [];
}

/** The loss per epoch on a log axis; ``scanEnd`` (an epoch, or null) is marked with a dashed line. */
export function drawLoss(canvas, losses, scanEnd, streaming) {
  const ctx = context(canvas), { g, font } = ctx;
  const points = losses.map((v, i) => [i + 1, v]).filter(([, v]) => v > 0 && Number.isFinite(v));
  if (points.length < 1) {
    g.fillStyle = COLOURS.axis; g.textAlign = "center"; g.textBaseline = "middle";
    g.fillText("the loss appears after the first epoch", ctx.w / 2, ctx.h / 2);
    return 0;
  }
  const logs = points.map(([, v]) => Math.log10(v));
  let lo = Math.min(...logs), hi = Math.max(...logs);
  if (hi - lo < 0.05) { lo -= 0.05; hi += 0.05; }
  const yTicks = logTicks(lo, hi);
  const yLabel = (t) => (hi - lo >= 3 ? `1e${Math.round(t)}` : +(10 ** t).toPrecision(2));
  const xMax = Math.max(points[points.length - 1][0], 2);
  const box = { x0: 1, x1: xMax, y0: lo - 0.03 * (hi - lo), y1: hi + 0.03 * (hi - lo) };
  const pad = { left: font * 4, right: font, top: font * 0.8, bottom: font * 2.6 };
  const a = axes(ctx, box, pad, ticks(1, xMax, 6).filter((t) => Number.isInteger(t)), yTicks, yLabel, "epoch");
  if (scanEnd !== null && scanEnd >= 1) {
    g.strokeStyle = COLOURS.mark; g.setLineDash([6, 4]); g.lineWidth = 2;
    g.beginPath(); g.moveTo(a.X(scanEnd), a.top); g.lineTo(a.X(scanEnd), a.bottom); g.stroke(); g.setLineDash([]);
    g.fillStyle = COLOURS.mark; g.textAlign = "left"; g.textBaseline = "top";
    g.fillText("scan end", Math.min(a.X(scanEnd) + 4, a.right - font * 5), a.top + 2);
  } else if (streaming) {
    g.fillStyle = COLOURS.mark; g.textAlign = "right"; g.textBaseline = "top";
    g.fillText("scan in progress", a.right - 4, a.top + 2);
  }
  g.strokeStyle = COLOURS.line; g.lineWidth = 2; g.beginPath();
  points.forEach(([x], i) => { const px = a.X(x), py = a.Y(logs[i]); i ? g.lineTo(px, py) : g.moveTo(px, py); });
  g.stroke();
  if (points.length === 1) { g.fillStyle = COLOURS.line; g.fillRect(a.X(points[0][0]) - 2, a.Y(logs[0]) - 2, 4, 4); }
  return points.length;
}

/** Metres as a value in the unit that suits ``span`` (nm, µm, mm). */
export function unitFor(span) {
  return span < 2e-6 ? ["nm", 1e-9] : span < 2e-3 ? ["µm", 1e-6] : ["mm", 1e-3];
}

/** Probe positions (flat row, col list in image pixels) as a map in metres; the newest one ringed if ``live``
 *  (a stream's). Returns how many points were drawn. */
export function drawScanMap(canvas, positions, live) {
  const ctx = context(canvas), { g, font } = ctx;
  const pts = positions ? positions.points : [];
  const n = pts.length / 2;
  if (!n) {
    g.fillStyle = COLOURS.axis; g.textAlign = "center"; g.textBaseline = "middle";
    g.fillText("positions appear with the first preview", ctx.w / 2, ctx.h / 2);
    return 0;
  }
  const px = positions.pixel_size_m || 0;
  const [unit, factor] = px > 0 ? unitFor(px * Math.max(positions.width, positions.height)) : ["px", 1];
  const s = px > 0 ? px / factor : 1;
  const box = { x0: 0, x1: positions.width * s, y0: 0, y1: positions.height * s };
  const pad = { left: font * 3.5, right: font, top: font * 0.8, bottom: font * 2.6 };
  // equal aspect: widen the shorter side of the box to the plot area's shape
  const aw = ctx.w - pad.left - pad.right, ah = ctx.h - pad.top - pad.bottom;
  const scale = Math.max((box.x1 - box.x0) / aw, (box.y1 - box.y0) / ah);
  box.x1 = box.x0 + scale * aw; box.y1 = box.y0 + scale * ah;
  const yTicks = ticks(box.y0, box.y1, 4), yStep = yTicks.length > 1 ? yTicks[1] - yTicks[0] : 1;
  const a = axes(ctx, box, pad, ticks(box.x0, box.x1, 5), yTicks, (v) => label(v, yStep), `x → , y ↓ [${unit}]`, true);
  const Y = (row) => a.Y(row * s);  // y down, as in the images
  g.fillStyle = COLOURS.line;
  const r = Math.max(1.5, Math.min(4, 600 / Math.sqrt(n + 1) / 10));
  for (let i = 0; i < n; i++) g.fillRect(a.X(pts[2 * i + 1] * s) - r / 2, Y(pts[2 * i]) - r / 2, r, r);
  if (live) {
    g.strokeStyle = COLOURS.mark; g.lineWidth = 2; g.beginPath();
    g.arc(a.X(pts[2 * n - 1] * s), Y(pts[2 * n - 2]), r + 4, 0, 2 * Math.PI); g.stroke();
  }
  return n;
}

/** The frame map: ``frames.cells`` as a grid of coloured cells (one per ``per_cell`` indices), the newest frame
 *  outlined. Returns the number of cells. */
export function drawFrameMap(canvas, frames) {
  const ctx = context(canvas), { g, w, h } = ctx;
  const cells = frames ? frames.cells : "";
  if (!cells.length) return 0;
  const cols = Math.max(1, Math.ceil(Math.sqrt((cells.length * w) / h)));
  const rows = Math.ceil(cells.length / cols);
  const size = Math.min(w / cols, h / rows), gap = size > 5 ? 1 : 0;
  for (let i = 0; i < cells.length; i++) {
    g.fillStyle = CELL_COLOURS[cells[i]] || CELL_COLOURS["."];
    g.fillRect((i % cols) * size, Math.floor(i / cols) * size, size - gap, size - gap);
  }
  if (frames.newest !== null) {
    const i = Math.floor(frames.newest / frames.per_cell);
    g.strokeStyle = "#ffffff"; g.lineWidth = 2;
    g.strokeRect((i % cols) * size - 1, Math.floor(i / cols) * size - 1, size + 1, size + 1);
  }
  return cells.length;
}
