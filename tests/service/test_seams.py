"""The package import rule: ``flows/`` reaches ``service/`` only through ``service.flow_api``; ``service/`` imports
``flows/`` only inside the CLI's command functions (the entry points); ``workers/`` imports neither."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEAM = "service.flow_api"
PACKAGES = ("service", "flows", "workers")


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imports(path: Path, root: Path = ROOT) -> Iterator[tuple[str, bool]]:
    """Every module ``path`` imports from the project's packages, and whether the import sits inside a function."""
    package = path.relative_to(root).with_suffix("").parts[:-1]

    def visit(node: ast.AST, nested: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                yield from ((alias.name, nested) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                parts = [*package[: len(package) - child.level + 1], child.module] if child.level else [child.module]
                base = ".".join(p for p in parts if p)
                if base in PACKAGES:  # ``from service import flow_api``
                    yield from ((f"{base}.{alias.name}", nested) for alias in child.names)
                else:
                    yield base, nested
            yield from visit(child, nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    for name, nested in visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False):
        if name.partition(".")[0] in PACKAGES:
            yield name, nested


def test_the_walker_sees_relative_nested_and_package_imports(tmp_path: Path) -> None:
    sample = tmp_path / "service" / "sample.py"
    sample.parent.mkdir()
    sample.write_text(
        "import json\nfrom . import store\nfrom service import flow_api\ndef f():\n    import flows.worker\n"
    )
    found = list(imports(sample, tmp_path))
    assert found == [("service.store", False), ("service.flow_api", False), ("flows.worker", True)]


def test_flows_reach_service_only_through_the_seam() -> None:
    crossing = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in modules("flows")
        for name, _ in imports(path)
        if name.partition(".")[0] == "service" and name != SEAM
    ]
    assert crossing == []
    assert any(name == SEAM for path in modules("flows") for name, _ in imports(path))


def test_service_imports_flows_only_in_cli_entry_points() -> None:
    crossing = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in modules("service")
        for name, nested in imports(path)
        if name.partition(".")[0] == "flows"
        and not (nested and path.relative_to(ROOT).parts[:2] in {("service", "cli.py"), ("service", "cli")})
    ]
    assert crossing == []


def test_workers_import_neither_service_nor_flows() -> None:
    crossing = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in modules("workers")
        for name, _ in imports(path)
        if name.partition(".")[0] in ("service", "flows")
    ]
    assert crossing == []
