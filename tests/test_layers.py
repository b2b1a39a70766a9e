"""The package's floors, read from the source with ``ast`` (every import counts, also one inside a function).

Imports run one way: commands → analysis, render, engine, server → backends, scorers → core.
A module may import its own floor and the floors listed for it in ``ALLOWED``; no import cycle
between modules; no ``from x import _name`` of another module's private name. Every import of ours
counts wherever it is written, so deferring one into a function cannot hide a cycle; deferring a
heavy third-party import (pandas, matplotlib, llama_cpp) to where it is needed is fine and keeps
start-up short. Entry points (``if __name__ == "__main__"``, the console script) live in
``commands/`` and ``cli.py`` only, and so does flag parsing (argparse): the floors below take checked
objects (a ServeConfig, Thresholds ...), which tests build directly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "sentech_eval"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# The core: modules at the top of the package that import nothing of ours but each other.
CORE_MODULES = {"types", "errors", "config", "secrets", "paths", "provenance", "normalize", "sandbox", "escaping"}

# floor -> the floors it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "backends": {"core"},
    "scorers": {"core", "backends"},  # the LLM judge scorer asks a backend
    "engine": {"core", "backends", "scorers"},
    "server": {"core", "backends"},  # the llama engine reuses the local backend's llama.cpp set-up
    "analysis": {
        "core",
        "backends",
        "engine",
    },  # the pairwise judge asks a backend; results are read with engine.results
    "render": {"core", "analysis"},
    # the viewer reads results (engine.results), numbers from analysis, pictures from render
    "view": {"core", "engine", "analysis", "render"},
    # export replays results into a tracker: reads them (engine), summarises (analysis), builds report.html (render)
    "export": {"core", "engine", "analysis", "render"},
    "commands": {"core", "backends", "scorers", "engine", "server", "analysis", "render", "view", "export"},
    # The package facade (sentech_eval.load_results) and the CLI dispatcher sit on the top floor.
    "top": {"core", "backends", "scorers", "engine", "server", "analysis", "render", "view", "export", "commands"},
}
SUBPACKAGES = {"backends", "scorers", "engine", "server", "analysis", "render", "view", "export", "commands"}
TOP_MODULES = {"__init__", "cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def floor_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "top"
    if parts[0] in SUBPACKAGES:
        return parts[0]
    if parts[0] in CORE_MODULES:
        return "core"
    if parts[0] in TOP_MODULES:
        return "top"
    raise AssertionError(f"{module} is on no floor: put it in a subpackage or add it to CORE_MODULES in {__file__}")


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import of ours in ``path``."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            names = [a.name for a in node.names]
            # ``from pkg import mod`` imports the module pkg.mod
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            if submodules:
                out += [(m, [], node.lineno) for m in submodules]
                names = [n for n in names if f"{target}.{n}" not in known]
            if names or not submodules:
                out.append((target, names, node.lineno))
    return out


def graph() -> dict[str, list[tuple[str, list[str], int]]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def test_every_module_is_on_a_floor():
    for module in modules():
        floor_of(module)


def test_no_upward_or_sideways_import():
    bad = []
    for module, imports in graph().items():
        floor = floor_of(module)
        for target, _, line in imports:
            other = floor_of(target)
            if other != floor and other not in ALLOWED[floor]:
                bad.append(f"{module}:{line} ({floor}) imports {target} ({other})")
    assert not bad, "imports against the floors:\n" + "\n".join(bad)


def test_core_imports_only_core():
    for module, imports in graph().items():
        if floor_of(module) == "core":
            assert all(floor_of(t) == "core" for t, _, _ in imports), module


def test_no_private_name_imported_from_another_module():
    bad = []
    for module, imports in graph().items():
        for target, names, line in imports:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if target != module and private:
                bad.append(f"{module}:{line} imports {', '.join(private)} from {target}")
            if any(part.startswith("_") and part != "__init__" for part in target.split(".")):
                bad.append(f"{module}:{line} imports the private module {target}")
    assert not bad, "\n".join(bad)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, or None (iterative DFS, white/grey/black)."""
    state: dict[str, int] = {}
    for start in sorted(edges):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(edges[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(edges.get(child, ())))))
                path.append(child)
    return None


def test_no_import_cycle():
    g = graph()
    edges = {m: {t for t, _, _ in imps if t in g and t != m} for m, imps in g.items()}
    # a package's __init__ runs before any of its modules: importing the parent package is not an edge
    for m in edges:
        edges[m] = {t for t in edges[m] if not m.startswith(t + ".")}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "edges, cyclic",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"a2"}, "a2": set(), "b": {"b"}}, True),
    ],
)
def test_cycle_finder_sees_cycles(edges, cyclic):
    assert (find_cycle(edges) is not None) == cyclic


