"""The service never imports torch: the API process stays light; workers import it in their entry points."""

from __future__ import annotations

import subprocess
import sys


def test_service_app_does_not_import_torch() -> None:
    code = (
        "import sys; import service.app, service.cli, service.store, service.demo, flows.reporter; "
        "service.app.create_app; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
