"""What the code says about itself, read with ``ast`` (nothing is imported): the names the key modules define, which
modules use each, which modules import which, and module sizes."""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "worker", "producers")
KEY_MODULES = ("schemas.keys", "producers.rediskeys", "worker.delivery.keys")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(packages: tuple[str, ...] = PACKAGES) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def path_of(module: str) -> Path:
    base = ROOT / Path(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@dataclass(frozen=True)
class KeyName:
    """A public module-level name of a key module: a constant or a function that builds a name."""

    module: str
    name: str
    node: ast.stmt
    comment: str  # the trailing comment of a constant, or the first line of a function's docstring

    @property
    def symbol(self) -> str:
        return f"{self.module}.{self.name}"


def key_names(module: str) -> list[KeyName]:
    path = path_of(module)
    source = path.read_text()
    lines = source.splitlines()
    out = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            doc = (ast.get_docstring(node) or "").split("\n\n")[0].replace("\n", " ")
            out.append(KeyName(module, node.name, node, doc))
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.isupper() and not name.startswith("_"):
                line = lines[node.end_lineno - 1] if node.end_lineno else ""
                comment = line.split("  # ", 1)[1].strip() if "  # " in line else ""
                out.append(KeyName(module, name, node, comment))
    return out


def _constants(module: str) -> dict[str, str]:
    """String constants of a key module (and of the modules it imports them from) by name."""
    values: dict[str, str] = {}
    tree = ast.parse(path_of(module).read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module in KEY_MODULES and node.module != module:
            theirs = _constants(node.module)
            values.update({a.asname or a.name: theirs[a.name] for a in node.names if a.name in theirs})
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            rendered = _render(node.value, values)
            if rendered is not None:
                values[node.targets[0].id] = rendered
    return values


def _render(node: ast.expr, constants: dict[str, str], params: set[str] | None = None) -> str | None:
    """A string expression with constants filled in and everything else as ``<name>``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in constants:
            return constants[node.id]
        return f"<{node.id}>" if params is not None else None
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                inner = _render(value.value, constants, params if params is not None else set())
                parts.append(inner if inner is not None else "<…>")
            else:
                rendered = _render(value, constants, params)
                if rendered is None:
                    return None
                parts.append(rendered)
        return "".join(parts)
    if params is not None:
        return "<…>"
    return None


def pattern(key: KeyName) -> str | None:
    """The Redis name a key constant or key function makes, e.g. ``guardq:job:<job_id>``; None for non-strings."""
    constants = _constants(key.module)
    if isinstance(key.node, ast.Assign):
        return _render(key.node.value, constants)
    assert isinstance(key.node, ast.FunctionDef)
    returns = [n for n in ast.walk(key.node) if isinstance(n, ast.Return) and n.value is not None]
    if not returns:
        return None
    local: dict[str, str] = dict(constants)
    for statement in key.node.body:  # `digest = ...` and the like: shown by their name
        if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
            local.pop(statement.targets[0].id, None)
    assert returns[-1].value is not None
    params = {a.arg for a in key.node.args.args}
    return _render(returns[-1].value, local, params)


def imports(path: Path) -> Iterator[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every import in a file (lazy ones in functions included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name, node.lineno


def references() -> dict[str, set[str]]:
    """For every key-module symbol, the modules (outside the key modules) that import it."""
    wanted = {k.symbol for module in KEY_MODULES for k in key_names(module)}
    found: dict[str, set[str]] = defaultdict(set)
    for path in source_files():
        module = module_name(path)
        if module in KEY_MODULES:
            continue
        for imported, name, _ in imports(path):
            if name is not None and f"{imported}.{name}" in wanted:
                found[f"{imported}.{name}"].add(module)
    return found