def test_floor_rules_see_a_bad_import(tmp_path):
    """The checker itself fails on an upward import and on a private name (it is not vacuous)."""
    fake = tmp_path / "scorers" / "bad.py"
    fake.parent.mkdir()
    fake.write_text("from sentech_eval.engine.runner import _hidden\nfrom sentech_eval.commands import run\n")
    known = {"sentech_eval.commands.run", "sentech_eval.engine.runner"}
    imports = imports_of("sentech_eval.scorers.bad", fake, known)
    assert ("sentech_eval.engine.runner", ["_hidden"], 1) in imports
    assert ("sentech_eval.commands.run", [], 2) in imports
    assert "engine" not in ALLOWED["scorers"] and "commands" not in ALLOWED["scorers"]


def layout_entries(readme: str) -> dict[str, str]:
    """Path -> description of every line of a layout tree (docs/architecture.md) (directories end in ``/``)."""
    section = readme[readme.index("## Layout") :]
    end = section.find("\n## ", 5)
    section = section if end < 0 else section[:end]
    block = section[section.index("```") + 3 :]
    block = block[block.index("\n") + 1 : block.index("```")]
    entries: dict[str, str] = {}
    parents: list[tuple[int, str]] = []  # (indent, directory) of the lines above
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        name, _, description = line.strip().partition(" ")
        parents = [(i, d) for i, d in parents if i < indent]
        path = "".join(d for _, d in parents) + name
        entries[path] = description.strip()
        if name.endswith("/"):
            parents.append((indent, name))
    return entries


def package_files() -> list[str]:
    """Every module of the package and of hydra_plugins/, relative to the repository (no subpackage __init__)."""
    repo = ROOT.parent
    files = sorted(ROOT.rglob("*.py")) + sorted((repo / "hydra_plugins").rglob("*.py"))
    return [
        p.relative_to(repo).as_posix()
        for p in files
        if "__pycache__" not in p.parts and (p.name != "__init__.py" or p.parent == ROOT)
    ]


def test_readme_layout_lists_every_module():
    """docs/architecture.md's layout tree has one line, with a description, for every module (and names none that is gone)."""
    entries = layout_entries((ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8"))
    files = package_files()
    missing = [f for f in files if f not in entries]
    assert not missing, f"add one line per module to the layout section of docs/architecture.md: {', '.join(missing)}"
    undescribed = [f for f in files if not entries[f]]
    assert not undescribed, (
        f"say in one line what these do in the layout of docs/architecture.md: {', '.join(undescribed)}"
    )
    gone = [p for p in entries if p.endswith(".py") and p not in files]
    assert not gone, f"docs/architecture.md's layout names modules that do not exist: {', '.join(gone)}"


def test_layout_reader_follows_the_indentation():
    text = "## Layout\n\n```\npkg/\n  a.py    one\n  sub/\n    b.py  two\n  c.py    three\nnext/     x\n```\n"
    assert layout_entries(text) == {
        "pkg/": "",
        "pkg/a.py": "one",
        "pkg/sub/": "",
        "pkg/sub/b.py": "two",
        "pkg/c.py": "three",
        "next/": "x",
    }


ENTRY_POINT_MODULES = {"sentech_eval.cli"}


def is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``"""
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
    )


def test_entry_points_live_in_commands():
    """``python -m sentech_eval.<module>`` works only for the CLI: every command is ``sentech-eval <command>``."""
    bad = [
        m
        for m, p in modules().items()
        if floor_of(m) != "commands"
        and m not in ENTRY_POINT_MODULES
        and any(is_main_guard(node) for node in ast.parse(p.read_text(encoding="utf-8")).body)
    ]
    assert not bad, f"entry points outside commands/ (make them a `sentech-eval` subcommand): {', '.join(bad)}"


def test_entry_point_rule_sees_a_main_guard():
    assert is_main_guard(ast.parse('if __name__ == "__main__":\n    main()\n').body[0])
    assert not is_main_guard(ast.parse('if name == "x":\n    pass\n').body[0])


def imports_argparse(path: Path) -> bool:
    """Whether the module imports argparse anywhere (also inside a function)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def test_command_line_parsing_lives_in_commands():
    """Flags are parsed in commands/ (and the cli.py dispatcher); the floors below take checked objects."""
    bad = [
        m
        for m, p in modules().items()
        if floor_of(m) != "commands" and m not in ENTRY_POINT_MODULES and imports_argparse(p)
    ]
    assert not bad, (
        f"argparse outside commands/ (parse the flags in the command, pass a checked object down): {', '.join(bad)}"
    )


def test_argparse_rule_sees_an_import(tmp_path):
    for text in ("import argparse\n", "def f():\n    from argparse import ArgumentParser\n"):
        (tmp_path / "m.py").write_text(text)
        assert imports_argparse(tmp_path / "m.py")
    (tmp_path / "m.py").write_text("import argparser_not\n")
    assert not imports_argparse(tmp_path / "m.py")
