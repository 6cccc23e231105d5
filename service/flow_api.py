"""The seam between the packages: the one module of ``service/`` that ``flows/`` imports.

Rule (checked by ``tests/service/test_seams.py``): ``flows/`` imports from ``service/`` only through this module;
``service/`` never imports ``flows/`` at module level: only the CLI's entry points (``serve``, ``worker --queue``)
import it, inside the command function. The job store stays in ``service/`` (its state machine is the API's
contract) and the flows use it, with the settings, through this one door, so neither package's insides leak.
"""

from __future__ import annotations

from service.settings import Settings
from service.store import TERMINAL, JobState, JobStore, TransitionError
from service.supervise import persist, supervise

__all__ = ["TERMINAL", "JobState", "JobStore", "Settings", "TransitionError", "persist", "supervise"]
