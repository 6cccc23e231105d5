"""A private redis-server for fault tests: started on a free port with its data on disk (AOF), killed and
restarted on the same port and data, as an operator's Redis would be."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process at a time on ``port``, its append-only file in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_s: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {wait_s} s")

    def kill(self) -> None:
        """kill -9: no shutdown save; what the append-only file holds is what comes back."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def outage(self, seconds: float) -> None:
        """Kill the server, stay down ``seconds``, start it again."""
        self.kill()
        time.sleep(seconds)
        self.start()
