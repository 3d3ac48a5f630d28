"""Shared pytest fixtures, and the test tiers.

Tiers (markers, set here by where a test lives so that no test file has to remember them):
- `slow`: end-to-end runs of the real CLI (tests/integration), the multi-process layout tests
  (tests/distributed) and the few unit tests that build a DeepSpeed engine or a subprocess;
- `multiprocess`: launches two or more ranks (torchrun, spawned gloo worlds);
- `slurm`: starts a real local Slurm cluster (root, apt-get).
`make test-fast` runs `-m "not slow"` (the inner loop, a few minutes); `make test` runs all.

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


# Files outside tests/distributed that launch several ranks, and unit files that are slow
# (each over ~5 s on the 2-core CI machine: a DeepSpeed engine, a subprocess, a big corpus).
_MULTIPROCESS_FILES = {"test_hf_export.py", "test_resume.py", "test_slurm.py",
                       "test_tp2_run.py", "test_launch_errors.py",
                       "test_resume_on_another_layout.py"}
_SLOW_UNIT_FILES = {"test_local_engine.py", "test_cpu_compat.py", "test_builtin_corpus.py",
                    "test_generate_speculative.py", "test_generate_distribution.py",
                    "test_compile.py", "test_step_launches.py"}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in (("slow", "end-to-end or multi-process; skipped by `make test-fast`"),
                       ("multiprocess", "launches two or more ranks"),
                       ("slurm", "starts a real local Slurm cluster (root)")):
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        tier = path.parent.name
        if tier in ("integration", "distributed") or path.name in _SLOW_UNIT_FILES:
            item.add_marker(pytest.mark.slow)
        if tier == "distributed" or path.name in _MULTIPROCESS_FILES:
            item.add_marker(pytest.mark.multiprocess)
        if path.name.startswith("test_slurm"):
            item.add_marker(pytest.mark.slurm)


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
