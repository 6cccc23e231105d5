"""What readers see of server paths: the data root dropped (a request's input reads as it was submitted,
relative to the root), the results root written ``<results>``. Applied to job replies, messages and logs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class Redactor:
    def __init__(self, data_root: Path, results_root: Path) -> None:
        roots = [(root.resolve(), shown) for root, shown in ((data_root, ""), (results_root, "<results>" + os.sep))]
        pairs = [(str(root) + os.sep, shown) for root, shown in roots if root != root.parent]  # never "/" itself
        self._pairs = sorted(pairs, key=lambda p: -len(p[0]))  # the longer root first: one may lie in the other

    def text(self, text: str) -> str:
        for root, shown in self._pairs:
            text = text.replace(root, shown)
        return text

    def value(self, value: Any) -> Any:
        """``value`` (JSON-like) with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value
