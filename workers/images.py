"""PNGs of reconstructions a person can read (torch-free: the API renders result files with it).

Values are windowed by percentiles over the scanned region only (where the summed probe
illumination exceeds a fraction of its maximum); phase is shown relative to its median there;
unscanned pixels are dimmed towards a neutral grey. Result images also carry a colour bar with
tick labels and, where the pixel size is known, a scale bar.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

KINDS = ("amplitude", "phase", "probe")
LEVEL = 0.1
"""A pixel is scanned where the summed probe intensity exceeds this fraction of its maximum."""
PERCENTILES = (1.0, 99.0)
NEUTRAL = np.array([112, 118, 136], dtype=np.float32)
DIM = 0.25
"""Unscanned pixels: this fraction of their colour, the rest ``NEUTRAL``."""
TITLES = {"amplitude": "object amplitude", "phase": "object phase [rad]", "probe": "probe amplitude (mode 1)"}
MIN_SIDE = 384
"""Annotated images are enlarged by a whole factor (nearest neighbour) to at least this many pixels."""

# A cyclic map for phase (after matplotlib's twilight_shifted): light at -pi and pi, dark at 0;
# lightness falls and rises symmetrically, blue below 0 and red above.
_CYCLIC = np.array(
    [
        [226, 217, 226],
        [160, 180, 205],
        [95, 120, 190],
        [90, 60, 150],
        [47, 18, 54],
        [125, 38, 70],
        [180, 80, 70],
        [210, 160, 140],
        [226, 217, 226],
    ],
    dtype=np.float32,
)
_GREY = np.array([[0, 0, 0], [255, 255, 255]], dtype=np.float32)


def illumination(probe: np.ndarray, positions: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Probe intensity (all modes) summed over the scan: (H, W) float64.

    ``positions`` (N, 2) are the probe windows' top-left corners in object pixels (rounded like
    the engines do, and clipped into the object); computed as one FFT convolution of the corner
    counts with the probe intensity, so its cost does not grow with N.
    """
    power = (np.abs(probe) ** 2).reshape(-1, *probe.shape[-2:]).sum(0)
    m = power.shape[-1]
    h, w = shape
    if h < m or w < m or len(positions) == 0:
        return np.zeros(shape)
    corner = np.floor(np.asarray(positions, dtype=np.float64) + 0.5).astype(np.int64)
    rows, cols = np.clip(corner[:, 0], 0, h - m), np.clip(corner[:, 1], 0, w - m)
    counts = np.zeros(shape)
    np.add.at(counts, (rows, cols), 1.0)
    return np.fft.irfft2(np.fft.rfft2(counts) * np.fft.rfft2(power, s=shape), s=shape)


def illuminated_region(
    probe: np.ndarray, positions: np.ndarray, shape: tuple[int, int], level: float = LEVEL
) -> np.ndarray:
    """Boolean (H, W): where the summed probe intensity exceeds ``level`` x its maximum."""
    return threshold(illumination(probe, positions, shape), level)


def threshold(illum: np.ndarray, level: float = LEVEL) -> np.ndarray:
    """Boolean: ``illum`` above ``level`` x its maximum (all True where nothing is lit)."""
    top = float(illum.max()) if illum.size else 0.0
    return illum > level * top if top > 0 else np.ones(illum.shape, bool)


