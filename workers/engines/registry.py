"""The one map from engine names to engine classes, and the factory that builds them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from workers.data import Geometry
from workers.engines.adam import Adam
from workers.engines.base import Engine
from workers.engines.bh import BHCG, BHGD, BHQN
from workers.engines.joint_xrf import JointXRF
from workers.engines.options import OPTIONS, EngineName, EngineOptions
from workers.engines.pie import EPIE, RPIE
from workers.engines.pine import PINE
from workers.state import ReconState

ENGINES: dict[EngineName, type[Engine]] = {
    cls.name: cls for cls in (EPIE, RPIE, Adam, BHGD, BHCG, BHQN, PINE, JointXRF)
}
if set(ENGINES) != set(EngineName):
    raise ImportError(f"engines without a class: {sorted(set(EngineName) - set(ENGINES))}")


def make_engine(
    name: str | EngineName,
    state: ReconState,
    geometry: Geometry,
    options: EngineOptions | Mapping[str, Any] | None = None,
    *,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> Engine:
    """Build engine ``name`` on ``state``; ``options`` as a model or a dict validated strictly."""
    key = EngineName(name)
    if not isinstance(options, EngineOptions):
        options = OPTIONS[key].model_validate(dict(options or {}))
    return ENGINES[key](state, geometry, options, mask=mask, seed=seed)
