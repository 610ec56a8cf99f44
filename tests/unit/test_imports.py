"""The package's import structure: no cycle of module-level imports, and a runner process loads
only what runs in a runner (the lifecycle swap, not the operator commands, the MLflow sync, the
HTTP edge or drift)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from despliegue import registry
from tests.conftest import ROOT

PACKAGE = ROOT / "despliegue"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def module_level_imports(name: str, path: Path) -> set[str]:
    """The modules of ours that importing `name` imports at module level.

    `if TYPE_CHECKING:` blocks count: a type-only import ties two modules as much as any (it
    becomes a run-time import the day the type is needed at run time, e.g. by pydantic), and
    hiding a cycle behind one is what made the old one fragile. Imports inside functions do not
    count: they run later, once every module is loaded. A submodule's import also runs its
    packages' `__init__` modules, so those count too."""
    named: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".")
                    if path.name != "__init__.py":
                        package = package[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join([*package, *([node.module] if node.module else [])])
                named.add(base)
                named.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If | ast.With):
                visit(node.body)
                visit(getattr(node, "orelse", []))
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    found: set[str] = set()
    for imported in named:
        while imported and imported not in MODULES:  # `from pkg import name`: name, not module
            imported = imported.rpartition(".")[0]
        if not imported:
            continue
        parts = imported.split(".")
        found.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return {m for m in found if m in MODULES and m != name and not name.startswith(m + ".")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_cycle_of_module_level_imports() -> None:
    graph = {name: module_level_imports(name, path) for name, path in MODULES.items()}
    assert graph["despliegue.registry"] >= {"despliegue.families.base"}  # the check sees edges
    found = cycles(graph)
    described = [
        {member: sorted(graph[member] & set(cycle)) for member in cycle} for cycle in found
    ]
    assert found == [], f"import cycles (module -> the members it imports): {described}"


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_contracts_import_nothing_of_ours() -> None:
    path = MODULES["despliegue.contracts"]
    assert module_level_imports("despliegue.contracts", path) == set()


# What a runner process must not load: the operator's commands, the MLflow sync and imports,
# the API worker's edge and drift capture, and the recipes' training code.
NOT_IN_A_RUNNER = (
    "despliegue.lifecycle.commands",
    "despliegue.lifecycle.mlflow_sync",
    "despliegue.importing",
    "despliegue.mlflow_import",
    "despliegue.http",
    "despliegue.drift",
    "despliegue.answers",
    "despliegue.schemas",
    "despliegue.coalescing",
)
LOADED = """
import json, sys
import {module}
print(json.dumps(sorted(m for m in sys.modules if m.startswith("despliegue"))))
"""


@pytest.mark.processes
@pytest.mark.parametrize("family", registry.FAMILIES, ids=lambda family: family.name)
def test_a_runner_process_imports_only_what_runs_in_a_runner(
    family: registry.Family, reference_store: str
) -> None:
    module = family.runner.partition(":")[0]
    result = subprocess.run(
        [sys.executable, "-c", LOADED.format(module=module)],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": reference_store},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert {"despliegue.lifecycle.swap", "despliegue.lifecycle.plans"} <= loaded
    unwanted = sorted(
        name
        for name in loaded
        for prefix in NOT_IN_A_RUNNER
        if name == prefix or name.startswith(prefix + ".")
    )
    recipes = {model.recipe.partition(":")[0] for model in family.models}
    assert unwanted == [] and not loaded & recipes, f"{module} loads {sorted(loaded)}"
