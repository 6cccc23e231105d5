// The job's preview channels (whatever it publishes: object amplitude and phase, probe modes, far field, element
// maps...), each drawn with its colour bar (display range and colour map from the channel's description) and,
// where the pixel size is known, a scale bar in metres.
"use strict";

import { ticks, unitFor } from "./plots.js";

// workers/images.py's cyclic map (phase), light at -pi and pi, dark at 0
const CYCLIC = ["#e2d9e2", "#a0b4cd", "#5f78be", "#5a3c96", "#2f1236", "#7d2646", "#b45046", "#d2a08c", "#e2d9e2"];
const GRADIENTS = { grey: "linear-gradient(to top, #000, #fff)", cyclic: `linear-gradient(to top, ${CYCLIC.join(", ")})` };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function tickText(value, step) {
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return decimals <= 4 && Math.abs(value) < 1e5 ? value.toFixed(decimals) : value.toPrecision(3);
}

/** One channel's figure: caption, image with its scale bar, colour bar with ticks. */
function figure(name) {
  const fig = el("figure", "panel channel");
  fig.dataset.name = name;
  const pic = el("div", "pic");
  const img = el("img");
  img.hidden = true;
  const bar = el("div", "scalebar");
  bar.append(el("span", "bar"), el("b"));
  bar.hidden = true;
  pic.append(img, bar);
  const colourbar = el("div", "colourbar");
  colourbar.append(el("div", "ramp"), el("div", "ticks"));
  const body = el("div", "body");
  body.append(pic, colourbar);
  fig.append(el("figcaption"), body);
  return fig;
}

function drawColourbar(fig, c) {
  fig.querySelector(".ramp").style.background = GRADIENTS[c.colormap] || GRADIENTS.grey;
  const box = fig.querySelector(".ticks");
  box.replaceChildren();
  const values = c.colormap === "cyclic" ? [-Math.PI, -Math.PI / 2, 0, Math.PI / 2, Math.PI] : ticks(c.lo, c.hi, 5);
  const names = { [-Math.PI]: "-π", [-Math.PI / 2]: "-π/2", 0: "0", [Math.PI / 2]: "π/2", [Math.PI]: "π" };
  const step = values.length > 1 ? values[1] - values[0] : 1;
  for (const v of values) {
    const t = el("span", "tick", c.colormap === "cyclic" ? names[v] : tickText(v, step));
    t.style.bottom = `${((v - c.lo) / (c.hi - c.lo || 1)) * 100}%`;
    box.append(t);
  }
}

/** A 1, 2 or 5 x 10^k metre bar about a fifth of the image wide, sized to the image as displayed. */
export function scaleBar(pixelSizeM, imageWidthPx, shownWidthPx) {
  const target = 0.2 * imageWidthPx * pixelSizeM;
  const base = 10 ** Math.floor(Math.log10(target));
  const length = [5, 2, 1].map((f) => f * base).find((l) => l <= target * (1 + 1e-9));
  const [unit, factor] = unitFor(length * 5);
  return { px: (length / pixelSizeM) * (shownWidthPx / imageWidthPx), text: `${+(length / factor).toPrecision(3)} ${unit}` };
}

function drawScalebar(fig, c) {
  const bar = fig.querySelector(".scalebar"), img = fig.querySelector("img");
  bar.hidden = !(c.pixel_size_m > 0) || img.hidden;
  if (bar.hidden) return;
  const { px, text } = scaleBar(c.pixel_size_m, c.width, img.clientWidth);
  bar.querySelector(".bar").style.width = `${px}px`;
  bar.querySelector("b").textContent = text;
}

/** Show ``channels`` (the view's list) of job ``id`` in ``container``: figures are kept and their images swapped
 *  only once the new PNG has loaded, so nothing flickers or shows a broken image. */
export function showChannels(container, id, view) {
  const list = view ? view.channels : [];
  const wanted = new Set(list.map((c) => c.name));
  for (const fig of [...container.children]) if (!wanted.has(fig.dataset.name)) fig.remove();
  list.forEach((c, i) => {
    let fig = container.querySelector(`figure[data-name="${CSS.escape(c.name)}"]`);
    if (!fig) fig = figure(c.name);
    if (container.children[i] !== fig) container.insertBefore(fig, container.children[i] || null);
    fig.querySelector("figcaption").textContent = c.title;
    fig.querySelector(".pic").style.aspectRatio = `${c.width} / ${c.height}`;
    drawColourbar(fig, c);
    const src = `/api/jobs/${id}/view/${encodeURIComponent(c.name)}.png?i=${view.iteration}`;
    const img = fig.querySelector("img");
    if (img.dataset.src !== src) {
      img.dataset.src = src;
      const next = new Image();
      next.onload = () => {
        if (img.dataset.src !== src) return;
        img.src = src; img.alt = c.title; img.hidden = false;
        drawScalebar(fig, c);
      };
      next.src = src;
    }
    fig.channel = c;
    drawScalebar(fig, c);
  });
}

/** Redraw every scale bar (after the window changed size). */
export function resizeScalebars(container) {
  for (const fig of container.children) if (fig.channel) drawScalebar(fig, fig.channel);
}
