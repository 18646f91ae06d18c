"""`python data.py prepare`: each source row converts to the project's JSONL row by a pure function, the
files written from downloaded source files (`--from`, no network) load with data.load_dataset, their
reference solutions verify, the rows equal the data folder's rows of the same problems, writes are atomic
and a second run is a no-op.

The fixtures (tests/fixtures/prepare_sources.json) are a few rows of each source in its real schema,
keyed by the path the file has in the downloaded repository; the test writes them as parquet or JSONL as
the path says, plus rows of the other split / config / year that must be left out or dropped.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import data
import verifier

FIXTURES = Path(__file__).parent / "fixtures" / "prepare_sources.json"
BENCH_FIXTURES = Path(__file__).parent / "fixtures" / "prepare_benchmarks.json"   # BBH, SynLogic, LiveCodeBench
ROOT = Path(__file__).resolve().parent.parent


def write_sources(root: Path) -> Path:
    """The fixture rows as files under root/<name>/<path in the repo> (parquet, JSONL, or a JSON file
    when the fixture holds an object: the BBH authors' {"canary", "examples"})."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    for fixture in (FIXTURES, BENCH_FIXTURES):
        for name, files in json.loads(fixture.read_text()).items():
            for rel, rows in files.items():
                path = root / name / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix == ".parquet":
                    pq.write_table(pa.Table.from_pylist(rows), path)
                elif isinstance(rows, dict):
                    path.write_text(json.dumps(rows))
                else:
                    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(source folder, output folder, report) of one `prepare --from` over every dataset."""
    src = write_sources(tmp_path_factory.mktemp("downloads"))
    out = tmp_path_factory.mktemp("data")
    report = data.main(["prepare", "--from", str(src), "--out", str(out)])
    return src, out, {r["name"]: r for r in report}


# -----------------------------------------------------------------------------
# The converters, row by row


def test_math_answer_is_the_last_boxed_of_the_solution():
    """MATH: the answer is the last \\boxed{} (nested braces kept); a solution without one is dropped."""
    row = {"problem": "p", "level": "Level 2", "type": "Algebra",
           "solution": "First $\\boxed{1}$, then $x = \\boxed{\\frac{1}{2}}$."}
    assert data.convert_math(row) == {"problem": "p", "answer": "\\frac{1}{2}", "solution": row["solution"],
                                      "subject": "Algebra", "level": "Level 2"}
    assert data.convert_math(dict(row, solution="no box")).startswith("no answer")
    assert data.last_boxed("\\boxed{a{b}c} and \\fbox{d}") == "d"
    assert data.last_boxed("\\boxed{unclosed") is None


def test_gsm8k_answer_after_hashes_without_thousands_separators():
    row = {"question": "q", "answer": "He pays $1,000 + $234.\n#### 1,234"}
    assert data.convert_gsm8k(row) == {"problem": "q", "answer": "1234", "solution": row["answer"]}
    assert data.convert_gsm8k({"question": "q", "answer": "#### -3.5"})["answer"] == "-3.5"
    assert data.convert_gsm8k({"question": "q", "answer": "no final line"}) == "no '####' answer line"


def test_competition_answers_are_integer_strings_of_one_year():
    """AIME/AMC: 27.0 becomes "27", a digit string stays as it is; rows of another year (by url) are dropped with the reason."""
    conv = data.convert_competition("2023")
    url = "https://artofproblemsolving.com/wiki/index.php/2023_AMC_12A_Problems/Problem_1"
    assert conv({"id": 5, "problem": "p", "answer": 27.0, "url": url}) == {
        "problem": "p", "answer": "27", "source_id": 5, "url": url}
    assert conv({"question": "p", "answer": "027"}) == {"problem": "p", "answer": "027"}
    assert conv({"id": 1, "problem": "p", "answer": 3.0, "url": url.replace("2023", "2022")}) == "not from 2023"


def test_olympiadbench_multiple_answers_and_units():
    row = {"id": 7, "question": "q", "final_answer": ["$69$", "$84$"], "unit": None, "answer_type": "Numerical",
           "is_multiple_answer": True, "subfield": "Algebra"}
    assert data.convert_olympiadbench(row) == {
        "problem": "q", "answer": "$69$, $84$", "unit": None, "answer_type": "Numerical",
        "multiple_answers": True, "subject": "Algebra", "source_id": 7}
    assert data.convert_olympiadbench(dict(row, final_answer=["5"], unit="cm"))["unit"] == "cm"
    assert data.convert_olympiadbench(dict(row, final_answer=[])) == "no final answer"


def test_simplelr_rows_of_the_authors_llama_set():
    """The authors' Llama training set (their verl parquet, real rows in the fixture): problem = the user
    turn's content (what their prompt template receives), answer = reward_model.ground_truth, the worked
    solution and level kept, the id from extra_info.index; the source is their file at a pinned commit."""
    rows = json.loads(FIXTURES.read_text())["simplelr_gsm8k_level1"]["train.parquet"]
    gsm, alg = rows[0], rows[1]
    out = data.convert_simplelr(gsm)
    assert out == {"problem": gsm["prompt"][0]["content"], "answer": "180", "solution": gsm["target"], "level": 1,
                   "source_id": 0}
    assert out["problem"].startswith("Mrs. Gable") and out["solution"].endswith("# Answer\n\n180")
    assert data.convert_simplelr(alg)["answer"] == "x^6-5832" and data.convert_simplelr(alg)["source_id"] == 5
    assert data.convert_simplelr(dict(gsm, reward_model={"ground_truth": ""})) == "no problem or no ground truth"
    src = data.SOURCES["simplelr_gsm8k_level1"]
    assert "306f4ff4e84ace53e92501939692fcfeb32596b5/data/gsm8k_level1/train.parquet" in src.url
    assert src.url in data.download_command("simplelr_gsm8k_level1", src, "DIR/x")


def test_humaneval_fields():
    row = {"task_id": "HumanEval/3", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
           "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    out = data.convert_humaneval(row)
    assert out["id"] == "HumanEval/3" and out["problem"] == row["prompt"] and out["answer"] == row["canonical_solution"]
    assert {k: out[k] for k in ("prompt", "test", "entry_point")} == {k: row[k] for k in ("prompt", "test", "entry_point")}


# -----------------------------------------------------------------------------
# prepare --from, end to end


def test_prepare_writes_every_dataset_with_counts_and_reasons(prepared):
    """Every dataset file is written; other splits/configs are left out; dropped rows are counted with why."""
    _, out, report = prepared
    assert set(report) == set(data.SOURCES)
    expect = {"math_train": 3, "math500": 2, "aime2024": 2, "aime2025": 2, "amc23": 2, "minerva_math": 2,
              "olympiadbench": 3, "gsm8k_train": 3, "gsm8k_test": 1, "humaneval": 2, "knights_knaves": 2,
              "zebra_puzzles": 1, "bbh": 60, "synlogic": 32, "livecodebench": 2, "math_test": 2,
              "simplelr_gsm8k_level1": 3}
    assert {n: r["written"] for n, r in report.items()} == expect
    assert report["math_train"]["dropped"] == {"no answer (empty, or no \\boxed{} in the solution)": 1}
    assert report["aime2024"]["dropped"] == {"not from 2024": 1}
    assert report["amc23"]["dropped"] == {"not from 2023": 1}
    assert report["synlogic"]["dropped"] == {
        "reference answer does not verify (sudoku)": 1,
        "unsupported type arrow_maze (ray-cover grid rules not re-implemented)": 1,
        "unsupported type calcudoko (cage arithmetic rules not re-implemented)": 1}
    assert list(report["livecodebench"]["dropped"]) == [
        "tests refused or unreadable (refused: the pickle is not a plain string)"]
    text = " ".join(p["problem"] for n in expect for p in data.load_dataset(n, out))
    assert "TEST SPLIT ROW" not in text and "TRAIN SPLIT ROW" not in text and "PHYSICS ROW" not in text
    assert "HARD CONFIG ROW" not in text and "FUTURE RELEASE ROW" not in text and "MODEL OUTPUT ROW" not in text
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no temporary file left behind


def test_prepared_rows_equal_the_shared_layout(prepared, data_dir):
    """The rows written from the sources' own schema equal the data folder's rows of the same problems
    (the project's layout), field by field, for the fields the shared files have."""
    _, out, _ = prepared
    for name in ("math_train", "aime2024", "amc23", "aime2025", "gsm8k_train", "gsm8k_test", "humaneval",
                 "knights_knaves", "zebra_puzzles", "olympiadbench"):
        shared = {(p["problem"]): p for p in map(json.loads, open(data_dir / f"{name}.jsonl"))}
        for row in map(json.loads, open(out / f"{name}.jsonl")):
            if row["problem"] not in shared:
                continue  # fixture rows made up for the test (a dropped year, big numbers)
            ref = shared[row["problem"]]
            keys = set(ref) - {"id", "url"} if name != "humaneval" else set(ref)
            assert {k: row.get(k) for k in keys} == {k: ref[k] for k in keys}, name
    big = [r for r in map(json.loads, open(out / "gsm8k_train.jsonl")) if r["problem"] == "Big numbers?"]
    assert big[0]["answer"] == "1234"


def test_prepared_files_load_and_their_references_verify(prepared):
    """Each prepared file loads with data.load_dataset, and each reference solution (or, without one, the
    gold answer itself) earns reward 1 from verifier.py: a file the verifier cannot grade is caught here."""
    _, out, _ = prepared
    for name in data.SOURCES:
        if name in ("bbh", "synlogic", "livecodebench"):
            continue   # their own references: tests/test_benchmarks.py
        for p in data.load_dataset(name, out):
            task = p["task"]
            if task == "code":
                response = f"```python\n{p['prompt']}{p['answer']}```"
            elif task == "logic":
                response = p["answer"]
            elif name.startswith("gsm8k"):
                response = f"The answer is \\boxed{{{p['answer']}}}."
            else:
                response = p.get("solution") if "\\boxed" in p.get("solution", "") else f"\\boxed{{{p['answer']}}}"
            v = verifier.verify(response, p["answer"], task, **data.verifier_fields(p))
            assert v.reward == 1.0, (name, p["id"], v)


def test_second_run_is_a_noop_and_force_rewrites(prepared):
    src, out, _ = prepared
    f = out / "gsm8k_test.jsonl"
    before, mtime = f.read_bytes(), f.stat().st_mtime_ns
    report = data.main(["prepare", "gsm8k_test", "--from", str(src), "--out", str(out)])
    assert report[0]["status"] == "exists" and f.stat().st_mtime_ns == mtime
    os.utime(f, ns=(0, 0))
    report = data.main(["prepare", "gsm8k_test", "--from", str(src), "--out", str(out), "--force"])
    assert report[0]["status"] == "written" and f.read_bytes() == before and f.stat().st_mtime_ns != 0


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "data.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)


def test_user_errors_are_one_line_with_status_2(tmp_path):
    """Unknown names, a missing --from folder, a missing source folder and a malformed JSONL line each give
    one `error:` line naming the thing, exit status 2, and no traceback."""
    (tmp_path / "src" / "gsm8k_test").mkdir(parents=True)
    (tmp_path / "src" / "gsm8k_test" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    cases = [(["prepare", "math9000"], "unknown dataset(s) math9000"),
             (["prepare", "--from", str(tmp_path / "nowhere")], "nowhere: no such folder"),
             (["prepare", "math500", "--from", str(tmp_path / "src"), "--out", str(tmp_path / "o")],
              "hf download --repo-type dataset HuggingFaceH4/MATH-500"),
             (["prepare", "gsm8k_test", "--from", str(tmp_path / "src"), "--out", str(tmp_path / "o")],
              "test.jsonl:2: malformed JSON")]
    for args, needle in cases:
        r = run_cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        assert r.stderr.startswith("error: ") and needle in r.stderr, (args, r.stderr)
    assert not (tmp_path / "o" / "gsm8k_test.jsonl").exists()  # nothing half-written


def test_missing_optional_dependency_says_what_to_install(tmp_path, monkeypatch, capsys):
    """Without `datasets` (and without --from) prepare names requirements-data.txt instead of failing."""
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(SystemExit) as e:
        data.main(["prepare", "gsm8k_test", "--out", str(tmp_path)])
    assert e.value.code == 2 and "requirements-data.txt" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# Without network, with part of the sources: what was and was not written

# Stand-ins put first on PYTHONPATH of a subprocess: `datasets` fails as the real one does without network
# (a builtin ConnectionError "Couldn't reach ... on the Hub") and counts its calls; `reasoning_gym` serves
# the fixture's items of the logic sets, repeated to the set's size, instead of generating the puzzles (18 s).
FAKE_DATASETS = '''
import os
def load_dataset(repo, config=None, split=None):
    with open(os.environ["FAKE_CALLS"], "a") as f:
        f.write(repo + "\\n")
    raise ConnectionError(f"Couldn't reach '{repo}' on the Hub (LocalEntryNotFoundError)")
'''
FAKE_REASONING_GYM = '''
import json, os
def create_dataset(name, seed, size, **settings):
    files = json.load(open(os.environ["FAKE_FIXTURES"]))[name]
    items = [item for rows in files.values() for item in rows]
    return [items[i % len(items)] for i in range(size)]
'''


def fake_env(tmp_path: Path) -> dict:
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "datasets.py").write_text(FAKE_DATASETS)
    (fakes / "reasoning_gym.py").write_text(FAKE_REASONING_GYM)
    return {"PYTHONPATH": str(fakes), "FAKE_CALLS": str(tmp_path / "calls.txt"), "FAKE_FIXTURES": str(FIXTURES)}


def table_rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in stdout.splitlines() if line.split() and line.split()[0] in data.SOURCES}


def test_prepare_without_network_is_one_error_line_and_a_table(tmp_path):
    """No network: one `error:` line names the dataset and the two ways on (network, or `data.py sources` +
    `--from DIR`), status 2, no traceback; only the first download is tried (each would wait through the
    same retries); the logic set, generated here, is still written; the table says what was and was not."""
    out = tmp_path / "o"
    r = run_cli("prepare", "math_train", "math500", "knights_knaves", "--out", str(out), env=fake_env(tmp_path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: math_train: could not download EleutherAI/hendrycks_math"), lines
    for way in ("Connect to the network", "python data.py sources", "python data.py prepare --from DIR",
                "2 of 3 datasets not written"):
        assert way in lines[0], way
    rows = table_rows(r.stdout)
    assert rows["math_train"][1] == "failed" and rows["math500"][1:3] == ["not", "tried"], r.stdout
    assert rows["knights_knaves"][1:3] == ["written", "300"], r.stdout
    assert sorted(f.name for f in out.iterdir()) == ["knights_knaves.jsonl"]
    assert (tmp_path / "calls.txt").read_text().split() == ["EleutherAI/hendrycks_math"]


def test_prepare_with_the_real_datasets_library_offline(tmp_path):
    """The same with the `datasets` library itself in offline mode (HF_HUB_OFFLINE=1, an empty private
    cache: it raises at once, nothing is fetched): one error line naming the dataset and its repository."""
    pytest.importorskip("datasets", reason="needs the datasets library: pip install -r requirements-data.txt")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "ds"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    r = run_cli("prepare", "gsm8k_test", "--out", str(tmp_path / "o"), env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: gsm8k_test: could not download openai/gsm8k") and "--from DIR" in lines[0]
    assert not (tmp_path / "o" / "gsm8k_test.jsonl").exists()


def test_from_generates_the_logic_sets_and_reports_every_dataset(tmp_path):
    """`prepare --from DIR` with no names: the logic sets, absent from DIR, are generated (not required);
    a download missing from DIR (math500) fails alone, after every other dataset is written, and the table
    lists all of them; the error line names the missing folder and the download command."""
    src = write_sources(tmp_path / "downloads")
    for name in ("knights_knaves", "zebra_puzzles", "math500"):
        shutil.rmtree(src / name)
    out = tmp_path / "o"
    r = run_cli("prepare", "--from", str(src), "--out", str(out), env=fake_env(tmp_path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"error: {src / 'math500'}: not found") and "HuggingFaceH4/MATH-500" in lines[0]
    rows = table_rows(r.stdout)
    assert set(rows) == set(data.SOURCES), r.stdout
    assert {n: row[1] for n, row in rows.items() if row[1] != "written"} == {"math500": "failed"}, r.stdout
    assert rows["knights_knaves"][2] == "300" and rows["zebra_puzzles"][2] == "200"
    assert len(data.load_dataset("knights_knaves", out)) == 300
    assert not (tmp_path / "calls.txt").exists()   # nothing was downloaded


def test_one_split_in_two_formats_is_refused(tmp_path, capsys):
    """Qwen2.5-Math's olympiadbench folder holds test.json and test.jsonl (the same 675 rows): reading both
    would double every problem, so --from refuses, naming the two files, and writes nothing."""
    rows = json.loads(FIXTURES.read_text())["olympiadbench"]
    rows = [r for path, rs in rows.items() if "maths" in path for r in rs]
    folder = tmp_path / "src" / "olympiadbench"
    folder.mkdir(parents=True)
    (folder / "test.json").write_text(json.dumps(rows))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit) as e:
        data.main(["prepare", "olympiadbench", "--from", str(tmp_path / "src"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "test.json and test.jsonl hold the same split" in err and str(folder) in err
    assert not (tmp_path / "o" / "olympiadbench.jsonl").exists()
    (folder / "test.jsonl").unlink()   # one format: read once
    report = data.main(["prepare", "olympiadbench", "--from", str(tmp_path / "src"), "--out", str(tmp_path / "o")])
    assert report[0]["written"] == len(rows)


def test_the_closing_line_says_how_the_tools_find_the_files(tmp_path, monkeypatch, capsys):
    """After --out DIR the message names the flag and the variable that point train.py and eval.py at DIR,
    and both work; written into the default folder, it says they read it by default, which is true."""
    src = write_sources(tmp_path / "downloads")
    monkeypatch.delenv("CASP_DATA", raising=False)
    monkeypatch.setenv("CASP_HOME", str(tmp_path / "home"))
    out = tmp_path / "elsewhere"
    data.main(["prepare", "gsm8k_test", "--from", str(src), "--out", str(out)])
    said = capsys.readouterr().out.splitlines()[-1]
    assert said == (f"data folder: {out}; train.py and eval.py read it with --data-dir {out}, "
                    f"or with CASP_DATA={out} set"), said
    assert data.load_dataset("gsm8k_test", out)
    monkeypatch.setenv("CASP_DATA", str(out))
    assert data.load_dataset("gsm8k_test")
    monkeypatch.delenv("CASP_DATA")
    data.main(["prepare", "gsm8k_test", "--from", str(src)])
    said = capsys.readouterr().out.splitlines()[-1]
    assert said == f"data folder: {tmp_path / 'home' / 'data'}; train.py and eval.py read it by default", said
    assert data.load_dataset("gsm8k_test")


def test_documented_row_counts_are_the_prepared_files(data_dir):
    """docs/data.md's table of the sets states the rows `prepare` writes: each count equals the line count of
    the prepared file of that name (math_train: 7,496, the 4 problems without an answer dropped), and every
    dataset is listed."""
    doc = (ROOT / "docs" / "data.md").read_text()
    section = doc[doc.index("| name | source | rows |"):]
    section = section[:section.index("\n\n")]
    listed, checked = set(), 0
    for line in section.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = [n.strip(" `") for n in cells[0].split(",")]
        counts = [c.strip() for c in cells[-1].split(", ")] if cells[-1] else []
        listed.update(names)
        for name, count in zip(names, counts):
            if (data_dir / f"{name}.jsonl").is_file():   # not every data folder has every set
                assert int(count.replace(",", "")) == sum(1 for _ in open(data_dir / f"{name}.jsonl")), name
                checked += 1
    assert set(data.SOURCES) <= listed, set(data.SOURCES) - listed
    assert checked >= 12   # the sets of every data folder the tests run with
