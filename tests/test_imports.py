"""The project's modules import each other without cycles: the graph of every import statement (at the
top of a module or inside a function) between the top-level modules and experiments/ has no cycle but the
one named in ALLOWED (under a second); and the command-line tools start without importing dynamo."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# verifier.verify dispatches BBH, SynLogic and LiveCodeBench rows to benchmarks.py's graders, which use
# verifier.py's answer extraction and equivalence (Verdict, is_equivalent, extract_code)
ALLOWED = {frozenset({"benchmarks", "verifier"})}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the project's modules it imports}; experiments' modules are named experiments.NAME."""
    files = {p.stem: p for p in root.glob("*.py")}
    files.update({f"experiments.{p.stem}": p for p in (root / "experiments").glob("*.py") if p.stem != "__init__"})
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            else:
                continue
            for t in targets:
                t = t if t in files else t.split(".")[0]
                if t in files and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out = {}, {}, [], set(), set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_on_a_hand_graph():
    """cycles() finds a two-module and a three-module cycle and nothing in an acyclic part."""
    g = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert cycles(g) == {frozenset("ab"), frozenset("cde")}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == set()


def test_no_import_cycles():
    """The import graph of the project (import statements anywhere in a module) has no cycle beyond ALLOWED;
    cli.py and passk.py import no other module of the project, so any module can use them."""
    graph = import_graph()
    assert {"train", "eval", "data", "tiny", "cli", "passk", "experiments.miniature"} <= set(graph)
    assert cycles(graph) <= ALLOWED, cycles(graph) - ALLOWED
    assert graph["cli"] == set() and graph["passk"] == set()


def test_the_tools_start_without_importing_dynamo():
    """Importing train.py, eval.py or data.py does not import torch._dynamo (~1.3 s of every start on a
    2-core CPU, paid by each subprocess the tests run); it is imported when a run first needs it."""
    import subprocess
    import sys
    code = "import sys, train, eval, data; print('torch._dynamo' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr
