"""The dashboard in headless Chromium against a real ``serve --demo`` (real Redis, real worker), reads behind a
token, driven through its own controls:

- sign-in: the read token is traded for an HttpOnly session cookie, kept in this tab's sessionStorage only;
- startup: the status line says what is happening from the first second (never zeros or broken images);
- the demo's stream job: previews with colour and scale bars, scan map, frame map and accounting, an ETA while
  streaming, the scan-end mark; the result downloaded with the Download button;
- a file job submitted with the form (scan file chosen from the data root, two probe modes; the read token may
  not, the API token may), cancelled with the Cancel button, its partial result downloaded;
- the job filter and Clear ended; the layout at 1280 px and on a wall display.

Screenshots are kept under tests/service/artifacts/dashboard/ (ignored by git). SIGTERM then ends ``serve`` and
everything it started."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import pytest

from service.demo import free_port
from service.settings import Settings
from tests.service.conftest import TOKEN, wait_for

ARTIFACTS = Path(__file__).parent / "artifacts" / "dashboard"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
READ_TOKEN = "dashboard-read-token-0123"
DEMO_FRAMES = 100
STARTUP_WORDS = ("Queued", "Starting", "Waiting for the detector", "frames received", "Streaming")


def test_dashboard_drives_a_stream_and_a_file_job(settings: Settings, scan_file: str, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium not installed (apt-get install -y chromium; .ci/run does this)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "PTYCHOSTREAM_REDIS_URL": settings.redis_url,
        "PTYCHOSTREAM_KEY_PREFIX": settings.key_prefix,
        "PTYCHOSTREAM_DATA_ROOT": str(settings.data_root),
        "PTYCHOSTREAM_RESULTS_ROOT": str(tmp_path / "results"),
        "PTYCHOSTREAM_PREVIEW_INTERVAL_S": "0.3",
        "PTYCHOSTREAM_API_TOKEN": TOKEN,
        "PTYCHOSTREAM_READ_ACCESS": "token",
        "PTYCHOSTREAM_READ_TOKEN": READ_TOKEN,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "OMP_NUM_THREADS": "1",
    }
    demo = ["--demo", "--demo-positions", str(DEMO_FRAMES), "--demo-rate", "12", "--demo-iterations", "15"]
    argv = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), *demo]
    server = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
            page.on("dialog", lambda dialog: dialog.accept())
            url = f"http://127.0.0.1:{port}/"
            wait_for(lambda: _opens(page, url), 120, "the dashboard to answer")
            _sign_in(page)
            _watch_startup(page)
            _watch_stream_job(page, tmp_path)
            _file_job(page, scan_file, tmp_path)
            _filter_and_clear(page)
            _layouts(page)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=90)
    wait_for(lambda: not _group_alive(server.pid), 10, "serve's children (Prefect's temporary server) to exit")


def _sign_in(page: Any) -> None:
    page.wait_for_selector("#login:not([hidden])", timeout=30_000)
    page.fill("#token", "wrong-token-xxxxxxxx")
    page.click("#login button")
    page.wait_for_function("document.getElementById('login-error').textContent !== ''")
    assert page.text_content("#login-error") == "wrong token"
    page.fill("#token", READ_TOKEN)
    page.click("#login button")
    page.wait_for_selector("#login", state="hidden", timeout=30_000)
    assert "ptychostream_session" not in page.evaluate("document.cookie")  # HttpOnly
    assert page.evaluate("sessionStorage.getItem('ptychostream.token')") == READ_TOKEN
    assert READ_TOKEN not in page.url


def _watch_startup(page: Any) -> None:
    """Before the first preview, the status line names the phase and no image is shown broken."""
    words = "[" + ", ".join(repr(w) for w in STARTUP_WORDS) + "]"
    page.wait_for_function(f"{words}.some(w => document.getElementById('status').textContent.includes(w))")
    assert page.text_content("#job-id") != "—"
    broken = "[...document.images].filter(i => !i.hidden && !(i.complete && i.naturalWidth > 0)).length"
    assert page.evaluate(broken) == 0
    page.screenshot(path=str(ARTIFACTS / "startup.png"))


def _watch_stream_job(page: Any, tmp_path: Path) -> None:
    """Streaming: every channel with its bars, the scan map, the frame map, an ETA; then the scan-end mark and the
    result downloaded with the Download button."""
    shown = "(i => i && !i.hidden && i.naturalWidth > 0)(document.querySelector(`figure[data-name='amplitude'] img`))"
    page.wait_for_function(shown, timeout=120_000)
    page.wait_for_function("document.getElementById('scan-map').dataset.points > 0", timeout=30_000)
    if "Streaming" in page.text_content("#status"):
        page.wait_for_function("/ s/.test(document.getElementById('eta').textContent)", timeout=10_000)
        assert "scan" in page.text_content("#eta-detail")
    names = page.eval_on_selector_all("#channels figure", "fs => fs.map(f => f.dataset.name)")
    assert names[:3] == ["amplitude", "phase", "probe"] and "probe_farfield" in names
    for name in ("amplitude", "phase", "probe"):
        figure = f"#channels figure[data-name='{name}']"
        assert page.locator(f"{figure} .colourbar .tick").count() >= 3, name
        page.wait_for_selector(f"{figure} img:not([hidden])", timeout=10_000)
        page.wait_for_selector(f"{figure} .scalebar:not([hidden])", timeout=10_000)
        assert page.text_content(f"{figure} .scalebar b").endswith(("nm", "µm")), name
    page.screenshot(path=str(ARTIFACTS / "stream-live.png"))
    page.wait_for_function("document.getElementById('job-state').textContent === 'succeeded'", timeout=120_000)
    page.wait_for_function("document.getElementById('frame-map').dataset.cells > 0", timeout=10_000)
    assert page.text_content("#frames") == f"{DEMO_FRAMES} / {DEMO_FRAMES}"
    assert int(page.get_attribute("#frame-map", "data-cells")) == DEMO_FRAMES
    assert int(page.get_attribute("#scan-map", "data-points")) == DEMO_FRAMES
    assert int(page.get_attribute("#loss-curve", "data-scan-end")) > 0
    accounting = page.text_content("#accounting")
    assert f"received{DEMO_FRAMES} of {DEMO_FRAMES}" in accounting and "missing0" in accounting, accounting
    page.screenshot(path=str(ARTIFACTS / "stream-done.png"), full_page=True)
    with page.expect_download() as download:
        page.click("#download")
    _check_result(download.value, tmp_path / "stream.h5", DEMO_FRAMES)


def _file_job(page: Any, scan_file: str, tmp_path: Path) -> None:
    """Submit a long file job with the form (the read token may not; the API token may), watch it, cancel it,
    download its partial result."""
    options = "[...document.querySelectorAll('#submit-file option')]"
    page.wait_for_function(f"{options}.some(o => o.value === {scan_file!r})")
    page.select_option("#submit-file", scan_file)
    page.fill("#submit-schedule", "epie:100000")
    page.fill("#submit-modes", "2")
    page.click("#submit button[type=submit]")  # with the read token of the sign-in: refused
    page.wait_for_function("document.getElementById('submit-result').textContent.includes('cannot write')")
    page.click("#token-forget")
    page.fill("#write-token-input", TOKEN)
    page.click("#token-form button")
    assert page.text_content("#token-state") == "token held in this tab" and TOKEN not in page.url
    page.click("#submit button[type=submit]")
    page.wait_for_function("document.getElementById('submit-result').textContent.startsWith('queued job')")
    job_id = page.text_content("#submit-result").split()[-1]
    page.wait_for_function(f"document.getElementById('job-id').textContent === {job_id!r}", timeout=10_000)
    page.wait_for_selector("#channels figure[data-name='probe_2'] img:not([hidden])", timeout=120_000)
    assert "% power" in page.text_content("#channels figure[data-name='probe_2'] figcaption")
    assert page.text_content("#frames").endswith("(file)")
    page.screenshot(path=str(ARTIFACTS / "file-running.png"))
    page.click("#cancel")
    page.wait_for_function("document.getElementById('control-result').textContent.includes('asked to stop')")
    page.wait_for_function("document.getElementById('job-state').textContent === 'cancelled'", timeout=60_000)
    page.wait_for_selector("#download:not(.disabled)", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "file-cancelled.png"))
    with page.expect_download() as download:
        page.click("#download")
    _check_result(download.value, tmp_path / "file.h5", 36)


def _filter_and_clear(page: Any) -> None:
    page.select_option("#job-filter", "cancelled")
    page.wait_for_function("document.querySelectorAll('#jobs tr').length === 1", timeout=10_000)
    assert page.text_content("#jobs td.state") == "cancelled"
    for _ in range(5):  # the cancelled job's worker may still hold its lease for a heartbeat
        page.evaluate("document.getElementById('clear-result').textContent = ''")
        page.click("#clear-ended")  # confirm() is accepted
        page.wait_for_function("document.getElementById('clear-result').textContent.includes('deleted')")
        if page.text_content("#clear-result") == "· deleted 1 ended job":
            break
        page.wait_for_timeout(1000)
    assert page.text_content("#clear-result") == "· deleted 1 ended job"
    page.wait_for_function("document.querySelectorAll('#jobs tr').length === 0", timeout=10_000)
    page.select_option("#job-filter", "")
    page.wait_for_function("document.querySelectorAll('#jobs tr').length === 1", timeout=10_000)
    assert page.text_content("#jobs td.state") == "succeeded"
    page.click("#jobs tr")
    page.wait_for_function(
        "document.querySelector(`#channels figure[data-name='amplitude'] img:not([hidden])`)", timeout=30_000
    )


def _layouts(page: Any) -> None:
    """At 1280 x 800 the loss plot is above the fold and the jobs table fits its column; on a 2560 x 1440 wall the
    text grows with the window."""
    box = page.locator("#loss-curve").bounding_box()
    assert box["y"] + box["height"] < 800, box
    aside = page.locator("aside").bounding_box()
    loss_header = page.locator(".table-wrap th:last-child").bounding_box()
    assert loss_header["x"] + loss_header["width"] <= aside["x"] + aside["width"], (loss_header, aside)
    page.screenshot(path=str(ARTIFACTS / "1280.png"))
    small = page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")
    page.set_viewport_size({"width": 2560, "height": 1440})
    page.wait_for_timeout(1500)
    assert page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)") > 1.4 * small
    assert page.locator("#loss-curve").bounding_box()["y"] < 1440 / 3
    page.screenshot(path=str(ARTIFACTS / "wall-2560.png"))


def _check_result(download: Any, path: Path, frames: int) -> None:
    download.save_as(path)
    with h5py.File(path, "r") as f:
        assert f["object"].ndim == 2 and len(f["positions"]) == frames


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _opens(page: Any, url: str) -> bool:
    try:
        return bool(page.goto(url).ok)
    except Exception:  # the server is still starting
        return False
