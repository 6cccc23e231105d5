"""Reply caches: what many clients poll is computed once per interval; rendered images kept by what they show."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
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


class BytesCache:
    """Rendered bytes kept in memory, least recently used dropped past ``max_bytes``; thread-safe.

    Keys carry what the value depends on (e.g. a file's mtime), so a changed file misses. A key is
    computed once at a time: callers missing the same key wait for the first (one render, not one per client).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.size = max_bytes, 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, compute: Callable[[], bytes]) -> bytes:
        with self._lock:
            if (hit := self._items.get(key)) is not None:
                self._items.move_to_end(key)
                return hit
            key_lock = self._computing.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if (hit := self._items.get(key)) is not None:
                    return hit
            try:
                value = compute()
                self._put(key, value)
            finally:
                with self._lock:
                    self._computing.pop(key, None)
        return value

    def _put(self, key: Hashable, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            self._items[key] = value
            self.size += len(value)
            while self.size > self.max_bytes:
                self.size -= len(self._items.popitem(last=False)[1])
