"""How the long-running commands (``serve``, ``worker --queue``) start their parts and stop on a signal.

SIGINT (Ctrl-C), SIGTERM and SIGHUP all stop them the same way: the first one ends the command's main work, the
cleanup then runs to its end (further signals only say it is under way), and the command exits with status
128 + the signal's number and one line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from service.cli.common import UsageError
from service.cli.prefect_local import TemporaryPrefect
from service.settings import Settings

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """A signal stopped the command (exit status 128 + ``signum``)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class StopSignals:
    """Signal handlers for the command's life: the first signal sets ``stop`` and, with ``raise_first``, raises
    ``Stopped`` in the main thread; once ``hold`` is called (the cleanup has begun) signals are only noted."""

    def __init__(self, stop: threading.Event, *, raise_first: bool) -> None:
        self.stop, self.raise_first = stop, raise_first
        self.signum: int | None = None
        self._held = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None or self._held:
            print("ptychostream: stopping, please wait", file=sys.stderr)
            return
        self.signum = signum
        self.stop.set()
        if self.raise_first:
            raise Stopped(signum)

    def hold(self) -> None:
        """From now on a signal does not interrupt (the cleanup is running)."""
        self._held = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Install the handlers for the block (not over a signal ignored, as ``nohup`` ignores SIGHUP), then
        restore the previous ones; raise ``Stopped`` at the end of the block if a signal came that did not raise."""
        ignored = {sig for sig in SIGNALS if signal.getsignal(sig) == signal.SIG_IGN}
        previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS if sig not in ignored}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.signum is not None:
            raise Stopped(self.signum)


def check_port(host: str, port: int) -> None:
    """Refuse (one line) a host and port this process cannot listen on, before anything is started."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None


def start_prefect(settings: Settings, cleanup: contextlib.ExitStack) -> TemporaryPrefect | None:
    """Without ``PREFECT_API_URL``, launch a temporary Prefect server (stopped by ``cleanup``) and point
    ``PREFECT_API_URL`` at it; call before Prefect is imported (it reads its settings then). Returns it, or None
    when a Prefect API is configured."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    prefect = TemporaryPrefect(
        Path(settings.results_root) / ".prefect",
        timeout_s=settings.prefect_start_timeout_s,
        attempts=settings.prefect_start_attempts,
    )
    cleanup.callback(prefect.stop)
    prefect.launch()
    os.environ["PREFECT_API_URL"] = prefect.api_url
    return prefect
