"""Package-wide shape: version, no import cycles, layering, one docstring per module, unique module names."""
import ast
from collections import Counter
from pathlib import Path

import umedfast

PKG = Path(umedfast.__file__).parent


def _modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the umedfast package (kernels included)."""
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = f
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Edges module -> umedfast module it imports, anywhere in the file (inside functions too: a lazy import hides a
    cycle, it does not remove it). ``from pkg import sub`` points at the submodule ``pkg.sub``."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: set() for m in mods}
    for m, f in mods.items():
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for n in names:
                target = resolve(n) if n.split(".")[0] == "umedfast" else None
                if target and target != m:
                    edges[m].add(target)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (each one is an import cycle)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_version_is_semver():
    parts = umedfast.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)


def test_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert strongly_connected(import_graph(_modules())) == []


def test_layering():
    """Training does not import evaluation (it receives its eval.json writer from the CLI); only the CLIs import
    the CLIs; the leaves (ops, boxes, box matching, answers, rl) import nothing above them."""
    edges = import_graph(_modules())
    for m, targets in edges.items():
        if m.startswith("umedfast.train"):
            assert not {t for t in targets if t.startswith("umedfast.eval")}, m
        if not m.startswith("umedfast.cli"):
            assert not {t for t in targets if t.startswith("umedfast.cli.")}, m
    leaves = ("umedfast.ops", "umedfast.boxes", "umedfast.box_matching", "umedfast.answers", "umedfast.rl")
    upper = ("umedfast.data", "umedfast.model", "umedfast.rewards", "umedfast.train", "umedfast.eval", "umedfast.cli")
    for m, targets in edges.items():
        if m.startswith(leaves):
            assert not {t for t in targets if t.startswith(upper)}, m


def test_every_module_says_what_it_holds():
    """Each module opens with a docstring whose first line is a sentence of its own."""
    for name, f in _modules().items():
        doc = ast.get_docstring(ast.parse(f.read_text(encoding="utf-8")))
        assert doc and len(doc.splitlines()[0].split()) >= 3, f"{name} has no docstring saying what it holds"


def test_module_names_are_unique():
    """One guess finds a piece: no two modules share a file name (``__init__``/``__main__`` aside)."""
    names = Counter(f.stem for f in _modules().values() if f.stem not in ("__init__", "__main__"))
    assert [n for n, c in names.items() if c > 1] == []
