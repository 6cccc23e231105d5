"""The operator dashboard: static HTML/JS/CSS (ES modules), no build step; always revalidated, so an open
dashboard picks up a new version at its next reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboard"
REVALIDATE = {"Cache-Control": "no-cache"}
router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(DASHBOARD / "index.html", media_type="text/html", headers=REVALIDATE)


class DashboardFiles(StaticFiles):
    """The dashboard's files, each to be revalidated (ETag) before the browser reuses it."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(REVALIDATE)
        return response


def files() -> DashboardFiles:
    return DashboardFiles(directory=DASHBOARD)
