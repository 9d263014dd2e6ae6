"""The import graph of lipsync_cli: what each module imports at module level must form no cycle.

Parsed from the source (nothing is imported): ``import lipsync_cli.x`` and ``from lipsync_cli.x import y`` (an edge
to ``lipsync_cli.x.y`` when that is a module) at module level, i.e. run on import (class bodies, top-level
``if``/``try`` included; ``if TYPE_CHECKING:`` left out), and inside functions, kept apart: those run only when
called. A package's ``__init__`` is a node of its own; the parent packages Python imports first are not edges
(``cli/__init__.py`` importing ``cli.dub`` which imports ``cli.app`` is the usual way a package gathers its
modules, not a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lipsync_cli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, here: str, is_pkg: bool) -> set[str]:
    """The lipsync_cli modules an import statement of module ``here`` names."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "lipsync_cli"} & set(MODULES)
    if node.level:  # relative: resolve against this module's package
        base = here.split(".") if is_pkg else here.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    if mod.split(".")[0] != "lipsync_cli":
        return set()
    out = set()
    for a in node.names:
        sub = f"{mod}.{a.name}"
        out.add(sub if sub in MODULES else mod)
    return out & set(MODULES)


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, function-level edges) of every lipsync_cli module."""
    top: dict[str, set[str]] = {m: set() for m in MODULES}
    inner: dict[str, set[str]] = {m: set() for m in MODULES}

    def walk(node: ast.AST, here: str, is_pkg: bool, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for c in child.orelse:
                    walk(ast.Module(body=[c], type_ignores=[]), here, is_pkg, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top)[here] |= _targets(child, here, is_pkg) - {here}
            walk(child, here, is_pkg,
                 in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    for name, path in MODULES.items():
        walk(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py", False)
    return top, inner


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_parser_sees_both_kinds_of_import():
    top, inner = import_graph()
    assert "lipsync_cli.errors" in top["lipsync_cli.checkpoint"]  # module level
    assert "lipsync_cli.models" in inner["lipsync_cli.checkpoint"]  # inside build_loaded / load_generator
    assert "lipsync_cli.blend" in top["lipsync_cli.dub"]  # `from lipsync_cli import blend as blending`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_module_level_imports_have_no_cycle():
    top, _ = import_graph()
    cycle = find_cycle(top)
    assert cycle is None, "import cycle at module level: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", ["lipsync_cli.checkpoint", "lipsync_cli.checkpoint_kinds"])
def test_checkpoint_loading_never_imports_a_network_module_on_import(module):
    """The loader knows no network: each network registers its own key signature (checkpoint_kinds) and the
    loader reaches the model registry only when a generator is rebuilt."""
    top, _ = import_graph()
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        for n in top[m] - seen:
            seen.add(n)
            todo.append(n)
    assert not {m for m in seen if m.startswith("lipsync_cli.models")}, sorted(seen)


def test_networks_and_the_loader_do_not_import_each_other():
    """checkpoint <-> models, the networks counted as one package: the loader may call the model registry
    (``models.build_generator``) and the networks the file reader (``checkpoint_io.load_network``), but no
    import, at module or function level, leads from either back to itself through the other."""
    top, inner = import_graph()

    def node(m: str) -> str:
        return "lipsync_cli.models" if m.startswith("lipsync_cli.models") else m

    part = ("lipsync_cli.checkpoint", "lipsync_cli.checkpoint_io", "lipsync_cli.checkpoint_kinds",
            "lipsync_cli.models")
    graph: dict[str, set[str]] = {n: set() for n in part}
    for m in MODULES:
        if node(m) in part:
            graph[node(m)] |= {node(t) for t in top[m] | inner[m] if node(t) in part} - {node(m)}
    assert "lipsync_cli.models" in graph["lipsync_cli.checkpoint"]  # the one direction that remains
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


MEDIA = ("ffmpeg", "probe", "decode", "spool", "formats", "encode")


def test_the_media_layer_is_a_package_whose_modules_import_each_other_at_module_level():
    """``lipsync_cli.media``: one module per concern, in the graph above (so in the cycle check), and the imports
    between them at module level: no circle hidden behind an import inside a function."""
    top, inner = import_graph()
    media = {f"lipsync_cli.media.{m}" for m in MEDIA}
    assert media <= set(top), sorted(media - set(top))
    assert "lipsync_cli.media.ffmpeg" in top["lipsync_cli.media.probe"]
    assert "lipsync_cli.media.probe" in top["lipsync_cli.media.decode"]
    assert "lipsync_cli.media.decode" in top["lipsync_cli.media.spool"]
    assert {"lipsync_cli.media.ffmpeg", "lipsync_cli.media.probe"} <= top["lipsync_cli.media.formats"]
    assert "lipsync_cli.media.formats" in top["lipsync_cli.media.encode"]
    assert not {(m, t) for m in media for t in inner[m] if t.startswith("lipsync_cli.media")}
    assert "lipsync_cli.render" in top["lipsync_cli.dub"]  # the engine run, out of dub.py
