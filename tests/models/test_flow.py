"""The ``train_denoiser`` Prefect flow with the tiny recipe, on a real (temporary) Prefect server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def prefect() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def test_train_denoiser_flow_writes_weights_and_manifest(prefect: None, tmp_path: Path) -> None:
    from flows.train import train_denoiser

    state = train_denoiser(config="tiny", out=str(tmp_path), seed=1, progress=False, return_state=True)
    assert state.is_completed()
    manifest = state.result()
    assert manifest == json.loads((tmp_path / "dncnn.json").read_text())
    assert (tmp_path / "dncnn.pt").stat().st_size == manifest["weights"]["bytes"]
    with pytest.raises(ValueError, match="unknown denoiser config 'huge'"):
        train_denoiser(config="huge", out=str(tmp_path))
    with pytest.raises(ValueError, match="unknown training-data recipe 'stripes'"):
        train_denoiser(config="tiny", data="stripes", out=str(tmp_path))
