"""The layout's rules, held by a test (docs/architecture.md): the pure modules import no I/O, not
even through what they import; only the entry points import routes/; no import loop between
modules. Read from the source (module-level imports, types-only imports left out), not by
importing anything."""
import ast
from pathlib import Path

import pytest

from helpers import ROOT

PURE = ["scheduling/policy.py", "scheduling/model_table.py", "scheduling/model_settings.py",
        "scheduling/gpu_placement.py", "scheduling/cluster_plan.py", "scheduling/warm_pool.py",
        "scheduling/model_memory.py", "scheduling/core.py", "vram_scheduler.py", "tenancy/keys.py",
        "front_door/ollama_shapes.py", "front_door/openai_shapes.py", "front_door/ollama_options.py",
        "front_door/delivery.py", "front_door/job_shapes.py", "metering/shares.py", "jobs/model.py", "store/storable.py",
        "runtime/readings.py", "telemetry/percentiles.py", "scheduling/fair_share.py", "scheduling/waiting.py",
        "scheduling/preemption.py", "scheduling/outlook.py", "scheduling/snapshot.py", "jobs/resume.py",
        "simulator/fairness.py"]
IO = {"flask", "requests", "sqlite3", "pymongo", "psutil", "waitress", "gunicorn", "docker", "socket", "subprocess",
      "urllib", "http", "xllamacpp", "pynvml", "prometheus_client"}
ENTRY_POINTS = {"api.py", "main.py", "gunicorn.conf.py", "wsgi.py"}


def project_modules() -> dict[str, Path]:
    skip = {".venv", "tests", "build", ".cache", "data", "reports"}
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in skip or rel.name == "gunicorn.conf.py":
            continue
        name = ".".join(rel.with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = project_modules()


def imports_of(path: Path) -> set[str]:
    """Module-level imports, absolute names; those under `if TYPE_CHECKING:` left out."""
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
    visit(ast.parse(path.read_text()).body)
    return names


def project_imports(name: str) -> set[str]:
    found = set()
    for imported in imports_of(MODULES[name]):
        parts = imported.split(".")
        for i in range(len(parts), 0, -1):        # the module itself, or the package it names
            candidate = ".".join(parts[:i])
            if candidate in MODULES and candidate != name:
                found.add(candidate)
                break
    return found


def reach(name: str) -> tuple[set[str], set[str]]:
    """(project modules, third-party and standard roots) reached from `name` at import time."""
    seen, outside, todo = {name}, set(), [name]
    while todo:
        current = todo.pop()
        for imported in imports_of(MODULES[current]):
            outside.add(imported.split(".")[0])
        for module in project_imports(current):
            for package in _packages_of(module):
                if package not in seen:
                    seen.add(package)
                    todo.append(package)
            if module not in seen:
                seen.add(module)
                todo.append(module)
    return seen, outside


def _packages_of(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]


@pytest.mark.parametrize("path", PURE)
def test_a_pure_module_reaches_no_io(path):
    name = ".".join(Path(path).with_suffix("").parts)
    modules, outside = reach(name)
    assert not outside & IO, (f"{path} reaches {sorted(outside & IO)} through "
                              f"{sorted(m for m in modules if imports_of(MODULES[m]) & {f for f in IO})}")


def test_only_the_entry_points_import_routes():
    importers = sorted(str(path.relative_to(ROOT)) for name, path in MODULES.items()
                       if not name.startswith("routes") and any(m == "routes" or m.startswith("routes.")
                                                                for m in project_imports(name)))
    assert set(importers) <= ENTRY_POINTS, importers


def test_no_import_loop_between_modules():
    graph = {name: project_imports(name) for name in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import loop: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
