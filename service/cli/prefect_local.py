"""The temporary Prefect server that ``serve`` and ``worker --queue`` start when ``PREFECT_API_URL`` is unset.

Prefect would start one itself at the first flow run, waiting 20 s
(``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``) and leaving it to an ``atexit`` hook, in the terminal's
process group (a Ctrl-C stops it before the flow's last events are sent). Here it is the same server
(``prefect.server.api.server:create_app`` under uvicorn, UI off, as Prefect's ``SubprocessASGIServer`` runs it)
started at once, as a child of ours (``service.cli.children``), waited for ``prefect_start_timeout_s``, started
again on failure (a fresh process on the same port: nothing was done yet), with its log and its database under
the results root (one per instance). Prefect itself is never imported here: the caller sets ``PREFECT_API_URL``
before it is.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from subprocess import Popen

from service.cli import children
from service.demo import free_port

POLL_S = 0.25
LOG_TAIL_LINES = 3


class PrefectStartError(ConnectionError):
    """The temporary Prefect server did not answer; the message says why (with the tail of its log)."""


class TemporaryPrefect:
    """One temporary Prefect server: ``launch`` (returns at once), ``wait_ready`` (waits, retries), ``stop``."""

    def __init__(self, home: Path, *, timeout_s: float, attempts: int) -> None:
        self.home, self.timeout_s, self.attempts = home, timeout_s, attempts
        self.log = home / "server.log"
        self.process: Popen[bytes] | None = None
        self.port = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def launch(self) -> None:
        """Start the server process (without waiting for it) on a free port, the same one on a second start
        (``PREFECT_API_URL`` names it)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{(self.home / 'prefect.db').resolve()}",
        }
        env.pop("PREFECT_API_URL", None)
        command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        self.process = children.spawn(command, env=env, log=self.log)

    def wait_ready(self, stop: threading.Event) -> float:
        """Wait until the server answers; start it afresh after a failed attempt (up to ``attempts`` starts).
        Returns the seconds waited; raises ``PrefectStartError`` naming the cause, or ``InterruptedError`` once
        ``stop`` is set."""
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            if self.process is None:
                self.launch()
            problem = self._wait_once(stop)
            if problem is None:
                return time.monotonic() - started
            self.stop()
            if attempt == self.attempts:
                raise PrefectStartError(
                    f"Prefect's temporary server {problem} (attempt {attempt} of {self.attempts}; "
                    f"PTYCHOSTREAM_PREFECT_START_TIMEOUT_S sets the wait; log {self.log}): {self.log_tail()}"
                )
        raise AssertionError("unreachable: attempts >= 1")

    def _wait_once(self, stop: threading.Event) -> str | None:
        """None once ``/api/health`` answers 200; else what went wrong."""
        assert self.process is not None
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if stop.is_set():
                raise InterruptedError("stopped while waiting for Prefect's temporary server")
            if (code := self.process.poll()) is not None:
                return f"exited with status {code} before answering"
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=5) as reply:
                    if reply.status == 200:
                        return None
            except (urllib.error.URLError, OSError):
                pass
            stop.wait(POLL_S)
        return f"did not answer within {self.timeout_s:g} s"

    def log_tail(self) -> str:
        """The last lines of the server's log on one line ('empty log' if none)."""
        try:
            lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        return " | ".join(lines[-LOG_TAIL_LINES:]) or "empty log"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is not None:
            children.stop(self.process)
            self.process = None
