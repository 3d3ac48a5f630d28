"""Shared pytest fixtures.

`parallel_tp1` starts a world of one process (gloo on CPU) with megatron's parallel_state at
TP=PP=1, once per test session: the single-process unit tests run the same code path as a
real launch, vocab-parallel losses included.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # shared helpers: tests/cli_runner.py

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "disabled")
warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\..*")


@pytest.fixture(scope="session")
def parallel_tp1():
    """A one-process world with megatron's model-parallel state at TP=PP=1."""
    from nextlat_pt.parallel import distributed

    layout = distributed.initialize(tp=1, pp=1, seed=1234)
    yield layout


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory) -> Path:
    """One built-in-corpus cache (tokenizer + tokens) shared by every end-to-end run."""
    return tmp_path_factory.mktemp("corpus_cache")


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory) -> Path:
    """A tiny random Llama folder (1 layer, D=32, vocab 600) with a sentencepiece
    tokenizer.model: `convert --to nextlat` turns it into a checkpoint in a second."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    from nextlat_pt.data.builtin_corpus import stdlib_source_files
    from nextlat_pt.data.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("hf_folder")
    sp = train_sentencepiece(stdlib_source_files()[:20], root / "sp", 600, num_threads=1)
    folder = root / "hf"
    config = LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=32)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    shutil.copyfile(sp, folder / "tokenizer.model")
    return folder
