"""The embedded default's Redis: the configured one if it answers, else a local ``redis-server`` started here."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from service.cli import children

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


def ensure_redis(
    url: str, *, start: bool, data_dir: Path | None = None, wait_s: float = 10.0
) -> subprocess.Popen[bytes] | None:
    """Return None if ``url`` answers; otherwise start redis-server on its (local) port and return the process.

    With ``data_dir`` the server keeps an append-only file there (fsync every second), so jobs survive its
    restart; without, it keeps nothing on disk (tests). The server runs in its own session
    (``service.cli.children``): the caller stops it, after whatever still writes to it."""
    if reachable(url):
        return None
    parsed = urlparse(url)
    if not start or parsed.hostname not in LOCAL_HOSTS:
        raise ConnectionError(f"Redis at {url} does not answer (set PTYCHOSTREAM_REDIS_URL)")
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConnectionError(f"Redis at {url} does not answer and no redis-server is installed")
    command = [binary, "--port", str(parsed.port or 6379), "--bind", "127.0.0.1", "--save", ""]
    if data_dir is None:
        command += ["--appendonly", "no"]
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        command += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(data_dir.resolve())]
    process = children.spawn(command)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if reachable(url):
            return process
        time.sleep(0.1)
    children.stop(process)
    raise ConnectionError(f"started redis-server for {url} but it did not answer within {wait_s} s")
