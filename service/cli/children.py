"""The child processes of ``serve`` and ``worker --queue`` (redis-server, a temporary Prefect server).

Each child runs in its own session, so a Ctrl-C at the terminal reaches only the parent, which stops the children
in order (the worker first, Prefect after its last events are sent, Redis last). A child spawned from the main
thread also gets SIGTERM from the kernel when the parent dies without cleaning up (SIGKILL): Linux's parent-death
signal, which follows the spawning thread, hence only the main thread asks for it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@functools.cache
def _prctl() -> Callable[[int, int], int] | None:
    """libc's ``prctl`` (Linux), looked up once in the parent: the child must not load libraries after fork."""
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _parent_death_signal() -> Callable[[], None] | None:
    """What the child runs before ``exec``: ask for SIGTERM when the parent dies; None off Linux or off the main
    thread."""
    prctl = _prctl()
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    sigterm, parent = int(signal.SIGTERM), os.getpid()

    def ask() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return ask


def spawn(
    command: list[str], *, env: Mapping[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` as a child in its own session; its output goes to ``log`` (appended) or nowhere."""
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            command,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_parent_death_signal(),
        )
    finally:
        if log is not None and not isinstance(out, int):
            out.close()


def stop(process: subprocess.Popen[bytes], *, wait_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``wait_s``; returns once the child is reaped."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
