"""A short-lived reply cache: what many clients poll is computed once per interval, not once per client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class TTLCache(Generic[T]):
    """Values computed at most about once per ``ttl_s`` per key; thread-safe, at most ``max_items`` kept.

    A value may be up to ``ttl_s`` old: fine for live status and previews that change every
    epoch anyway. Two threads missing the same key at once may both compute it (no lock is
    held while computing).
    """

    def __init__(self, ttl_s: float, max_items: int = 4096) -> None:
        self.ttl_s, self.max_items = ttl_s, max_items
        self._items: dict[Hashable, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        value = compute()
        with self._lock:
            if len(self._items) >= self.max_items:
                self._items = {k: v for k, v in self._items.items() if now - v[0] < self.ttl_s}
            self._items[key] = (now, value)
        return value

    def clear(self) -> None:
        """Forget every value (after a change made through this process, so its callers see it at once)."""
        with self._lock:
            self._items.clear()
