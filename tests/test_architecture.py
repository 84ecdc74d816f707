"""The layout rules of docs/design.md, checked on the source tree (ast, no imports executed).

- dependencies point one way: flows -> tasks -> models;
- stage modules of tasks/ are peers: none imports another stage (what two stages share lives in
  tasks/store/ or another shared module);
- no module imports another module's `_private` names; no import cycles among first-party modules;
- argparse and print() only in flows/; every @flow in flows/;
- models/ is pure TF/TFP; only the MLflow adapter imports mlflow;
- every tf.function is traced without AutoGraph (graph code says tf.cond / tf.while_loop itself;
  AutoGraph's source transformation cost ~1.5 s of every training command's start);
- data/ and mlflow/ hold no Python that could shadow a package.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"models": 0, "tasks": 1, "flows": 2}
FORBIDDEN_IN_MODELS = {"prefect", "mlflow", "pandas", "pyarrow"}
STAGES = {"ingest", "train", "evaluate", "register", "export", "corrupt", "restore", "sample"}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
# The MLflow adapter may be longer as long as it only talks to MLflow (docs/design.md).
LONG_FILES_ALLOWED = {"tasks/tracking.py"}


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _all_sources() -> list[Path]:
    return [p for pkg in LAYERS for p in _sources(pkg)]


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _first_party_edges(path: Path, modules: set[str]) -> set[str]:
    """First-party modules ``path`` imports (``from a import b`` counts a.b if it is a module)."""
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules}


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_dependencies_point_one_way(package: str) -> None:
    for path in _sources(package):
        for name in _imports(path) & set(LAYERS):
            assert LAYERS[name] <= LAYERS[package], f"{_rel(path)} imports upward: {name}"


def test_stage_modules_are_peers() -> None:
    modules = {_module(p) for p in _all_sources()}
    for stage in sorted(STAGES):
        path = REPO / "tasks" / f"{stage}.py"
        others = {f"tasks.{s}" for s in STAGES - {stage}}
        bad = _first_party_edges(path, modules) & others
        assert not bad, f"{_rel(path)} imports the stage(s) {sorted(bad)}; share via tasks/store/"


def test_no_module_imports_another_modules_private_names() -> None:
    offences = []
    for path in _all_sources():
        tree = _tree(path)
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] not in LAYERS:
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offences.append(f"{_rel(path)}: from {node.module} import {alias.name}")
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in LAYERS:
                        aliases[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                offences.append(f"{_rel(path)}: {aliases[node.value.id]}.{node.attr}")
    assert not offences, "private names used across modules:\n" + "\n".join(sorted(offences))


def test_no_import_cycles() -> None:
    paths = {_module(p): p for p in _all_sources()}
    graph = {m: _first_party_edges(p, set(paths)) - {m} for m, p in paths.items()}
    # A package imports its submodules to re-export them; that is not a cycle of layers.
    for m in graph:
        graph[m] = {d for d in graph[m] if not d.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_argparse_print_and_flows_live_only_in_flows() -> None:
    for path in _sources("tasks") + _sources("models"):
        tree = _tree(path)
        assert "argparse" not in _imports(path), f"{_rel(path)} imports argparse"
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "print", f"{_rel(path)}:{node.lineno} calls print()"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for dec in node.decorator_list:
                    target = dec.func if isinstance(dec, ast.Call) else dec
                    name = (
                        target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
                    )
                    assert name != "flow", f"{_rel(path)}:{node.lineno} defines a @flow"
    for path in _sources("flows"):
        if path.parent.name != "commands" and path.name not in ("cli.py",):
            assert "argparse" not in _imports(path), f"{_rel(path)}: argparse only in commands/"


def test_files_and_functions_stay_readable() -> None:
    for path in _all_sources():
        lines = path.read_text().count("\n")
        if _rel(path) not in LONG_FILES_ALLOWED:
            assert lines <= MAX_FILE_LINES, f"{_rel(path)} has {lines} lines (> {MAX_FILE_LINES})"
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, (
                    f"{_rel(path)}:{node.lineno} {node.name} has {length} lines"
                )


def test_models_is_pure_tf() -> None:
    for path in _sources("models"):
        bad = _imports(path) & FORBIDDEN_IN_MODELS
        assert not bad, f"{_rel(path)} imports {sorted(bad)}; models/ is pure TF/TFP"


def _is_tf_function(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "function"
        and isinstance(node.value, ast.Name)
        and node.value.id == "tf"
    )


def test_every_tf_function_is_traced_without_autograph() -> None:
    found, bad = 0, []
    for path in _all_sources():
        nodes = list(ast.walk(ast.parse(path.read_text())))
        calls = [n for n in nodes if isinstance(n, ast.Call) and _is_tf_function(n.func)]
        called = {id(c.func) for c in calls}
        for node in calls:
            found += 1
            off = any(
                k.arg == "autograph"
                and isinstance(k.value, ast.Constant)
                and k.value.value is False
                for k in node.keywords
            )
            if not off:
                bad.append(f"{_rel(path)}:{node.lineno}")
        for node in nodes:  # a bare `@tf.function` or `tf.function` passed along: AutoGraph on
            if _is_tf_function(node) and id(node) not in called:
                found += 1
                bad.append(f"{_rel(path)}:{node.lineno}")
    assert found >= 20, f"expected the package's tf.functions, found {found}"
    assert not bad, f"tf.function without autograph=False at {bad}"


def test_only_the_adapter_imports_mlflow() -> None:
    allowed = {REPO / "tasks" / "tracking.py", REPO / "tasks" / "pyfunc_model.py"}
    users = {p for p in _all_sources() if "mlflow" in _imports(p)}
    assert users <= allowed, (
        f"mlflow imported outside the adapter: {sorted(map(_rel, users - allowed))}"
    )


def test_store_folders_hold_no_python_that_could_shadow_a_package() -> None:
    """No `__init__.py` anywhere and no `.py` at the top of data/ or mlflow/ (a `mlflow/__init__.py`
    would shadow the real package). MLflow's own artifacts (models-from-code files under
    mlflow/artifacts/) are allowed: nothing imports them from the repository root."""
    for folder in ("data", "mlflow"):
        base = REPO / folder
        assert (base / "README.md").is_file()
        assert not list(base.rglob("__init__.py")), f"{folder}/ holds an __init__.py"
        assert not list(base.glob("*.py")), f"{folder}/ holds a Python module at its top"
        stray = [p for p in base.rglob("*.py") if "artifacts" not in p.relative_to(base).parts]
        assert not stray, f"{folder}/ holds Python outside MLflow artifacts: {stray[:3]}"


def test_packages_listed_explicitly_and_imports_resolve_to_the_right_places() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(meta["tool"]["setuptools"]["packages"])
    found = {_module(p) for p in _all_sources() if p.name == "__init__.py"}
    assert listed == found, f"pyproject packages {sorted(listed ^ found)} differ from the tree"
    assert meta["project"]["name"] == "aevb-pipeline"
    assert meta["project"]["scripts"]["aevb"] == "flows.cli:entry"
    for pkg in LAYERS:
        origin = Path(importlib.util.find_spec(pkg).origin).resolve()
        assert origin == REPO / pkg / "__init__.py", f"{pkg} resolves to {origin}"
    mlflow_origin = Path(importlib.util.find_spec("mlflow").origin).resolve()
    assert "site-packages" in mlflow_origin.parts, f"mlflow resolves to {mlflow_origin}"
    assert REPO / "mlflow" not in mlflow_origin.parents
