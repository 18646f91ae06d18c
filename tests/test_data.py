"""data.py: loading errors that name file and line, prompts in the chat format, the synthetic task
(its solutions verify with the real verifier, its splits never overlap) and the tiny tokenizer."""
import json
import random

import pytest

import data
from model import MODEL_NAMES, load_tokenizer


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
    """Every named benchmark of ../shared/data loads with its task and the verifier's fields; MATH500's
    'Question: ... Answer: Let's think step by step.' wrapper is removed."""
    sizes = {"math500": 500, "aime2024": 30, "humaneval": 164, "knights_knaves": 300, "zebra_puzzles": 200}
    for name, (task, _) in data.DATA_SOURCES.items():
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


# -----------------------------------------------------------------------------
# The synthetic task and the tiny tokenizer


def test_synthetic_is_deterministic_and_splits_never_overlap():
    """Same seed -> same problems; different seeds -> different draws; no expression is in both splits,
    whatever the seeds; values respect the limit."""
    a = data.synthetic_problems(300, seed=1)
    assert a == data.synthetic_problems(300, seed=1)
    assert a != data.synthetic_problems(300, seed=2)
    train = {p["problem"] for s in (0, 1) for p in data.synthetic_problems(3000, seed=s, split="train")}
    held = {p["problem"] for s in (0, 1) for p in data.synthetic_problems(500, seed=s, split="heldout")}
    assert not train & held and len(held) > 500
    assert all(0 < int(p["answer"]) <= 99 and eval(p["problem"]) == int(p["answer"]) for p in a)
    assert {p["id"] for p in data.load_dataset("synthetic")} <= {"synthetic/" + e for e in held} | {
        "synthetic/" + p["problem"] for p in data.synthetic_problems(500, 0, "heldout")}
    with pytest.raises(ValueError, match="split"):
        data.synthetic_problems(3, split="test")


def test_synthetic_solutions_verify_with_the_real_verifier():
    """Every worked solution of every problem (all paths, enumerated) gets reward 1 from the real math
    verifier, a wrong box gets 0, random solutions are among the enumerated ones, and problems have
    several paths (3 for a+b+c)."""
    from verifier import reward

    probs = data.synthetic_problems(200, seed=7, split="heldout")
    rng = random.Random(0)
    n_paths = []
    for p in probs:
        sols = data.synthetic_solutions(p)
        n_paths.append(len(sols))
        for s in sols:
            assert s.endswith(f"\\boxed{{{p['answer']}}}")
            assert reward(s, p["answer"], **data.verifier_fields(p)) == 1.0, (p, s)
        assert data.synthetic_solution(p, rng) in sols
        wrong = sols[0].replace(f"\\boxed{{{p['answer']}}}", f"\\boxed{{{int(p['answer']) + 1}}}")
        assert reward(wrong, p["answer"], **data.verifier_fields(p)) == 0.0
    assert len(data.synthetic_solutions({"problem": "2+3+4"})) == 3
    assert sum(n > 1 for n in n_paths) > len(probs) / 2


def test_tiny_tokenizer_fits_and_round_trips(tmp_path):
    """The character tokenizer fits the tiny model's vocab (64), is detected as ChatML with <|im_end|> as a
    stop id, encodes specials as one id each, and decodes prompts and solutions losslessly."""
    tok = data.make_tiny_tokenizer(tmp_path / "tiny")
    assert tok.vocab_size <= MODEL_NAMES["tiny"][1].vocab_size
    again = load_tokenizer(tmp_path / "tiny")
    assert again.chat_format == "chatml" and tok.token_to_id("<|im_end|>") in again.stop_ids
    assert len(json.loads((tmp_path / "tiny" / "tokenizer.json").read_text())["added_tokens"]) == 3
    rng = random.Random(0)
    for p in data.synthetic_problems(100, seed=0):
        ids = data.build_prompt(p, tok)
        text = tok.decode(ids, skip_special_tokens=False)
        user = f"{p['problem']}\n{data.SYNTH_INSTRUCTION}" if data.SYNTH_INSTRUCTION else p["problem"]
        assert text == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        assert len(ids) == len(text) - 2 * (len("<|im_start|>") - 1) - (len("<|im_end|>") - 1)
        sol = data.synthetic_solution(p, rng)
        assert tok.decode(tok.encode(sol)) == sol and len(tok.encode(sol)) == len(sol)
    assert tok.token_to_id("<|unk|>") not in tok.encode(data.TINY_CHARS)
    assert tok.decode(tok.encode(data.TINY_CHARS)) == data.TINY_CHARS