def _inside(values: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """The finite values inside ``region``; all finite values if the region holds fewer than 16."""
    finite = np.isfinite(values)
    if region is not None and np.count_nonzero(region & finite) >= 16:
        return values[region & finite]
    return values[finite]


def relative_phase(phase: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """``phase`` minus its median over ``region``, wrapped to [-pi, pi).

    The median is taken after removing the circular mean, so a constant offset (even one that
    makes the phase wrap) renders the same.
    """
    inside = _inside(phase, region)
    if inside.size == 0:
        return phase
    mean = float(np.angle(np.exp(1j * inside.astype(np.float64)).mean()))
    centred = _wrap(inside - mean)
    return _wrap(phase - mean - float(np.median(centred)))


def _wrap(phase: np.ndarray) -> np.ndarray:
    return (phase + np.pi) % (2 * np.pi) - np.pi


def window(kind: str, values: np.ndarray, region: np.ndarray | None = None) -> tuple[float, float, bool]:
    """Display range (lo, hi) of ``values`` as shown for ``kind``, and whether the map is cyclic.

    Object amplitude and phase: the 1st-99th percentile over ``region``; a phase whose window
    spans most of the circle is shown on [-pi, pi] with a cyclic map. Probe: 0 to its 99.9th percentile.
    """
    inside = _inside(values, region)
    if inside.size == 0:
        return 0.0, 1.0, False
    if kind == "probe":
        lo, hi = 0.0, float(np.percentile(inside, 99.9))
    else:
        lo, hi = (float(v) for v in np.percentile(inside, PERCENTILES))
    if kind == "phase" and hi - lo > 1.5 * np.pi:
        return -np.pi, np.pi, True
    if hi - lo <= 1e-6 * max(abs(lo), abs(hi), 1e-30):
        pad = max(abs(lo) * 0.5, 1e-12)
        lo, hi = lo - pad, hi + pad
    return lo, hi, False


def _colours(scaled: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Colours (..., 3) float of ``scaled`` in [0, 1], linearly interpolated between ``anchors``."""
    x = scaled * (len(anchors) - 1)
    i = np.clip(np.floor(x).astype(np.int64), 0, len(anchors) - 2)
    t = (x - i)[..., None]
    return anchors[i] * (1 - t) + anchors[i + 1] * t


def colourise(values: np.ndarray, lo: float, hi: float, cyclic: bool, region: np.ndarray | None) -> np.ndarray:
    """RGB uint8 (H, W, 3): ``values`` on [lo, hi] through the grey (or cyclic) map; unscanned pixels dimmed."""
    with np.errstate(invalid="ignore"):
        scaled = np.clip(np.nan_to_num((values - lo) / (hi - lo), nan=0.0), 0.0, 1.0)
    rgb = _colours(scaled, _CYCLIC if cyclic else _GREY)
    if region is not None:
        outside = ~region
        rgb[outside] = DIM * rgb[outside] + (1 - DIM) * NEUTRAL
    return np.round(rgb).astype(np.uint8)


def view(kind: str, obj: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """The image shown of a state: object ``amplitude`` or ``phase`` (H, W), or the first probe mode's amplitude."""
    if kind == "probe":
        return np.abs(probe.reshape(-1, *probe.shape[-2:])[0])
    return np.abs(obj) if kind == "amplitude" else np.angle(obj)


def png(
    kind: str,
    values: np.ndarray,
    region: np.ndarray | None = None,
    *,
    pixel_size: float = 0.0,
    annotate: bool = True,
) -> bytes:
    """PNG of ``values`` (a view of ``kind``) windowed over ``region`` (None: all pixels are scanned).

    ``annotate``: enlarge small images, add a title, a colour bar with ticks and, where
    ``pixel_size`` (metres) > 0, a scale bar; otherwise the bare image, one pixel per value.
    """
    if kind == "phase":
        values = relative_phase(values, region)
    lo, hi, cyclic = window(kind, values, region)
    image = Image.fromarray(colourise(values, lo, hi, cyclic, region))
    if annotate:
        image = _annotate(image, kind, lo, hi, cyclic, pixel_size, region is not None and not region.all())
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def result_kinds(result: Mapping[str, Any]) -> tuple[str, ...]:
    """The views of a result: ``KINDS``, then ``elements/<symbol>`` per element map (joint fluorescence)."""
    return KINDS + tuple(f"elements/{name}" for name in element_maps(result))


def element_maps(result: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Element maps by symbol: a read result's ``elements`` dict, or a state's ``elements/<symbol>`` keys."""
    flat = {k.partition("/")[2]: v for k, v in result.items() if k.startswith("elements/")}
    return {**result.get("elements", {}), **flat}


def render_result(result: Mapping[str, Any], kind: str) -> bytes:
    """Annotated PNG of one view of a result: ``object``, ``probe``, ``positions``, ``elements`` arrays and ``attrs``.

    ``result`` as ``workers.io.read_result`` returns it (``attrs["pixel_size"]`` in metres, 0 or
    absent: unknown, no scale bar); ``kind`` one of ``result_kinds(result)``.
    """
    obj, probe = np.asarray(result["object"]), np.asarray(result["probe"])
    region = None if kind == "probe" else illuminated_region(probe, np.asarray(result["positions"]), obj.shape)
    pixel_size = float(result.get("attrs", {}).get("pixel_size", 0.0) or 0.0)
    if kind.startswith("elements/"):
        values = np.asarray(element_maps(result)[kind.partition("/")[2]], dtype=np.float64)
    else:
        values = view(kind, obj, probe)
    return png(kind, values, region, pixel_size=pixel_size)


def title(kind: str) -> str:
    """The heading of a view: ``TITLES``, or an element map's symbol and unit."""
    if kind.startswith("elements/"):
        return f"{kind.partition('/')[2]} areal density [g/cm^2]"
    return TITLES.get(kind, kind)


def ticks(lo: float, hi: float, count: int = 6) -> list[tuple[float, str]]:
    """Ticks within [lo, hi] and their labels: the 1, 2 or 5 x 10^k step giving closest to ``count`` of them."""

    def within(step: float) -> range:
        return range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)

    exponent = math.floor(math.log10((hi - lo) / count))
    steps = [f * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for f in (1, 2, 5)]
    step = min(steps, key=lambda s: (abs(len(within(s)) - count), -s))
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    fmt = f".{decimals}f" if decimals <= 4 and max(abs(lo), abs(hi)) < 1e5 else ".3g"
    return [(k * step, format(k * step, fmt)) for k in within(step)]


UNITS = (("nm", 1e-9), ("µm", 1e-6), ("mm", 1e-3), ("m", 1.0))


def scale_bar(pixel_size: float, width_px: int) -> tuple[int, str]:
    """Length in pixels and label of a 1/2/5 x 10^k metre bar about a fifth of ``width_px`` long."""
    target = 0.2 * width_px * pixel_size
    base = 10.0 ** math.floor(math.log10(target))
    length = max(f * base for f in (1, 2, 5) if f * base <= target * (1 + 1e-9))
    unit, factor = next((u, f) for u, f in reversed(UNITS) if length >= f * (1 - 1e-9) or u == "nm")
    return round(length / pixel_size), f"{length / factor:.4g} {unit}"


def _outlined(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> None:
    """White text outlined in black, left end of its baseline at ``xy``.

    The default font has no µ: it is drawn as a u with a descender on its left stem.
    """
    x, y = xy
    draw.text((x, y), text.replace("µ", "u"), fill="white", font=font, anchor="ls", stroke_width=2, stroke_fill="black")
    if "µ" in text:
        size = getattr(font, "size", 10)
        left = x + font.getlength(text[: text.index("µ")]) + font.getbbox("u", anchor="ls")[0]
        stem = (left, y - 1, left + max(1, round(size / 12)) - 1, y + round(0.25 * size))
        draw.rectangle((stem[0] - 2, stem[1] + 2, stem[2] + 2, stem[3] + 2), fill="black")
        draw.rectangle(stem, fill="white")


def _annotate(
    image: Image.Image, kind: str, lo: float, hi: float, cyclic: bool, pixel_size: float, dimmed: bool
) -> Image.Image:
    """``image`` enlarged, with title, colour bar, ticks and (pixel size known) a scale bar."""
    factor = max(1, math.ceil(MIN_SIDE / max(image.size)))
    image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    w, h = image.size
    fs = int(np.clip(round(0.032 * max(w, h)), 12, 32))
    # Pillow's built-in font (Aileron, FreeType; Pillow >= 10.1): it has no µ, minus sign or pi.
    font, small = ImageFont.load_default(size=fs), ImageFont.load_default(size=max(10, round(fs * 0.8)))
    pad, bar_w = fs, max(12, fs)
    labels = ticks(lo, hi)
    label_w = max(int(small.getlength(t)) for _, t in labels) if labels else 0
    top = pad + fs + pad // 2
    bottom = pad + (fs if dimmed else 0)
    canvas = Image.new("RGB", (pad + w + pad + bar_w + fs // 3 + 4 + label_w + pad, top + h + bottom), "white")
    canvas.paste(image, (pad, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad // 2), title(kind), fill="black", font=font)
    if dimmed:
        draw.text((pad, top + h + pad // 4), "dimmed: outside the scanned area", fill=(90, 90, 90), font=small)

    x0 = pad + w + pad
    ramp = np.linspace(1.0, 0.0, h)[:, None].repeat(bar_w, 1)
    bar = np.round(_colours(ramp, _CYCLIC if cyclic else _GREY)).astype(np.uint8)
    canvas.paste(Image.fromarray(bar), (x0, top))
    draw.rectangle((x0 - 1, top - 1, x0 + bar_w, top + h), outline="black")
    for value, text in labels:
        y = top + round((hi - value) / (hi - lo) * (h - 1))
        draw.line((x0 + bar_w, y, x0 + bar_w + fs // 3, y), fill="black")
        draw.text((x0 + bar_w + fs // 3 + 4, y), text, fill="black", font=small, anchor="lm")

    if pixel_size > 0:
        length, text = scale_bar(pixel_size / factor, w)
        thick = max(3, fs // 4)
        x, y = pad + fs, top + h - fs - thick
        draw.rectangle((x - 1, y - 1, x + length, y + thick), fill="white", outline="black")
        _outlined(
            draw, (x + length / 2 - font.getlength(text.replace("µ", "u")) / 2, y - 6 - round(0.25 * fs)), text, font
        )
    return canvas
