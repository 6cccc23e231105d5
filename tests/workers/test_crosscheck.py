"""Cross-check of our reader and forward model against independent codes: cdtools and pty-chi.

Our own tests compare our engines with our own simulator, so a convention error shared by both
(a shift, a sign, an axis) passes them. Here the same object, probe and scan go through our model
(``workers.metrics.model_intensities``, converted with ``layout.to_detector``) and through
cdtools' ``FancyPtycho`` (in process; skipped when ``cdtools`` is not importable) and pty-chi's
``PlanarPtychographyForwardModel`` (in the peer venv, ``PTYCHOSTREAM_PEERS_PYTHON``, default
/work/peers/bin/python, via ``tests/benchmarks/ptychi_forward.py``; skipped without it). Both
readers open the same CXI file. Measure: max |I_ours - I_peer| / max I_ours over all frames.

Map between the conventions (cdtools 0.3.2, pty-chi 2.2; facts read from their sources):

* FFT norm: far field, ours and cdtools' are ``fft2(norm="ortho")``; pty-chi's is
  ``norm="backward"`` (|.|^2 is M^2 times ours), so its probe goes in divided by M. Near field:
  all three propagate with a unitary transfer function (no norm factor).
* Centring: detector layout = far-field zero frequency at index M // 2 (cdtools' ``far_field`` =
  fftshift . fft2 . ifftshift, identical in intensity to our fftshift . fft2); pty-chi's far field
  puts it at [0, 0], so its output goes through ``np.fft.fftshift``. Near-field holograms are
  real-space images, unshifted, in all three.
* Positions: CXI ``translation`` is the sample's (x, y, z) in metres; the probe moves by its
  negative (cdtools' ``get_ptycho_translations`` negates it). Pixel = pinv(B) (-t) with B the
  detector ``basis_vectors`` scaled to the sample plane (default [[0, -p], [-p, 0], [0, 0]]: rows
  along -y, columns along -x). cdtools' window top-left corner is that pixel minus its
  ``min_translation``; ours is that pixel minus M / 2 (the translation names the window centre).
  So ours = cdtools' ``translations_to_pixel`` - M / 2, axes (row, col) in both, no transpose.
  pty-chi: a position is the probe centre relative to ``position_origin_coords``; with the origin
  at ((M - 1) / 2, (M - 1) / 2) it equals our top-left corner (``ptychi_runner.py``).
* Units and geometry: far-field sample pixel = lambda z / (M p) (cdtools'
  ``exit_wave_geometry``). Near field with a focus distance f (Fresnel scaling, cone beam):
  magnification m = (f + z) / f, sample pixel p / m, propagation distance z / m (cdtools'
  ``from_dataset(near_field=True, propagation_distance=f)``).
* Propagator kernel, near field: ours exp(-i pi lambda z |q|^2) (Fresnel); cdtools'
  exp(i z (sqrt(k^2 - |K|^2) - k)) and pty-chi's exp(2 pi i z sqrt(1/lambda^2 - |q|^2))
  (angular spectrum; pty-chi's carries the constant phase exp(i k z), which no intensity sees).
  The non-paraxial rest, k z lambda^4 |q|^4 / 8, is < 1e-6 rad at the sampling used here and at
  PETRA's.
* Sub-pixel positions, by design different: we shift the object patch (Fourier shift on a
  window padded by 2 px); cdtools and pty-chi cut the window at an integer corner (cdtools
  floor, pty-chi round) and Fourier-shift the probe (periodic on the M window) by the rest;
  cdtools shifts the near-field exit wave back, pty-chi does not, so pty-chi's near-field
  hologram is ours translated by the fraction. The three agree exactly when both shifts are
  exact: an object with period 4 px (frequencies 0, +-1/4 per axis; 4 divides M and M + 4) and a
  probe band-limited to |q| < 1/4, so that their product stays below Nyquist. Integer positions
  are exactly comparable for any object and probe; both are tested.
* cdtools' extra model terms are neutralised: background (added as |b|^2) set to 0, probe
  weights 1, translation offsets 0, ``probe_norm`` divided out of its probe.

The geometries use powers of two (wavelength, pixels, distances), so that the float32 pinv in
cdtools gives whole-pixel corners exactly and floor() does not split 37 into 36 + 0.99999.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from workers import layout
from workers.data import Geometry, ScanData
from workers.io import load_scan, write_cxi
from workers.metrics import model_intensities
from workers.physics import NearField
from workers.units import DEFAULT_BASIS, PLANCK_C

cdtools = pytest.importorskip("cdtools")

ROOT = Path(__file__).resolve().parents[2]
PETRA = ROOT.parent / "shared" / "data" / "petra_p25_nearfield.cxi"
PETRA_FOCUS = 3.65e-3  # m, focus to sample (cdtools' examples/near_field_ptycho.py)
PEERS_PYTHON = Path(os.environ.get("PTYCHOSTREAM_PEERS_PYTHON", "/work/peers/bin/python"))
M = 64
N = 12
WAVELENGTH = 2.0**-33  # m (0.116 nm)
FAR = Geometry("far", WAVELENGTH, 1.0, 2.0**-18)  # detector pixel lambda z / (M dx) = 2^-21 m
FOCUS = 2.0**-8  # m; z = 1 - f gives magnification 256 exactly
NEAR_Z = 1.0 - FOCUS
NEAR_DETECTOR_PIXEL = 2.0**-14  # m; sample pixel 2^-22 m, effective distance 3.9 mm
TOL = 2e-5  # float32 FFTs of 64 px frames: the peers agree with us to ~1e-6


def relative_difference(ours: np.ndarray, peer: np.ndarray) -> float:
    return float(np.abs(ours - peer).max() / np.abs(ours).max())


def random_field(rng: np.random.Generator, shape: tuple[int, ...], smooth: float) -> np.ndarray:
    """A smooth random complex field (Gaussian-filtered white noise), unit RMS."""
    noise = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    q2 = np.fft.fftfreq(shape[-2])[:, None] ** 2 + np.fft.fftfreq(shape[-1])[None, :] ** 2
    field = np.fft.ifft2(np.fft.fft2(noise) * np.exp(-q2 * (2 * np.pi * smooth) ** 2 / 2))
    return field / np.sqrt((np.abs(field) ** 2).mean())


def general_case(rng: np.random.Generator, near: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object (H, W), probe (1, M, M) and whole-pixel corners: nothing special about them."""
    obj = np.exp(0.3 * random_field(rng, (112, 120), 1.0) + 1j * random_field(rng, (112, 120), 1.5)).astype(
        np.complex64
    )
    yy, xx = np.mgrid[:M, :M] - (M - 1) / 2
    width = 24.0 if near else 9.0
    probe = np.exp(-(yy**2 + xx**2) / (2 * width**2)) * random_field(rng, (M, M), 1.0 if near else 2.0)
    corners = rng.integers(4, (112 - M - 4, 120 - M - 4), size=(N, 2)).astype(np.float64)
    return obj, probe[None].astype(np.complex64), corners


