"""The scan files a job may name: every CXI/HDF5 file under the data root, as paths relative to it."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.deps import Readable, SettingsDep
from service.errors import responses

router = APIRouter(prefix="/api/files", tags=["files"])
SUFFIXES = (".cxi", ".h5", ".hdf5")
MAX_FILES = 1000


class ScanFile(BaseModel):
    path: str = Field(description="Relative to the data root: what a job's input.file takes.")
    size: int = Field(description="Bytes.")
    modified: float = Field(description="Unix time of the last change.")


class ScanFiles(BaseModel):
    files: list[ScanFile]
    truncated: bool = Field(description=f"True when more than {MAX_FILES} files were found (the first are listed).")


@router.get("", response_model=ScanFiles, dependencies=[Readable], responses=responses(401))
def list_files(settings: SettingsDep) -> ScanFiles:
    """Scan files under the data root (hidden folders skipped, links leaving the root left out), folder by folder
    in name order."""
    root = settings.data_root.resolve()
    found: list[ScanFile] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.lower().endswith(SUFFIXES) or name.startswith("."):
                continue
            path = Path(folder) / name
            try:
                real, stat = path.resolve(), path.stat()
            except (OSError, RuntimeError):
                continue
            if real.is_relative_to(root) and real.is_file():
                relative = path.relative_to(root).as_posix()
                found.append(ScanFile(path=relative, size=stat.st_size, modified=stat.st_mtime))
            if len(found) > MAX_FILES:
                return ScanFiles(files=found[:MAX_FILES], truncated=True)
    return ScanFiles(files=found, truncated=False)
