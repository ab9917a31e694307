"""The house's structure (docs/architecture.md): the declared layers hold, no module takes part in an import
cycle, and mxr0's own imports sit at module top unless a line comment says why one is lazy. All three read
imports inside functions too (grimp parses every import statement of a module)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "mxr0"


def test_layer_contract_in_pyproject_is_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not found: install the dev extras (import-linter)")
    run = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout, run.stdout[-2000:]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles_between_modules():
    grimp = pytest.importorskip("grimp")
    g = grimp.build_graph("mxr0", cache_dir=None)
    # every edge counts, a package's __init__ included: a submodule that imports its package's face while that face
    # imports the submodule is a cycle (it only works while the face happens to import things in the right order)
    graph = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def lazy_internal_imports(root: Path = PACKAGE) -> list[str]:
    """``file:line`` of each ``from mxr0… import`` inside a function without a ``# lazy: <why>`` comment."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        src = path.read_text()
        lines = src.splitlines()
        for node in ast.walk(ast.parse(src)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.level == 0 and (sub.module or "").startswith("mxr0"):
                    text = " ".join(lines[sub.lineno - 1:sub.end_lineno])
                    if "# lazy:" not in text:
                        bad.append(f"{path.relative_to(root.parent)}:{sub.lineno}")
    return sorted(set(bad))


def test_internal_imports_sit_at_module_top_unless_a_comment_says_why():
    bad = lazy_internal_imports()
    assert not bad, (f"{len(bad)} mxr0 imports inside functions without a '# lazy: <why>' comment "
                     f"(move them to the module top): {bad[:20]}")


def test_the_lazy_import_check_sees_an_uncommented_one(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from mxr0.config import load_recipe\n    return load_recipe\n\n"
                                   "def g():\n    from mxr0.cli import main  # lazy: keeps --help fast\n")
    found = lazy_internal_imports(tmp_path)
    assert len(found) == 1 and found[0].endswith("m.py:2")
