"""The layout is the architecture: which folder may import which, checked on the source's imports.

Every package folder runs in one process (or is shared by several) and may import only the
folders of :data:`MAY_IMPORT`, the table of ARCHITECTURE.md. Imports are read with :mod:`ast`,
those inside functions included, so a lazy import cannot slip past.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("toolbox", "workers", "service")

MAY_IMPORT: dict[str, set[str]] = {
    "toolbox": {"toolbox"},
    "workers": {"toolbox", "workers"},
    "workers.driver": {"toolbox", "workers", "workers.driver", "workers.trial"},
    "workers.trial": {"toolbox", "workers", "workers.trial"},
    "workers.warm": {"toolbox", "workers", "workers.trial", "workers.warm"},
    "service": {"toolbox", "workers", "service"},
    "service.store": {"service", "service.store", "toolbox", "workers"},
    "service.dispatch": {"service", "service.dispatch", "service.store", "workers"},
    "service.api": {"service", "service.api", "service.dispatch", "service.store", "workers"},
    "service.job": {
        "service",
        "service.job",
        "service.store",
        "workers",
        "workers.driver",
        "workers.warm",
    },
    "service.cli": {"service", "service.cli", "workers"},
}
"""Folder (as a dotted package) -> the folders its modules may import. A folder's own modules
are its files, not its sub-folders: ``workers`` is spec, events, errors, tracking, jobs,
analysis, plots and summary."""

NEVER: dict[str, tuple[str, ...]] = {
    "toolbox": ("ray", "mlflow", "fastapi", "starlette", "sqlalchemy", "httpx"),
    "workers": ("torch", "ray.tune", "fastapi", "starlette", "sqlalchemy"),
    "workers.driver": ("torch", "fastapi", "starlette", "sqlalchemy"),
    "workers.trial": ("fastapi", "starlette", "sqlalchemy", "mlflow"),
    # A zygote that loaded Ray's core would fork children with its configuration: never Ray.
    "workers.warm": ("ray", "fastapi", "starlette", "sqlalchemy", "mlflow"),
    "service": ("torch", "ray"),
    "service.store": ("torch", "ray", "mlflow", "fastapi"),
    "service.dispatch": ("torch", "ray.tune", "fastapi"),
    "service.api": ("torch", "ray.tune"),
    "service.job": ("torch", "fastapi"),
    "service.cli": ("torch", "ray", "mlflow", "fastapi", "sqlalchemy"),
}
"""Folder -> third-party packages none of its modules imports (directly; a project module it
may import may still bring them, which the import test below checks for the API)."""


PART_OF_PARENT = {
    "toolbox.packed",
    "service.api.routes",
    "service.store.migrations",
    "service.store.migrations.versions",
}
"""Sub-folders that belong to their parent folder's row of the table."""


def _modules() -> Iterator[tuple[str, Path]]:
    for top in PROJECT:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def _package_of(name: str) -> str:
    """The package a dotted module name lives in (a package's own name for a package)."""
    parts = name.split(".")
    is_package = (ROOT.joinpath(*parts) / "__init__.py").exists()
    return name if is_package else ".".join(parts[:-1])


def _folder(package: str) -> str:
    """The folder of the table that holds ``package``: the longest entry it starts with."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in MAY_IMPORT:
            return ".".join(parts[:n])
    raise AssertionError(f"{package} is in no folder of the table")


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(package: str, path: Path) -> Iterator[str]:
    """Every module the file imports, absolute, wherever in the file the import is."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # ``from service import store``: the names may be modules themselves
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _violations() -> list[str]:
    found = []
    for module, path in _modules():
        package = _package_of(module)
        home = _folder(package)
        for target in _imports(package, path):
            rel = path.relative_to(ROOT)
            if target.split(".")[0] in PROJECT and _is_module(target):
                where = _folder(_package_of(target))
                if where not in MAY_IMPORT[home]:
                    found.append(f"{rel} ({home}) imports {target} ({where})")
            elif any(target == n or target.startswith(n + ".") for n in NEVER[home]):
                found.append(f"{rel} ({home}) imports {target}")
    return found


def test_every_folder_imports_only_what_the_table_allows() -> None:
    assert _violations() == []


def test_the_table_covers_every_package_folder() -> None:
    packages = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in PROJECT
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert sorted(packages - set(MAY_IMPORT) - PART_OF_PARENT) == []


def test_architecture_md_has_a_row_for_every_folder_of_the_table() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    missing = [f for f in MAY_IMPORT if f"`{f.replace('.', '/')}/`" not in text]
    assert missing == []


def test_the_check_sees_lazy_and_package_name_imports(tmp_path: Path) -> None:
    source = tmp_path / "example.py"
    source.write_text("def f():\n    from service import store\n    import torch\n")
    found = set(_imports("workers", source))
    assert {"service.store", "torch"} <= found
    assert _folder(_package_of("service.store")) not in MAY_IMPORT["workers"]


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("service.api.app", ("ray.tune", "torch")),
        ("service.cli.main", ("ray", "torch", "mlflow", "fastapi")),
        ("workers.driver.sweep", ("torch",)),
    ],
)
def test_importing_a_process_entry_point_loads_nothing_it_must_not(
    module: str, absent: tuple[str, ...]
) -> None:
    """What a process imports at start-up, followed through every module it pulls in."""
    code = f"import sys, {module}\nprint(' '.join(m for m in {absent!r} if m in sys.modules))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
