"""Supervised background loops (the API's lease reaper, the queue worker): placeholder moved out of app.py."""

from __future__ import annotations

import asyncio

from service.store import JobStore


async def reap_forever(store: JobStore, interval_s: float) -> None:
    """Fail running jobs whose worker stopped renewing its lease."""
    while True:
        await asyncio.to_thread(store.reap)
        await asyncio.sleep(interval_s)
