"""The layout holds: package boundaries, module sizes, Lua beside its runner and in the package data, one declared
owner per Redis key, and docs/architecture.md as generated from all that."""

from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.architecture.discover import (
    KEY_MODULES,
    PACKAGES,
    ROOT,
    imports,
    key_names,
    module_name,
    path_of,
    references,
    source_files,
)
from tests.architecture.flow import FLOW
from tests.architecture.owners import KEYS, KOMBU
from tests.architecture.processes import PROCESSES
from tests.architecture.render import document

MAX_LINES = 400
PUBLIC = "worker.delivery"


def _public_names() -> set[str]:
    tree = ast.parse(path_of(PUBLIC).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "__all__":
            return set(ast.literal_eval(node.value))
    raise AssertionError("worker/delivery/__init__.py has no __all__")


def test_producers_reach_worker_only_through_the_public_delivery_interface() -> None:
    public = _public_names()
    wrong = []
    for path in source_files(("producers",)):
        for module, name, line in imports(path):
            if module.split(".")[0] != "worker":
                continue
            if module != PUBLIC or name is None or name not in public:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}{'.' + name if name else ''}")
    assert [] == wrong


@pytest.mark.parametrize(("package", "forbidden"), [("worker", "producers"), ("schemas", "producers"),
                                                    ("schemas", "worker")])  # fmt: skip
def test_a_package_never_imports_the_ones_above_it(package: str, forbidden: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in source_files((package,))
        for module, _, line in imports(path)
        if module.split(".")[0] == forbidden
    ]
    assert [] == wrong


def test_the_public_interface_exports_exactly_its_names_and_each_resolves() -> None:
    import worker.delivery as delivery

    public = _public_names()
    tree = ast.parse(path_of(PUBLIC).read_text())
    typed = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        for statement in node.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }
    assert public == set(delivery._EXPORTS) == typed
    for name in sorted(public):
        getattr(delivery, name)  # imports the module that defines it


def test_the_cli_starts_without_the_heavy_parts_of_delivery() -> None:
    code = "import sys, producers.cli; print(sorted(m for m in ('pyarrow', 'worker.delivery.webhooks.app') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "[]" == out.stdout.strip()


def test_no_module_has_more_than_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in source_files((*PACKAGES, "tests", "infra"))
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert {} == long


def _lua_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.lua"))


def test_no_lua_is_written_inside_python() -> None:
    assert [] == [str(p.relative_to(ROOT)) for p in source_files() if "redis.call(" in p.read_text()]


@pytest.mark.parametrize("script", _lua_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_lua_script_sits_beside_the_one_module_that_loads_it(script: Path) -> None:
    runners = [
        py
        for py in script.parent.glob("*.py")
        if script.stem == py.stem or script.stem.startswith(py.stem + "_")
    ]  # fmt: skip
    assert 1 == len(runners), f"{script.name}: no module named after it beside it"
    source = runners[0].read_text()
    assert script.name in source or f'"{runners[0].stem}_' in source  # by name, or by the module's own prefix
    __import__(module_name(runners[0]))  # the module loads its scripts at import: a missing one fails here


def test_the_package_data_ships_every_lua_script() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    includes = config["packages"]["find"]["include"]
    data: dict[str, list[str]] = config["package-data"]
    missing = []
    for script in _lua_files():
        package = module_name(script.parent / "__init__.py")
        assert (script.parent / "__init__.py").exists(), f"{script.parent} is not a package"
        assert any(fnmatch.fnmatch(package, pattern) for pattern in includes)
        patterns = data.get(package, []) + data.get("*", [])
        if not any(fnmatch.fnmatch(script.name, pattern) for pattern in patterns):
            missing.append(str(script.relative_to(ROOT)))
    assert [] == missing


def test_every_name_of_the_key_modules_is_declared_in_the_architecture_model() -> None:
    defined = {k.symbol for module in KEY_MODULES for k in key_names(module)}
    assert set() == defined - set(KEYS), "declare its owner in tests/architecture/{owners,processes,flow}.py"
    assert set() == set(KEYS) - defined, "no longer defined"


def test_only_a_keys_declared_owner_co_writers_and_readers_use_it() -> None:
    found = references()
    undeclared = {}
    for symbol, spec in KEYS.items():
        allowed = {spec.owner, *spec.also, *spec.readers}
        if spec.kind == "name":
            continue
        extra = found.get(symbol, set()) - allowed
        if extra:
            undeclared[symbol] = sorted(extra)
        if spec.owner != KOMBU:
            assert spec.owner in found.get(symbol, set()), f"{symbol}: its owner {spec.owner} does not use it"
    assert {} == undeclared


def test_each_delivery_key_has_one_writer() -> None:
    shared = {s: spec.also for s, spec in KEYS.items() if s.startswith("worker.delivery.keys.") and spec.also}
    assert {} == shared


def test_each_key_is_written_by_a_process_that_runs_its_writer() -> None:
    writes = {symbol for process in PROCESSES for symbol in process.writes}
    keys = {s for s, spec in KEYS.items() if spec.kind in {"key", "queue"}}
    assert set() == keys - writes, "no process writes these"
    for process in PROCESSES:
        for symbol in process.writes:
            spec = KEYS[symbol]
            assert any(process.has(m) for m in (spec.owner, *spec.also)), f"{process.name} runs no writer of {symbol}"
    for symbol, spec in KEYS.items():
        for module in (spec.owner, *spec.also) if spec.kind in {"key", "queue"} else ():
            assert any(p.has(module) and symbol in p.writes for p in PROCESSES), f"{module} writes {symbol} where?"


def test_each_step_of_the_flow_is_done_by_a_module_allowed_to() -> None:
    names = {p.name: p for p in PROCESSES}
    for step in FLOW:
        process = names[step.process]
        assert process.has(step.module), f"{step.process} does not run {step.module}"
        spec = KEYS[step.key]
        allowed = {spec.owner, *spec.also} if step.writes else {spec.owner, *spec.also, *spec.readers}
        assert step.module in allowed, f"{step.module} may not {'write' if step.writes else 'read'} {step.key}"
        for extra in step.extra:
            assert step.module in {KEYS[extra].owner, *KEYS[extra].also}, f"{step.module} does not write {extra}"


def test_docs_architecture_md_is_what_the_generator_writes() -> None:
    doc = ROOT / "docs" / "architecture.md"
    assert doc.read_text() == document(doc.read_text()), "run: .venv/bin/python -m tests.architecture"
