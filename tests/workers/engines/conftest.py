"""Engine tests run torch on one thread: on 2-core VMs torch's spinning OpenMP pool makes small ops ~20x slower
(PEERS.md), whatever OMP_NUM_THREADS the caller set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
