"""README.md and docs/ stay true to the code: every cited line lies inside the function it names, every
named function, test and linked file exists, README stays short, and no text cites a file a clone does not
have or tells development history instead of what is."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 220
FILE_TYPES = {"py", "md", "sh", "json", "jsonl", "txt", "html", "png", "pt", "safetensors"}   # `train.py` names a file


def defined_names(path: Path) -> dict[str, tuple[int, int]]:
    """Top-level functions, classes and assigned names of a module, and the methods of its classes as
    Class.method, each with its (first line, last line)."""
    out = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = (node.lineno, node.end_lineno)
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        out[f"{node.name}.{sub.name}"] = (sub.lineno, sub.end_lineno)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    out[target.id] = (node.lineno, node.end_lineno)
    return out


def anchors(md: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to '-'."""
    out = set()
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_readme_is_short():
    """README.md is the first page a user reads: at most README_MAX_LINES lines; the rest lives in docs/."""
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_cited_lines_lie_inside_the_functions_they_name():
    """A link [`FILE.py:NAME`](../FILE.py#LN) cites line N of FILE.py as part of NAME: N lies between NAME's
    first and last line. A line number that drifts out of its function fails here, with the range it has."""
    cited = 0
    for doc in DOCS:
        for file, name, target, line in re.findall(r"\[`([\w/]+\.py):([\w.]+)`\]\((?:\.\./)?([\w/]+\.py)#L(\d+)\)",
                                                   doc.read_text(encoding="utf-8")):
            assert file == target, f"{doc.name}: the link text names {file}, the link goes to {target}"
            names = defined_names(ROOT / file)
            assert name in names, f"{doc.name}: {file} defines no {name}"
            first, last = names[name]
            assert first <= int(line) <= last, f"{doc.name}: {file}#L{line} is outside {name} (lines {first}-{last})"
            cited += 1
    assert cited >= 20   # docs/paper.md maps every equation of the paper to its line


def test_named_functions_tests_and_files_exist():
    """Every `module.name` (module a .py file of the repository root), `FILE.py:name`, `tests/FILE.py::test`
    and relative link (with its #anchor, for Markdown files) in README.md and docs/ names something that
    exists."""
    modules = {p.stem: p for p in ROOT.glob("*.py")}
    missing = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for mod, name in re.findall(r"`(\w+)\.(\w+)(?=[`(\[])", text):
            if mod in modules and name not in FILE_TYPES and name not in defined_names(modules[mod]):
                missing.append(f"{doc.name}: {mod}.{name}")
        for file, name in re.findall(r"`([\w/]+\.py):([\w.]+)`", text):
            if not (ROOT / file).is_file() or name not in defined_names(ROOT / file):
                missing.append(f"{doc.name}: {file}:{name}")
        for file, test in re.findall(r"`(tests/[\w/]+\.py)::(\w+)", text):
            if not (ROOT / file).is_file() or not re.search(rf"^def {test}\(", (ROOT / file).read_text(), re.M):
                missing.append(f"{doc.name}: {file}::{test}")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):   # https://...
                continue
            path, _, anchor = target.partition("#")
            where = (doc.parent / path).resolve() if path else doc
            if not where.exists():
                missing.append(f"{doc.name}: link to {target}")
            elif anchor and where.suffix == ".md" and anchor not in anchors(where):
                missing.append(f"{doc.name}: link to {target} (no such heading)")
    assert not missing, "\n".join(missing)


def test_docs_named_in_code_exist():
    """A module, script or test that sends its reader to docs/NAME.md names a page that exists."""
    named = {(p.relative_to(ROOT), m) for p in [*ROOT.glob("*.py"), *ROOT.glob("*/*.py"), ROOT / "gpu_checks.sh"]
             if p != Path(__file__) for m in re.findall(r"docs/[\w-]+\.md", p.read_text(encoding="utf-8"))}
    assert named and not [f"{p}: {m}" for p, m in named if not (ROOT / m).is_file()]


# Text that cites what a clone does not have, or tells history instead of what is.
FORBIDDEN = re.compile(r"CASP\.md|PERF\.md|STYLE\.md|\.\./shared|/work/|\bas before\b|\bearlier versions?\b|"
                       r"\b[Ii]ssue \d+|\bthe session\b|\bbefore this one\b")


def test_no_outside_files_and_no_history_in_user_facing_text():
    """README, docs/, every module, script, benchmark, test and gpu_checks.sh: no citation of files outside
    the repository (CASP.md, PERF.md, STYLE.md, ../shared, /work/...) and no development history ("as before",
    "earlier versions", "issue 18", "the session")."""
    files = [*DOCS, ROOT / "gpu_checks.sh", ROOT / ".ci" / "run",
             *[p for p in ROOT.rglob("*.py") if p != Path(__file__) and ".git" not in p.parts]]
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files if p.is_file()
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if FORBIDDEN.search(line)]
    assert not hits, "\n".join(hits)
