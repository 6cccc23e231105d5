"""The operator dashboard: static HTML/JS/CSS, no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboard"
router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(DASHBOARD / "index.html", media_type="text/html")
