"""The house rules, read from the source tree: imports go down the layers only, no import
circles, no SQL and no atlas file layout outside ``atlas/``, no private name imported across
modules. See docs/architecture.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "convscope"

# Bottom to top. A module may import modules of its own rank or below, never above.
KERNEL = {
    "errors",
    "tokens",
    "layout",
    "layers",
    "receptive",
    "preprocess",
    "recorder",
    "trace",
    "subject",
    "units",
    "quantiles",
    "imageops",
    "accel",
    "zoo",
    "testing",
    "version",
}
RANKS = {
    **dict.fromkeys(KERNEL, 0),
    "inputs": 1,
    "results": 1,  # the result protocol writes through inputs.fileio
    "render": 2,
    **dict.fromkeys(
        [
            "scan",
            "attribution",
            "synthesis",
            "adversarial",
            "dissect",
            "represent",
            "empirical",
            "concepts",
            "train",
        ],
        3,
    ),
    "scale": 4,
    "verbs": 4,
    "conformance": 4,  # the suite over architectures runs the verbs
    "atlas": 5,
    "app": 6,
    "viewer": 6,
    "cli": 7,
}
TOP = 8  # the package's own __init__: the public façade, above everything


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return TOP
    return RANKS[parts[1]]


def sources() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(SRC.rglob("*.py"))}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def imports(module: str, tree: ast.Module, known: set[str]) -> list[tuple[str, int, list[str]]]:
    """(imported convscope module, line, names) for every import, lazy ones included, except
    those only for type checking."""
    skip = _type_checking_lines(tree)
    package = module if module in known and _is_package(module) else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "convscope":
                    out.append((a.name, node.lineno, []))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).strip(".")
            if base.split(".")[0] != "convscope":
                continue
            names = [a.name for a in node.names]
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
            rest = [n for n in names if f"{base}.{n}" not in known]
            if rest or not subs:  # `from pkg import submodule` depends on the submodule only
                out.append((base, node.lineno, rest))
            out.extend((s, node.lineno, []) for s in subs)
    return out


def _is_package(module: str) -> bool:
    return (SRC.parent / module.replace(".", "/") / "__init__.py").exists()


@pytest.fixture(scope="module")
def tree() -> dict[str, ast.Module]:
    return sources()


def test_every_module_has_a_layer(tree):
    assert [m for m in tree if m != "convscope" and m.split(".")[1] not in RANKS] == []


def test_imports_go_down_the_layers(tree):
    known = set(tree)
    bad = []
    for module, t in tree.items():
        for target, line, _ in imports(module, t, known):
            if rank(target) > rank(module):
                bad.append(f"{module}:{line} imports {target}")
    assert not bad, "\n" + "\n".join(bad)


def test_no_import_circles(tree):
    known = set(tree)
    graph = {
        m: {t for t, _, _ in imports(m, tr, known) if t in known and t != m and t != "convscope"}
        for m, tr in tree.items()
    }
    # a package's __init__ runs when any of its modules is imported, but that is no dependency
    # of the module on its siblings: only edges a module itself writes count
    cycles = _cycles(graph)
    assert not cycles, "\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|BEGIN|REPLACE)\b")


def _strings(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value for v in node.values if isinstance(v, ast.Constant)) + "{}"


def test_no_sql_outside_the_atlas(tree):
    bad = []
    for module, t in tree.items():
        if module.startswith("convscope.atlas"):
            continue
        for node in ast.walk(t):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "sqlite3" in names:
                    bad.append(f"{module}:{node.lineno} imports sqlite3")
        for line, s in _strings(t):
            if SQL.match(s) and not s.strip().endswith((".", ":")):
                bad.append(f"{module}:{line} {s.strip()[:60]!r}")
    assert not bad, "\n" + "\n".join(bad)


# What the atlas folder holds; only atlas/ may spell these out.
LAYOUT_NAMES = {"atlas.db", "atlas.lock", "render", "features", "dissect", "shards"}
LAYOUT_FILES = re.compile(r"^unit\{\}|^unit%|_(max|mean|area|rf|stimuli)\.png$")


def test_no_atlas_layout_outside_the_atlas(tree):
    bad = []
    for module, t in tree.items():
        if module.startswith("convscope.atlas"):
            continue
        for node in ast.walk(t):
            # `something / "render"`, `Path(x, "atlas.db")`: a path built from a layout name
            parts = []
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                parts = [node.left, node.right]
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith(("Path", "joinpath")):
                parts = list(node.args)
            for p in parts:
                if isinstance(p, ast.Constant) and p.value in LAYOUT_NAMES:
                    bad.append(f"{module}:{node.lineno} {ast.unparse(node)[:70]}")
                elif isinstance(p, ast.JoinedStr):
                    text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in p.values)
                    if LAYOUT_FILES.search(text):
                        bad.append(f"{module}:{node.lineno} {ast.unparse(node)[:70]}")
    assert not bad, "\n" + "\n".join(bad)


def test_no_private_name_crosses_a_module(tree):
    known = set(tree)
    bad = []
    for module, t in tree.items():
        aliases = {}
        for target, line, names in imports(module, t, known):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{module}:{line} imports {target}.{n}")
        for node in ast.walk(t):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("convscope"):
                        aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("convscope"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in known:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(t):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and ast.unparse(node.value) in aliases
            ):
                bad.append(f"{module}:{node.lineno} uses {ast.unparse(node)}")
    assert not bad, "\n" + "\n".join(bad)
