"""Shared test setup: the repository root on sys.path, the read-only ../shared folder, the gpu marker."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Real data and the real Qwen2.5 tokenizer live beside the checkout (never copied into the repo).
SHARED = Path(os.environ.get("CASP_SHARED", ROOT.parent / "shared"))
DATA_DIR = SHARED / "data"
QWEN_TOKENIZER = SHARED / "tokenizers" / "qwen2.5"


def pytest_collection_modifyitems(config, items):
    import torch
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
