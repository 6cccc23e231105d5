"""The dashboard in headless Chromium during a live ``serve --demo`` job with reads behind a token: it asks
for the token once (an HttpOnly session cookie, invisible to scripts, then carries every fetch, image and
event stream), previews change, the job succeeds; SIGTERM then ends ``serve`` and everything it started."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.demo import free_port
from service.settings import Settings
from tests.service.conftest import wait_for

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
READ_TOKEN = "dashboard-read-token-0123"


def test_dashboard_shows_a_live_demo_reconstruction(settings: Settings, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium not installed (apt-get install -y chromium; .ci/run does this)")
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {
        **os.environ,
        "PTYCHOSTREAM_REDIS_URL": settings.redis_url,
        "PTYCHOSTREAM_KEY_PREFIX": settings.key_prefix,
        "PTYCHOSTREAM_RESULTS_ROOT": str(tmp_path / "results"),
        "PTYCHOSTREAM_PREVIEW_INTERVAL_S": "0.3",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "OMP_NUM_THREADS": "1",
        "PTYCHOSTREAM_READ_ACCESS": "token",
        "PTYCHOSTREAM_READ_TOKEN": READ_TOKEN,
    }
    command = ["serve", "--port", str(port), "--demo", "--demo-positions", "100", "--demo-rate", "12"]
    argv = [sys.executable, "-m", "service.cli", *command, "--demo-iterations", "15"]
    server = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            url = f"http://127.0.0.1:{port}/"
            wait_for(lambda: _opens(page, url), 120, "the dashboard to answer")
            page.wait_for_selector("#login:not([hidden])", timeout=30_000)
            page.fill("#token", "wrong-token-xxxxxxxx")
            page.click("#login button")
            page.wait_for_function("document.getElementById('login-error').textContent !== ''")
            assert page.text_content("#login-error") == "wrong token"
            page.fill("#token", READ_TOKEN)
            page.click("#login button")
            page.wait_for_selector("#login", state="hidden", timeout=30_000)
            assert "ptychostream_session" not in page.evaluate("document.cookie")  # HttpOnly
            page.wait_for_function("document.getElementById('job-state').textContent === 'running'", timeout=120_000)
            page.wait_for_function("document.getElementById('img-amplitude').naturalWidth > 0", timeout=60_000)
            first = page.get_attribute("#img-amplitude", "src")
            page.wait_for_function(
                f"(s => {{ const i = document.getElementById('img-amplitude'); return i.src.endsWith(s) === false"
                f" && i.complete && i.naturalWidth > 0; }})({first!r})",
                timeout=60_000,
            )
            assert page.get_attribute("#img-amplitude", "src") != first
            page.wait_for_function("document.getElementById('job-state').textContent === 'succeeded'", timeout=120_000)
            assert page.text_content("#frames") == "100 / 100"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=90)
    wait_for(lambda: not _group_alive(server.pid), 10, "serve's children (Prefect's temporary server) to exit")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _opens(page, url: str) -> bool:  # noqa: ANN001
    try:
        return page.goto(url).ok
    except Exception:  # the server is still starting
        return False
