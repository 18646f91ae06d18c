"""data.py: loading errors that name file and line, prompts in the chat format, the synthetic task
(its solutions verify with the real verifier, its splits never overlap) and the tiny tokenizer."""

import pytest

import data
from model import load_tokenizer


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


# -----------------------------------------------------------------------------
# Loading


def test_load_jsonl_errors_name_file_and_line(tmp_path):
    """Every bad-input error names the file, and the 1-based line where a line is at fault."""
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        data.load_jsonl(tmp_path / "nope.jsonl")
    f = write(tmp_path / "bad.jsonl", ['{"problem": "1+1", "answer": "2"}', "", '{"problem": "x", "answer": '])
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON"):
        data.load_jsonl(f)
    f = write(tmp_path / "miss.jsonl", ['{"problem": "1+1", "answer": "2"}', '{"problem": "2+2"}'])
    with pytest.raises(ValueError, match=r"miss\.jsonl:2: missing field\(s\) 'answer'"):
        data.load_jsonl(f)
    f = write(tmp_path / "type.jsonl", ['{"problem": ["a"], "answer": "2"}'])
    with pytest.raises(ValueError, match=r"type\.jsonl:1: field 'problem' must be a string"):
        data.load_jsonl(f)
    f = write(tmp_path / "empty.jsonl", ["", "   "])
    with pytest.raises(ValueError, match=r"empty\.jsonl: empty dataset"):
        data.load_jsonl(f)
    f = write(tmp_path / "arr.jsonl", ["[1, 2]"])
    with pytest.raises(ValueError, match=r"arr\.jsonl:1: expected a JSON object"):
        data.load_jsonl(f)


def test_load_dataset_by_path_and_missing_folder(tmp_path, monkeypatch):
    """A path loads with ids, task and a numeric answer made a string; a code problem without its test
    fields is an error naming the line; a missing data folder says where to get the data."""
    f = write(tmp_path / "mine.jsonl", ['{"problem": "1+1", "answer": 2}',
                                        '{"problem": "def f():", "answer": "", "task": "code"}'])
    with pytest.raises(ValueError, match=r"mine\.jsonl:2: a code problem needs field\(s\) 'prompt', 'test'"):
        data.load_dataset(str(f))
    f = write(tmp_path / "ok.jsonl", ['{"problem": "1+1", "answer": 2}'])
    [p] = data.load_dataset(str(f))
    assert p == {"problem": "1+1", "answer": "2", "task": "math", "id": "ok/1"}
    monkeypatch.setenv("CASP_DATA", str(tmp_path / "no_such_dir"))
    with pytest.raises(FileNotFoundError, match=r"math500.*CASP_DATA.*HuggingFaceH4/MATH-500"):
        data.load_dataset("math500")
    with pytest.raises(ValueError, match="unknown dataset 'math9000'"):
        data.load_dataset("math9000")


def test_real_benchmarks_load_with_their_tasks(data_dir):
    """Every named benchmark of the data folder loads with its task and the verifier's fields; MATH500's
    'Question: ... Answer: Let's think step by step.' wrapper is removed."""
    sizes = {"math500": 500, "aime2024": 30, "humaneval": 164, "knights_knaves": 300, "zebra_puzzles": 200,
             "math_test": 5000, "simplelr_gsm8k_level1": 8388}
    optional = {"math_test", "simplelr_gsm8k_level1"}   # the authors' recipe sets: checked when the folder has them
    for name, (task, _) in data.DATA_SOURCES.items():
        if name in optional | {"bbh", "synlogic", "livecodebench"} and not (data_dir / f"{name}.jsonl").is_file():
            continue   # not in every shared data folder (their rows are tested in test_benchmarks.py / test_prepare.py)
        probs = data.load_dataset(name, data_dir)
        assert probs and all(p["task"] == task for p in probs), name
        assert len({p["id"] for p in probs}) == len(probs), name
        if name in sizes:
            assert len(probs) == sizes[name]
    m = data.load_dataset("math500", data_dir)
    assert not any(p["problem"].startswith("Question:") or "Let's think step by step" in p["problem"] for p in m)
    he = data.load_dataset("humaneval", data_dir)[0]
    assert {"prompt", "test", "entry_point"} <= he.keys()
    kk = data.load_dataset("knights_knaves", data_dir)[0]
    assert {"names", "solution", "terms", "problem"} <= data.verifier_fields(kk).keys()


# -----------------------------------------------------------------------------
# Prompts


def test_prompt_is_qwen_chatml_with_the_boxed_instruction(qwen_tokenizer_dir):
    """The math prompt is exactly Qwen's ChatML user turn (problem + the \\boxed{} instruction) followed
    by the assistant header; prompts over max_prompt_tokens are skipped and counted."""
    tok = load_tokenizer(qwen_tokenizer_dir)
    prob = {"problem": "What is $1+1$?", "answer": "2", "task": "math"}
    ids = data.build_prompt(prob, tok)
    text = ("<|im_start|>user\nWhat is $1+1$?\nPlease reason step by step, and put your final answer within "
            "\\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert ids[0] == tok.token_to_id("<|im_start|>")
    code = data.build_prompt({"problem": "def f(x):\n", "answer": "", "task": "code"}, tok)
    assert "```python\ndef f(x):\n```" in tok.decode(code, skip_special_tokens=False)
    long = dict(prob, problem="x " * 2000)
    kept, skipped = data.encode_prompts([prob, long, prob], tok, max_prompt_tokens=1024)
    assert skipped == 1 and [k["prompt_ids"] for k in kept] == [ids, ids]