def band_limited_case(rng: np.random.Generator, shape: tuple[int, int], m: int, n: int) -> tuple[np.ndarray, ...]:
    """Object of period 4 px, probe band-limited to |q| < 1/4, sub-pixel corners: all three models are exact."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    coef = 0.2 * (rng.normal(size=(3, 3)) + 1j * rng.normal(size=(3, 3)))
    coef[1, 1] = 1.0
    obj = sum(
        coef[a + 1, b + 1] * np.exp(2j * np.pi * (a * rows + b * cols) / 4) for a in (-1, 0, 1) for b in (-1, 0, 1)
    )
    q = np.fft.fftfreq(m)
    band = (np.abs(q)[:, None] < 0.22) & (np.abs(q)[None, :] < 0.22)
    spectrum = (rng.normal(size=(m, m)) + 1j * rng.normal(size=(m, m))) * band
    probe = np.fft.ifft2(spectrum * np.exp(-(q[:, None] ** 2 + q[None, :] ** 2) * 40))
    probe = probe / np.abs(probe).max()
    corners = rng.uniform(6, (shape[0] - m - 6, shape[1] - m - 6), size=(n, 2))
    return obj.astype(np.complex64), probe[None].astype(np.complex64), corners


def write_near_cxi(
    path: Path, shape_frames: tuple[int, int, int], corners: np.ndarray, basis: np.ndarray = DEFAULT_BASIS
) -> None:
    """A Fresnel-scaling near-field CXI as other tools write it: detector pixel and distance, sample translations.

    ``basis`` (3, 2) unit lab directions of rows and columns; a non-default one is stored as (2, 3).
    """
    dx = NEAR_DETECTOR_PIXEL * FOCUS / (FOCUS + NEAR_Z)
    translation = -((corners + shape_frames[-1] / 2) * dx) @ basis.T
    with h5py.File(path, "w") as f:
        det = f.create_group("entry_1/instrument_1/detector_1")
        det["data"] = np.ones(shape_frames, np.float32)
        det["distance"] = NEAR_Z
        det["x_pixel_size"] = det["y_pixel_size"] = NEAR_DETECTOR_PIXEL
        det["basis_vectors"] = NEAR_DETECTOR_PIXEL * (basis if basis is DEFAULT_BASIS else basis.T)
        f["entry_1/instrument_1/source_1/energy"] = PLANCK_C / WAVELENGTH
        f["entry_1/instrument_1/source_1/wavelength"] = WAVELENGTH
        f["entry_1/sample_1/geometry_1/translation"] = translation
        f["entry_1/data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")


def scan_file(tmp: Path, name: str, obj: np.ndarray, probe: np.ndarray, corners: np.ndarray, near: bool) -> Path:
    path = tmp / f"{name}.cxi"
    if near:
        write_near_cxi(path, (len(corners), M, M), corners)
    else:
        write_cxi(path, ScanData(np.ones((len(corners), M, M), np.float32), corners, FAR))
    return path


def load_ours(path: Path, near: bool) -> ScanData:
    return load_scan(path, near_field=near, focus_distance=FOCUS if near else None)


def ours(data: ScanData, obj: np.ndarray, probe: np.ndarray, corners: np.ndarray) -> np.ndarray:
    model = np.concatenate([m for m, _ in model_intensities(data, obj, probe, corners)])
    return layout.to_detector(model, data.geometry.kind)


def cdtools_model(path: Path, near: bool, focus: float | None) -> tuple:
    """cdtools' dataset and FancyPtycho for the CXI file ``path``, built as its near-field example does."""
    dataset = cdtools.datasets.Ptycho2DDataset.from_cxi(str(path))
    model = cdtools.models.FancyPtycho.from_dataset(dataset, near_field=near, propagation_distance=focus, obj_padding=0)
    return dataset, model


