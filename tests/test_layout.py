"""The layout: `pipeline/` is Ray-free dataflow, `deployments/` only Serve deployments and the
graph, the CLI its own package, measuring code in `benchmarks/`; no import cycles."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "deployments", "cli", "benchmarks")
# who may import whom (a package always imports itself)
ALLOWED = {
    "pipeline": set(),
    "deployments": {"pipeline"},
    "benchmarks": {"pipeline", "deployments"},
    "cli": {"pipeline", "deployments", "benchmarks"},
}


def _package_of(path: Path) -> str:
    """The dotted package a file's relative imports start from (``pipeline.backends`` for
    ``pipeline/backends/card.py`` and for ``pipeline/backends/__init__.py``)."""
    return ".".join(path.parent.relative_to(REPO).parts)


def _is_module(dotted: str) -> bool:
    parts = dotted.split(".")
    return REPO.joinpath(*parts).with_suffix(".py").exists() or REPO.joinpath(*parts, "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """Project modules ``path`` imports (absolute, dotted), at any depth of the file."""
    package = _package_of(path)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = importlib.util.resolve_name("." * node.level, package)  # `..x`: one package up
                base = f"{anchor}.{base}" if base else anchor
                if not node.module:  # from . import x, y: modules x, y, or names of the package's own
                    out |= {f"{anchor}.{a.name}" if _is_module(f"{anchor}.{a.name}") else anchor for a in node.names}
                    continue
            out.add(base)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _modules() -> dict[str, set[str]]:
    """Every module of the packages, subpackages (``pipeline/backends``, ``pipeline/lifecycle``) too."""
    graph = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            graph[name] = {m for m in _imports(path) if m != name}
    assert {"pipeline.backends.card", "pipeline.lifecycle.swap", "pipeline.schema"} <= set(graph)
    return graph


def test_packages_only_import_downwards():
    for module, deps in _modules().items():
        package = module.split(".")[0]
        for dep in deps:
            target = dep.split(".")[0]
            assert target == package or target in ALLOWED[package], f"{module} imports {dep}"


def test_no_import_cycles_between_modules():
    graph = _modules()
    known = set(graph)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            dep = dep if dep in known else dep.rsplit(".", 1)[0]  # `from pkg.mod import name`
            if dep not in known or dep == node:
                continue
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " → ".join(path[path.index(dep):] + [dep]))
            if state.get(dep) is None:
                visit(dep, path + [dep])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_deployments_hold_only_serve_code():
    """No command-line, benchmark or soak code beside the Serve classes."""
    for path in (REPO / "deployments").glob("*.py"):
        text = path.read_text()
        assert "argparse" not in text, f"{path.name}: command-line code belongs in cli/"
        assert "benchmarks" not in _imports(path), f"{path.name}: imports benchmark code"


def test_bench_results_default_to_the_state_dir(tmp_path):
    from benchmarks.report import write_results

    path = write_results("{}", None, str(tmp_path / "state"), "host1")
    assert path.parent == tmp_path / "state" / "bench" and path.name.endswith("-host1.json")
    chosen = write_results("{}", str(tmp_path / "x" / "mine.json"), str(tmp_path / "state"), "host1")
    assert chosen == tmp_path / "x" / "mine.json" and chosen.read_text() == "{}\n"


def test_every_project_import_names_a_module_that_exists():
    """Imports inside functions are only checked when they run: catch a moved module here."""
    graph = _modules()
    for module, deps in graph.items():
        for dep in deps:
            parts = dep.split(".")
            as_module = REPO.joinpath(*parts).with_suffix(".py")
            as_package = REPO.joinpath(*parts, "__init__.py")
            parent = REPO.joinpath(*parts[:-1]).with_suffix(".py")  # `from pkg.mod import name`
            assert as_module.exists() or as_package.exists() or parent.exists() or dep in PACKAGES, \
                f"{module} imports {dep}, which does not exist"
