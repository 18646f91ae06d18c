"""Shared test setup: the repository root on sys.path, where the real data and the real Qwen2.5 tokenizer
are found, the gpu and slow markers.

Tests that need real data find it the way the program does, then run with those variables removed from the
environment, so that no run a test starts reads the caller's data folder by accident:
    datasets   data.default_data_dir(): $CASP_DATA, else ~/.cache/casp/data ($CASP_HOME/data), where
               `python data.py prepare` writes them
    tokenizer  $CASP_QWEN_TOKENIZER (a folder with a Qwen2.5 tokenizer.json), else the first Qwen2.5 model of
               model.MODEL_NAMES in the Hugging Face cache, resolved as --model NAME is
               (`hf download Qwen/Qwen2.5-0.5B-Instruct config.json tokenizer.json` puts one there)
Without them those tests skip, and their reason names the command that enables them.
"""
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
from model import MODEL_NAMES, Transformer, resolve_model_path, save_model  # noqa: E402

# The datasets the real-data tests read (the others, e.g. bbh, are checked when the folder has them).
TEST_DATASETS = ("math_train", "math500", "aime2024", "aime2025", "amc23", "minerva_math", "olympiadbench",
                 "gsm8k_train", "gsm8k_test", "humaneval", "knights_knaves", "zebra_puzzles")
ENABLE_TOKENIZER = ("hf download Qwen/Qwen2.5-0.5B-Instruct config.json tokenizer.json "
                    "(or set CASP_QWEN_TOKENIZER to a folder with a Qwen2.5 tokenizer.json)")


def find_qwen_tokenizer() -> Path | None:
    """$CASP_QWEN_TOKENIZER, else the folder of the first Qwen2.5 model in MODEL_NAMES that the Hugging Face
    cache holds with its tokenizer.json (model.resolve_model_path: never downloads)."""
    if os.environ.get("CASP_QWEN_TOKENIZER"):
        return Path(os.environ["CASP_QWEN_TOKENIZER"]).expanduser()
    for name, (repo_id, _) in MODEL_NAMES.items():
        if repo_id and repo_id.startswith("Qwen/Qwen2.5"):
            try:
                folder = resolve_model_path(name)
            except (FileNotFoundError, ValueError):
                continue
            if (folder / "tokenizer.json").is_file():
                return folder
    return None


DATA_DIR = data.default_data_dir()
QWEN_TOKENIZER = find_qwen_tokenizer()
for _var in ("CASP_DATA", "CASP_QWEN_TOKENIZER"):   # found above; the programs under test must not see them
    os.environ.pop(_var, None)


def pytest_collection_modifyitems(config, items):
    """gpu tests skip without CUDA; slow tests (minutes on 2 CPU cores) run only when `-m` or a
    `FILE::TEST` argument names them."""
    no_gpu = pytest.mark.skip(reason="needs a CUDA device: python -m pytest -q -m gpu on a GPU machine")
    not_asked = pytest.mark.skip(reason="slow (minutes on 2 CPU cores): python -m pytest -q -m slow")
    named = {arg.split("::")[1].split("[")[0] for arg in config.args if "::" in arg}
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        elif ("slow" in item.keywords and "slow" not in config.getoption("markexpr", "")
              and item.originalname not in named):
            item.add_marker(not_asked)


@pytest.fixture
def data_dir():
    """The data folder, when it holds every dataset of TEST_DATASETS; else the test skips, naming the command
    that prepares what is missing."""
    missing = [n for n in TEST_DATASETS if not (DATA_DIR / f"{n}.jsonl").is_file()]
    if missing:
        pytest.skip(f"needs prepared datasets missing from {DATA_DIR}: python data.py prepare {' '.join(missing)} "
                    "(or set CASP_DATA to a folder that has them)")
    return DATA_DIR


@pytest.fixture
def qwen_tokenizer_dir():
    """A folder with a Qwen2.5 tokenizer.json; else the test skips, naming the command that downloads one."""
    if QWEN_TOKENIZER is None or not (QWEN_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(f"needs a Qwen2.5 tokenizer.json ({QWEN_TOKENIZER or 'none in the Hugging Face cache'}): "
                    f"{ENABLE_TOKENIZER}")
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
    """The 4 synthetic problems the shared `tiny_dir` model was fitted to, as a JSONL data file."""
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