def cdtools_pixels(model, dataset) -> np.ndarray:
    """cdtools' pixel translations (before its ``min_translation``) of the dataset's frames."""
    pix = cdtools.tools.interactions.translations_to_pixel(model.obj_basis, dataset.translations)
    return pix.numpy().astype(np.float64)


def cdtools_forward(path: Path, near: bool, obj: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """cdtools' simulated intensities with our object and probe, its window corners = ours (see the map)."""
    dataset, model = cdtools_model(path, near, FOCUS if near else None)
    with torch.no_grad():
        model.obj.data = torch.from_numpy(obj)
        model.probe.data = torch.from_numpy(probe) / model.probe_norm
        model.min_translation.fill_(M / 2)
        model.background.data.zero_()
        if model.weights is not None:
            model.weights.data.fill_(1)
        (index, translations), _ = dataset[:]
        return model.forward(index, translations).numpy()


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """name -> (CXI path, near, object, probe, corners)."""
    tmp = tmp_path_factory.mktemp("crosscheck")
    rng = np.random.default_rng(11)
    out = {}
    for name, near, subpixel in (
        ("far", False, False),
        ("near", True, False),
        ("far-subpixel", False, True),
        ("near-subpixel", True, True),
    ):
        obj, probe, corners = band_limited_case(rng, (112, 120), M, N) if subpixel else general_case(rng, near)
        out[name] = (scan_file(tmp, name, obj, probe, corners, near), near, obj, probe, corners)
    return out


@pytest.mark.parametrize("name", ["far", "near", "far-subpixel", "near-subpixel"])
def test_cdtools_forward_model(cases: dict[str, tuple], name: str) -> None:
    path, near, obj, probe, _ = cases[name]
    data = load_ours(path, near)
    torch.set_num_threads(1)
    mine = ours(data, obj, probe, data.positions)
    theirs = cdtools_forward(path, near, obj, probe)
    assert relative_difference(mine, theirs) < TOL


def test_cdtools_reader_geometry(cases: dict[str, tuple]) -> None:
    """Sample pixel, positions and the near-field kernel of both readers, on our synthetic CXI files."""
    for name in ("far", "near"):
        path, near, _, _, corners = cases[name]
        data = load_ours(path, near)
        dataset, model = cdtools_model(path, near, FOCUS if near else None)
        basis = model.obj_basis.numpy().astype(np.float64)
        np.testing.assert_allclose(basis, DEFAULT_BASIS * data.geometry.pixel_size, rtol=1e-6)
        np.testing.assert_allclose(data.positions, cdtools_pixels(model, dataset) - M / 2, atol=1e-4)
        if near:
            kernel = NearField(WAVELENGTH, data.geometry.distance, data.geometry.pixel_size, M).kernel.numpy()
            assert np.abs(kernel - model.angular_spectrum_propagator.numpy()).max() < 1e-5


def test_cdtools_reader_rotated_basis(cases: dict[str, tuple], tmp_path: Path) -> None:
    """A detector turned by 90 degrees (rows along +x, columns along -y), its basis stored as (2, 3)."""
    _, _, _, _, corners = cases["near"]
    path = tmp_path / "rotated.cxi"
    write_near_cxi(path, (N, M, M), corners, basis=np.array([[1.0, 0.0], [0.0, -1.0], [0.0, 0.0]]))
    data = load_ours(path, True)
    dataset, model = cdtools_model(path, True, FOCUS)
    np.testing.assert_allclose(data.positions, corners, atol=1e-9)
    np.testing.assert_allclose(data.positions, cdtools_pixels(model, dataset) - M / 2, atol=1e-4)


@pytest.mark.skipif(not PETRA.exists(), reason="measured PETRA scan not present")
def test_cdtools_reader_petra() -> None:
    """The measured near-field scan through both readers: frames, mask, pixel, positions, kernel, intensities."""
    torch.set_num_threads(1)
    data = load_scan(PETRA, near_field=True, focus_distance=PETRA_FOCUS)
    dataset, model = cdtools_model(PETRA, True, PETRA_FOCUS)
    m = data.frame_size
    np.testing.assert_array_equal(data.intensities, dataset.patterns.numpy())
    np.testing.assert_array_equal(data.mask, dataset.mask.numpy())
    basis = model.obj_basis.numpy().astype(np.float64)
    np.testing.assert_allclose(basis, DEFAULT_BASIS * data.geometry.pixel_size, rtol=1e-6)
    np.testing.assert_allclose(data.positions, cdtools_pixels(model, dataset) - m / 2, atol=1e-3)
    kernel = NearField(data.geometry.wavelength, data.geometry.distance, data.geometry.pixel_size, m).kernel.numpy()
    assert np.abs(kernel - model.angular_spectrum_propagator.numpy()).max() < 1e-5

    # Simulated holograms on PETRA's own geometry and positions (exactly comparable object and probe).
    lo = np.floor(data.positions.min(0)) - 8
    corners = data.positions - lo
    shape = tuple(int(s) for s in np.ceil(corners.max(0) + m + 8))
    obj, probe, _ = band_limited_case(np.random.default_rng(5), shape, m, 1)
    mine = ours(data, obj, probe, corners)
    with torch.no_grad():
        model.obj.data = torch.from_numpy(obj)
        model.probe.data = torch.from_numpy(probe) / model.probe_norm
        model.min_translation.copy_(torch.as_tensor(lo + m / 2))
        model.background.data.zero_()
        (index, translations), _ = dataset[:]
        theirs = model.forward(index, translations).numpy()
    assert relative_difference(mine, theirs) < 1e-4


@pytest.mark.skipif(not PEERS_PYTHON.exists(), reason=f"no peer interpreter at {PEERS_PYTHON}")
def test_ptychi_forward_model(cases: dict[str, tuple], tmp_path: Path) -> None:
    """pty-chi's forward model in the peer venv on the exactly comparable cases (one subprocess)."""
    names = ("far", "near", "far-subpixel")  # near-subpixel: pty-chi translates the hologram by design
    inputs = []
    for name in names:
        path, near, obj, probe, corners = cases[name]
        data = load_ours(path, near)
        extra = {}
        if near:
            g = data.geometry
            extra = {"wavelength": g.wavelength, "distance": g.distance, "pixel_size": g.pixel_size}
        inputs.append(tmp_path / f"{name}.npz")
        np.savez(inputs[-1], intensities=data.intensities, positions=data.positions, probe=probe, object=obj, **extra)
    runner = ROOT / "tests" / "benchmarks" / "ptychi_forward.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    subprocess.run([str(PEERS_PYTHON), str(runner), *map(str, inputs)], check=True, env=env, capture_output=True)
    torch.set_num_threads(1)
    for name, path in zip(names, inputs, strict=True):
        _, near, obj, probe, _ = cases[name]
        with np.load(path.with_suffix(".ptychi.npz")) as f:
            theirs = f["intensities"] if near else np.fft.fftshift(f["intensities"], axes=(-2, -1))
        data = load_ours(cases[name][0], near)
        mine = ours(data, obj, probe, data.positions)
        assert relative_difference(mine, theirs) < TOL, name


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
