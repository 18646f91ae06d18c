"""Shared test setup: the repository root on sys.path, the read-only ../shared folder, the gpu marker."""
import copy
import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402  (the repository root must be on sys.path first)
import tiny  # noqa: E402
from model import MODEL_NAMES, Transformer, save_model  # noqa: E402

# Real data and the real Qwen2.5 tokenizer live beside the checkout (never copied into the repo).
SHARED = Path(os.environ.get("CASP_SHARED", ROOT.parent / "shared"))
DATA_DIR = SHARED / "data"
QWEN_TOKENIZER = SHARED / "tokenizers" / "qwen2.5"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def data_dir():
    if not DATA_DIR.is_dir():
        pytest.skip(f"benchmark data not found at {DATA_DIR} (set CASP_SHARED)")
    return DATA_DIR


@pytest.fixture
def qwen_tokenizer_dir():
    if not (QWEN_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(f"Qwen2.5 tokenizer not found at {QWEN_TOKENIZER} (set CASP_SHARED)")
    return QWEN_TOKENIZER


@pytest.fixture(autouse=True, scope="session")
def verifier_internal_errors_raise():
    """The verifier never raises for its users: an exception inside verify, extract_answer, is_equivalent
    or normalize is counted and gives reward 0. Under the tests it is re-raised instead (here and, through
    the environment, in every process a test starts), so that a rule broken at its first line fails the
    tests that exercise it rather than quietly scoring 0."""
    import verifier
    os.environ["CASP_VERIFIER_RAISE"] = "1"
    verifier.RAISE_INTERNAL_ERRORS = True
    yield


@pytest.fixture
def one_thread():
    """Tiny matmuls: one intra-op thread is faster, and far faster when the cores are shared (2 threads
    spin-wait against other processes). Test files that run the tiny model use it for every test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def problems_file(tmp_path_factory):
    """The 4 synthetic problems the session's tiny model was fitted to, as a JSONL data file."""
    path = tmp_path_factory.mktemp("data") / "four.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in data.load_dataset("synthetic", limit=4)))
    return path


# -----------------------------------------------------------------------------
# A tiny model that is sometimes right (shared by the eval and train tests)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny model (2 layers) fitted for 150 steps to worked solutions of 4 held-out problems, saved with
    its character tokenizer: sometimes right, sometimes wrong, along several solution paths."""
    path = tmp_path_factory.mktemp("tiny")
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = tiny.make_tiny_tokenizer(path)
    cfg = copy.deepcopy(MODEL_NAMES["tiny"][1])
    cfg.vocab_size, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = tok.vocab_size, 2, 64, 128
    model = Transformer(cfg)
    model.init_weights(generator=torch.Generator().manual_seed(0))
    probs = data.load_dataset("synthetic", limit=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng, end = random.Random(0), tok.stop_ids[0]
    for _ in range(150):
        rows = [(data.build_prompt(p, tok), tok.encode(tiny.synthetic_solution(p, rng)) + [end]) for p in probs * 4]
        S = max(len(a) + len(b) for a, b in rows)
        seq = torch.tensor([a + b + [0] * (S - len(a) - len(b)) for a, b in rows])            # (B, S)
        mask = torch.tensor([[False] * len(a) + [True] * len(b) + [False] * (S - len(a) - len(b))
                             for a, b in rows])                                               # (B, S)
        logits = model(seq[:, :-1])                                                           # (B, S-1, V)
        loss = F.cross_entropy(logits[mask[:, 1:]], seq[:, 1:][mask[:, 1:]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(model, path)
    torch.set_num_threads(n_threads)
    return path
