"""``ptychostream serve`` as a real process: every way it ends leaves no child behind, without a traceback.

Each test starts ``serve --demo`` in its own session (as a terminal would: Ctrl-C reaches its process group) on
free ports, with a Redis of its own (so ``serve`` starts redis-server) and the temporary Prefect server, then ends
it by Ctrl-C, SIGTERM, SIGKILL or a failed start, and checks the exit status, stderr and the children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from service.demo import free_port
from tests.service.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
START_S = 120.0  # the demo job claimed (Prefect up) on a loaded 2-core machine


def children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Serve:
    """One ``serve --demo`` process and what it started."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.port, self.redis_port = free_port(), free_port()
        self.prefix = f"startup-test:{self.port}:"
        self.env = {
            **os.environ,
            "PTYCHOSTREAM_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "PTYCHOSTREAM_KEY_PREFIX": self.prefix,
            "PTYCHOSTREAM_DATA_ROOT": str(tmp_path / "data"),
            "PTYCHOSTREAM_RESULTS_ROOT": str(tmp_path / "results"),
            **env,
        }
        self.env.pop("PREFECT_API_URL", None)
        self.stderr = tmp_path / "stderr.txt"
        self.seen: set[int] = set()  # every child seen, killed at teardown if a test failed
        command = [sys.executable, "-m", "service.cli", "serve", "--demo", "--port", str(self.port)]
        with self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                command, cwd=tmp_path, env=self.env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
            )

    def children(self) -> set[int]:
        """Its live descendants now (and remembered for the teardown)."""
        kids = children_of(self.process.pid)
        self.seen |= kids
        return kids

    def store(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port, socket_connect_timeout=1)

    def demo_job(self) -> dict[str, str]:
        """The demo job's hash ({} while Redis or the job is not there yet)."""
        try:
            client = self.store()
            ids = client.zrange(f"{self.prefix}jobs", 0, -1)
            raw = client.hgetall(f"{self.prefix}job:{ids[0].decode()}") if ids else {}
        except redis.RedisError:
            return {}
        return {k.decode(): v.decode() for k, v in raw.items()}

    def end(self, timeout_s: float = 90.0) -> tuple[int, str]:
        """Wait for the exit; its status and stderr."""
        code = self.process.wait(timeout=timeout_s)
        return code, self.stderr.read_text(errors="replace")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(**env: str) -> Serve:
        started.append(Serve(tmp_path, env))
        return started[-1]

    yield start
    for s in started:
        if s.process.poll() is None:
            s.children()
            os.killpg(s.process.pid, signal.SIGKILL)
            s.process.wait()
        for pid in s.seen:
            if alive(pid) and any(word in command_of(pid) for word in ("redis-server", "prefect")):
                os.kill(pid, signal.SIGKILL)


def wait_running(s: Serve) -> set[int]:
    """Wait until the demo job has done an iteration on streamed frames (Redis, Prefect and the flow run up);
    returns serve's children then."""

    def iterating() -> bool:
        job = s.demo_job()
        return job.get("state") == "running" and int(job.get("iteration", 0)) > 0

    wait_for(lambda: iterating() or s.process.poll() is not None, START_S, "the demo job")
    assert s.process.poll() is None, s.stderr.read_text(errors="replace")
    kids = s.children()
    assert len(kids) >= 2, "serve should have started redis-server and the temporary Prefect server"
    return kids


def wait_serving(s: Serve) -> set[int]:
    """Wait until the API answers (Prefect may still be starting); returns serve's children then."""
    url = f"http://127.0.0.1:{s.port}/api/health/live"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    wait_for(lambda: answers() or s.process.poll() is not None, START_S, "the API")
    assert s.process.poll() is None, s.stderr.read_text(errors="replace")
    kids = s.children()
    assert len(kids) >= 2, "serve starts redis-server and the temporary Prefect server before the API"
    return kids


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_signal_stops_serve_and_every_child_cleanly(serve: Callable[..., Serve], how: str) -> None:
    s = serve()
    kids = wait_serving(s) if how == "ctrl-c" else wait_running(s)  # Ctrl-C at once, SIGTERM mid-scan
    if how == "ctrl-c":  # the terminal sends SIGINT to the foreground process group
        os.killpg(s.process.pid, signal.SIGINT)
    else:
        s.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code, stderr = s.end()
    took = time.monotonic() - started
    sig = signal.SIGINT if how == "ctrl-c" else signal.SIGTERM
    assert code == 128 + sig, stderr
    assert "Traceback" not in stderr and f"stopped by {sig.name}" in stderr, stderr
    assert took < 45, f"serve took {took:.0f} s to stop"
    assert [pid for pid in kids if alive(pid)] == []


def test_a_failed_prefect_start_fails_the_demo_job_with_its_cause(
    serve: Callable[..., Serve], redis_server: str
) -> None:
    """Prefect given 0.2 s twice: serve says why on one line, the demo job (in a Redis that outlives serve)
    carries the same cause, and the Prefect server it started is gone."""
    s = serve(
        PTYCHOSTREAM_PREFECT_START_TIMEOUT_S="0.2",
        PTYCHOSTREAM_PREFECT_START_ATTEMPTS="2",
        PTYCHOSTREAM_REDIS_URL=redis_server,
    )
    wait_for(lambda: s.children() != set() or s.process.poll() is not None, 60, "serve's children")
    kids = s.children()
    code, stderr = s.end()
    assert code == 2 and "Traceback" not in stderr, stderr
    cause = "Prefect's temporary server did not answer within 0.2 s (attempt 2 of 2"
    assert f"ptychostream serve: error: {cause}" in stderr.splitlines()[-1], stderr
    client = redis.Redis.from_url(redis_server)
    (job_id,) = client.zrange(f"{s.prefix}jobs", 0, -1)
    job = client.hgetall(f"{s.prefix}job:{job_id.decode()}")
    client.delete(*client.scan_iter(match=f"{s.prefix}*"))
    assert job[b"state"] == b"failed" and cause in job[b"message"].decode()
    assert [pid for pid in kids if alive(pid)] == []


def test_children_die_with_a_killed_serve(serve: Callable[..., Serve]) -> None:
    """SIGKILL leaves no cleanup to run: the kernel's parent-death signal ends redis-server and Prefect."""
    s = serve()
    wait_for(lambda: len(s.children()) >= 2 and s.demo_job() != {}, START_S, "serve to start")
    kids = s.children()
    s.process.send_signal(signal.SIGKILL)
    s.process.wait()
    wait_for(lambda: not any(alive(pid) for pid in kids), 15, "the children to die with their parent")


def test_each_results_root_has_its_own_key_prefix(tmp_path: Path) -> None:
    """Two instances started in different folders never share jobs; the same folder finds its jobs again."""
    from service.settings import Settings

    here, there = Settings(results_root=tmp_path / "a"), Settings(results_root=tmp_path / "b")
    assert here.key_prefix != there.key_prefix and here.key_prefix.startswith("ptychostream:")
    assert Settings(results_root=tmp_path / "a" / ".." / "a").key_prefix == here.key_prefix
    assert Settings(results_root=tmp_path / "a", key_prefix="shared:").key_prefix == "shared:"


def test_a_port_in_use_is_one_line_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"ptychostream serve: error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use)\n"
    )
