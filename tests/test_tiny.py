"""tiny.py: the synthetic task (deterministic, held-out split disjoint, solutions verify) and the tiny
character-level tokenizer."""
import json
import random

import pytest

import data
import tiny
from model import MODEL_NAMES, load_tokenizer

# -----------------------------------------------------------------------------
# The synthetic task and the tiny tokenizer


def test_synthetic_is_deterministic_and_splits_never_overlap():
    """Same seed -> same problems; different seeds -> different draws; no expression is in both splits,
    whatever the seeds; values respect the limit."""
    a = tiny.synthetic_problems(300, seed=1)
    assert a == tiny.synthetic_problems(300, seed=1)
    assert a != tiny.synthetic_problems(300, seed=2)
    train = {p["problem"] for s in (0, 1) for p in tiny.synthetic_problems(3000, seed=s, split="train")}
    held = {p["problem"] for s in (0, 1) for p in tiny.synthetic_problems(500, seed=s, split="heldout")}
    assert not train & held and len(held) > 500
    assert all(0 < int(p["answer"]) <= 99 and eval(p["problem"]) == int(p["answer"]) for p in a)
    assert {p["id"] for p in data.load_dataset("synthetic")} <= {"synthetic/" + e for e in held} | {
        "synthetic/" + p["problem"] for p in tiny.synthetic_problems(500, 0, "heldout")}
    with pytest.raises(ValueError, match="split"):
        tiny.synthetic_problems(3, split="test")


def test_synthetic_solutions_verify_with_the_real_verifier():
    """Every worked solution of every problem (all paths, enumerated) gets reward 1 from the real math
    verifier, a wrong box gets 0, random solutions are among the enumerated ones, and problems have
    several paths (3 for a+b+c)."""
    from verifier import reward

    probs = tiny.synthetic_problems(200, seed=7, split="heldout")
    rng = random.Random(0)
    n_paths = []
    for p in probs:
        sols = tiny.synthetic_solutions(p)
        n_paths.append(len(sols))
        for s in sols:
            assert s.endswith(f"\\boxed{{{p['answer']}}}")
            assert reward(s, p["answer"], **data.verifier_fields(p)) == 1.0, (p, s)
        assert tiny.synthetic_solution(p, rng) in sols
        wrong = sols[0].replace(f"\\boxed{{{p['answer']}}}", f"\\boxed{{{int(p['answer']) + 1}}}")
        assert reward(wrong, p["answer"], **data.verifier_fields(p)) == 0.0
    assert len(tiny.synthetic_solutions({"problem": "2+3+4"})) == 3
    assert sum(n > 1 for n in n_paths) > len(probs) / 2


def test_tiny_tokenizer_fits_and_round_trips(tmp_path):
    """The character tokenizer fits the tiny model's vocab (64), is detected as ChatML with <|im_end|> as a
    stop id, encodes specials as one id each, and decodes prompts and solutions losslessly. The warm start's
    prompt (tiny.prompt_ids) is the one training and eval.py build (data.build_prompt)."""
    tok = tiny.make_tiny_tokenizer(tmp_path / "tiny")
    assert tok.vocab_size <= MODEL_NAMES["tiny"][1].vocab_size
    again = load_tokenizer(tmp_path / "tiny")
    assert again.chat_format == "chatml" and tok.token_to_id("<|im_end|>") in again.stop_ids
    assert len(json.loads((tmp_path / "tiny" / "tokenizer.json").read_text())["added_tokens"]) == 3
    rng = random.Random(0)
    for p in tiny.synthetic_problems(100, seed=0):
        ids = data.build_prompt(p, tok)
        assert tiny.prompt_ids(p, tok) == ids
        text = tok.decode(ids, skip_special_tokens=False)
        user = f"{p['problem']}\n{tiny.SYNTH_INSTRUCTION}" if tiny.SYNTH_INSTRUCTION else p["problem"]
        assert text == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        assert len(ids) == len(text) - 2 * (len("<|im_start|>") - 1) - (len("<|im_end|>") - 1)
        sol = tiny.synthetic_solution(p, rng)
        assert tok.decode(tok.encode(sol)) == sol and len(tok.encode(sol)) == len(sol)
    assert tok.token_to_id("<|unk|>") not in tok.encode(tiny.TINY_CHARS)
    assert tok.decode(tok.encode(tiny.TINY_CHARS)) == tiny.TINY_CHARS
