"""The layout rules of STYLE.md §1-2, checked on the source tree (ast, no imports executed)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"models": 0, "tasks": 1, "flows": 2}
FORBIDDEN_IN_MODELS = {"prefect", "mlflow", "pandas", "pyarrow"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_dependencies_point_one_way(package: str) -> None:
    for path in _sources(package):
        for name in _imports(path) & set(LAYERS):
            assert LAYERS[name] <= LAYERS[package], (
                f"{path.relative_to(REPO)} imports upward: {name}"
            )


def test_models_is_pure_tf() -> None:
    for path in _sources("models"):
        bad = _imports(path) & FORBIDDEN_IN_MODELS
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}; models/ is pure TF/TFP"


def test_only_the_adapter_imports_mlflow() -> None:
    allowed = {REPO / "tasks" / "tracking.py", REPO / "tasks" / "pyfunc_model.py"}
    users = {p for pkg in LAYERS for p in _sources(pkg) if "mlflow" in _imports(p)}
    assert users <= allowed, (
        f"mlflow imported outside the adapter: {sorted(str(p) for p in users - allowed)}"
    )


def test_store_folders_hold_no_python() -> None:
    for folder in ("data", "mlflow"):
        assert not list((REPO / folder).rglob("*.py")), (
            f"{folder}/ must hold no Python (it would shadow packages)"
        )
        assert (REPO / folder / "README.md").is_file()


def test_packages_listed_explicitly_and_imports_resolve_to_the_right_places() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(meta["tool"]["setuptools"]["packages"]) == set(LAYERS)
    assert meta["project"]["name"] == "aevb-pipeline"
    assert meta["project"]["scripts"]["aevb"] == "flows.cli:main"
    for pkg in LAYERS:
        origin = Path(importlib.util.find_spec(pkg).origin).resolve()
        assert origin == REPO / pkg / "__init__.py", f"{pkg} resolves to {origin}"
    mlflow_origin = Path(importlib.util.find_spec("mlflow").origin).resolve()
    assert "site-packages" in mlflow_origin.parts, (
        f"mlflow resolves to {mlflow_origin}, not site-packages"
    )
    assert REPO / "mlflow" not in mlflow_origin.parents
