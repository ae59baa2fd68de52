"""The house's layering, read from the source (AST, no imports run): `edgeport.core` is the ground
floor and imports nothing of ours above it; every room depends downward only, by the table below;
no private name (`_x`) crosses from one room into another; and a function-level import of our own
code says why it is there (heavy optional dependencies: torch, transformers, onnxruntime,
llama_cpp), except in the command line, whose whole point is to import a room only when its
command runs (`edgeport --help` stays fast)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "edgeport"
# room -> the rooms it may import (besides itself). `models` is data (the bundled checkpoints)
# and their builders; any room above core may read it.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "models": {"core"},
    "runtimes": {"core"},
    "parity": {"core", "runtimes"},
    "publishing": {"core"},
    "targets": {"core", "parity"},
    "export": {"core", "runtimes", "parity", "publishing", "targets"},
    "planning": {"core", "targets", "export"},
    "serving": {"core", "runtimes"},
    "benchmarking": {"core", "runtimes", "parity", "publishing", "targets", "export", "planning", "serving"},
    "deploying": {"core", "publishing", "planning", "export"},
    "cli": {"core", "runtimes", "parity", "publishing", "targets", "export", "planning", "serving",
            "benchmarking", "deploying"},
}
for _room, _deps in ALLOWED.items():
    if _room not in ("core", "models"):
        _deps.add("models")
LAZY_EXEMPT = {"cli"}  # commands import their rooms on use: that is what keeps --help fast
# a function-level import of ours carries a comment with one of these words, saying why
LAZY_REASONS = ("torch", "transformers", "onnxruntime", "llama_cpp", "vllm", "tensorrt", "matplotlib", "heavy")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    line: int
    target: str  # the imported edgeport module, dotted
    names: tuple[str, ...]  # names taken from it (from-imports)
    nested: bool  # inside a function
    text: str  # the source line(s), comments included


def room_of(module: str) -> str:
    parts = module.split(".")
    room = parts[1] if len(parts) > 1 else ""
    return "cli" if room == "__main__" else room  # `python -m edgeport` is the command line


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(module: str, path: Path) -> list[Import]:
    src = path.read_text()
    lines = src.splitlines()
    tree = ast.parse(src)
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[Import] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                if base == "edgeport" or base.startswith("edgeport."):
                    text = "\n".join(lines[child.lineno - 2: child.end_lineno])  # the line above may hold the why
                    names = tuple(a.name for a in child.names)
                    # `from edgeport.x import y` may import a submodule y
                    for n in names:
                        sub = f"{base}.{n}"
                        target = sub if sub in MODULES else base
                        found.append(Import(module, child.lineno, target, (n,) if target == base else (),
                                            nested, text))
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name == "edgeport" or a.name.startswith("edgeport."):
                        text = "\n".join(lines[child.lineno - 2: child.end_lineno])
                        found.append(Import(module, child.lineno, a.name, (), nested, text))
            visit(child, inner)

    visit(tree, False)
    return found


MODULES = _modules()
IMPORTS = [i for m, p in MODULES.items() for i in _imports(m, p)]


def test_the_table_has_no_cycle():
    seen: dict[str, int] = {}

    def walk(room: str) -> None:
        assert seen.get(room) != 1, f"the layering table has a cycle through {room}"
        if seen.get(room) == 2:
            return
        seen[room] = 1
        for dep in ALLOWED[room]:
            walk(dep)
        seen[room] = 2

    for room in ALLOWED:
        walk(room)


def test_every_room_is_in_the_table():
    rooms = {room_of(m) for m in MODULES if room_of(m)}
    assert rooms <= set(ALLOWED), f"rooms missing from the layering table: {rooms - set(ALLOWED)}"


def test_rooms_depend_downward_only():
    bad = [f"{i.module}:{i.line} imports {i.target} ({room_of(i.module)} -> {room_of(i.target)})"
           for i in IMPORTS
           if room_of(i.target) and room_of(i.target) != room_of(i.module)
           and room_of(i.target) not in ALLOWED[room_of(i.module)]]
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_package_root_imports_nothing():
    """`import edgeport` (and so every command's start) loads no room."""
    assert [i for i in IMPORTS if i.module == "edgeport"] == []


def _private_attribute_uses(module: str, path: Path) -> list[str]:
    """`alias._name` where alias is a module of another room."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("edgeport.") and a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgeport"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in MODULES:
                    aliases[a.asname or a.name] = sub
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")
                and room_of(aliases[node.value.id]) != room_of(module)):
            out.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return out


def test_no_private_name_crosses_rooms():
    bad = [f"{i.module}:{i.line} imports {n} from {i.target}"
           for i in IMPORTS if room_of(i.target) != room_of(i.module)
           for n in i.names if n.startswith("_") and not n.startswith("__")]
    bad += [u for m, p in MODULES.items() for u in _private_attribute_uses(m, p)]
    assert not bad, "private names used across rooms:\n" + "\n".join(bad)


def test_function_level_imports_of_ours_say_why():
    bad = [f"{i.module}:{i.line} {i.text.strip().splitlines()[-1].strip()}"
           for i in IMPORTS if i.nested and room_of(i.module) not in LAZY_EXEMPT
           and not any(w in i.text for w in LAZY_REASONS)]
    assert not bad, ("function-level imports of edgeport modules without a reason (move them to the top, "
                     "or say on the line or the one above why they must wait):\n" + "\n".join(bad))


@pytest.mark.parametrize("room", ["core"])
def test_ground_floor_imports_nothing_above_it(room):
    bad = [f"{i.module}:{i.line} imports {i.target}" for i in IMPORTS
           if room_of(i.module) == room and room_of(i.target) != room]
    assert not bad, "\n".join(bad)
