"""The built-in stdlib corpus: file selection, caching, document split, entropy."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nextlat_pt.data import builtin_corpus as bc
from nextlat_pt.data.builtin_corpus import (
    prepare_builtin_corpus,
    stdlib_root,
    stdlib_source_files,
    unigram_entropy,
    validation_mask,
)

VOCAB = 512
VALID_FRACTION = 0.1


def test_stdlib_source_files_skips_test_dirs(tmp_path):
    for rel in [
        "os.py",
        "json/__init__.py",
        "json/decoder.py",
        "README.txt",
        "test/test_os.py",
        "tests/helper.py",
        "testing_tools/x.py",
        "idlelib/idle_test/t.py",
        "idlelib/editor.py",
        "site-packages/pkg/mod.py",
        "dist-packages/mod.py",
        "lib2to3/tests/data/x.py",
        "mytest/ok.py",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    (tmp_path / "latin1.py").write_bytes(b"s = '\xe9'\n")  # not UTF-8: skipped
    got = [p.relative_to(tmp_path).as_posix() for p in stdlib_source_files(tmp_path)]
    assert got == [
        "idlelib/editor.py",
        "json/__init__.py",
        "json/decoder.py",
        "mytest/ok.py",
        "os.py",
    ]


def test_real_stdlib_listing():
    root = stdlib_root()
    files = stdlib_source_files()
    assert files == sorted(files)
    names = {p.relative_to(root).as_posix() for p in files}
    assert {"os.py", "json/__init__.py", "asyncio/events.py"} <= names
    assert not any(n.startswith(("test/", "site-packages/")) or "/tests/" in n for n in names)


@pytest.fixture
def small_stdlib(monkeypatch):
    """About 40 real stdlib files (the smaller ones, spread over the tree) instead of all."""
    files = [p for p in stdlib_source_files() if p.stat().st_size < 20_000]
    subset = files[:: max(1, len(files) // 40)][:40]
    monkeypatch.setattr(bc, "stdlib_source_files", lambda: list(subset))
    return subset


@pytest.fixture
def train_calls(monkeypatch):
    """Counts tokenizer trainings done by prepare_builtin_corpus."""
    calls = []
    real = bc.train_sentencepiece

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(bc, "train_sentencepiece", spy)
    return calls


def _prepare(cache_dir: Path):
    return prepare_builtin_corpus(
        cache_dir, vocab_size=VOCAB, valid_fraction=VALID_FRACTION, log=lambda msg: None
    )


def _documents(tokens: np.ndarray, eos: int) -> list[np.ndarray]:
    assert tokens[-1] == eos  # every document, the last included, ends with EOS
    ends = np.flatnonzero(tokens == eos)
    return np.split(tokens, ends[:-1] + 1)


def test_prepare_caches_and_splits_by_document(small_stdlib, train_calls, tmp_path):
    corpus = _prepare(tmp_path)
    assert len(train_calls) == 1
    (cache,) = tmp_path.iterdir()
    major, minor = sys.version_info[:2]
    assert (
        cache.name.startswith(f"stdlib-py{major}{minor}-v{VOCAB}-") and cache == corpus.cache_path
    )

    tok = corpus.tokenizer
    assert tok.vocab_size == VOCAB and corpus.train_tokens.dtype == np.uint16
    texts = [p.read_bytes().decode("utf-8") for p in small_stdlib]
    assert corpus.num_files == len(texts)
    assert corpus.num_bytes == sum(len(t.encode()) for t in texts)

    # Each document decodes back to exactly one file; train and valid partition the files.
    index = {t: i for i, t in enumerate(texts)}
    train = [index[tok.decode(d[:-1].tolist())] for d in _documents(corpus.train_tokens, 2)]
    valid = [index[tok.decode(d[:-1].tolist())] for d in _documents(corpus.valid_tokens, 2)]
    assert valid and not set(train) & set(valid)
    assert sorted(train + valid) == list(range(len(texts)))
    names = [p.relative_to(stdlib_root()).as_posix() for p in small_stdlib]
    assert [i for i, v in enumerate(validation_mask(names, VALID_FRACTION)) if v] == valid

    # Second call: loaded from the cache, no retraining, same arrays.
    t0 = time.perf_counter()
    again = _prepare(tmp_path)
    assert time.perf_counter() - t0 < 1.0
    assert len(train_calls) == 1
    assert again.tokenizer.fingerprint == tok.fingerprint
    np.testing.assert_array_equal(again.train_tokens, corpus.train_tokens)
    np.testing.assert_array_equal(again.valid_tokens, corpus.valid_tokens)

    # A different vocab size is a different cache.
    prepare_builtin_corpus(
        tmp_path, vocab_size=VOCAB + 64, valid_fraction=VALID_FRACTION, log=lambda msg: None
    )
    assert len(train_calls) == 2 and len(list(tmp_path.iterdir())) == 2


def test_split_is_stable_per_file():
    names = [f"pkg/mod_{i}.py" for i in range(2000)]
    mask = validation_mask(names, 0.05)
    assert 60 < sum(mask) < 140
    # A file's side depends on its name only: dropping other files moves nothing.
    assert validation_mask(names[::3], 0.05) == mask[::3]
    assert not any(validation_mask(names, 0.0))
    # A tiny set still gets one validation document.
    assert sum(validation_mask(names[:3], 0.01)) == 1


def test_interrupted_cache_write_leaves_no_cache(small_stdlib, train_calls, tmp_path, monkeypatch):
    real_save = np.save

    def crash_on_valid(file, arr, *args, **kwargs):
        if Path(file.name).name == "valid.npy":
            raise KeyboardInterrupt  # as if the run were stopped mid-write
        return real_save(file, arr, *args, **kwargs)

    monkeypatch.setattr(bc.np, "save", crash_on_valid)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the partial build was cleaned up

    # A SIGKILL runs no cleanup: the partial build stays, under a name never taken for a cache.
    real_rmtree = bc.shutil.rmtree
    monkeypatch.setattr(bc.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path)
    (leftover,) = tmp_path.iterdir()
    assert (leftover / "train.npy").exists() and not (leftover / "meta.json").exists()
    monkeypatch.setattr(bc.shutil, "rmtree", real_rmtree)
    monkeypatch.setattr(bc.np, "save", real_save)

    corpus = _prepare(tmp_path)
    assert len(train_calls) == 3  # rebuilt, not loaded from the half-written directory
    assert corpus.cache_path != leftover and len(corpus.valid_tokens) > 0


def test_unigram_entropy():
    for k in (1, 2, 7, 256):
        tokens = np.tile(np.arange(k, dtype=np.uint16), 13)
        assert unigram_entropy(tokens) == pytest.approx(math.log(k))
    skewed = np.array([5, 5, 9], dtype=np.uint32)  # p = 2/3, 1/3
    assert unigram_entropy(skewed) == pytest.approx(
        -(2 / 3) * math.log(2 / 3) - math.log(1 / 3) / 3
    )
    with pytest.raises(ValueError):
        unigram_entropy(np.array([], dtype=np.uint16))


def test_full_stdlib_corpus(tmp_path):
    """The real default: all stdlib files, vocab 4096, built within the 30 s budget."""
    t0 = time.perf_counter()
    corpus = prepare_builtin_corpus(tmp_path, log=lambda msg: None)
    assert time.perf_counter() - t0 < 30
    tok = corpus.tokenizer
    assert corpus.num_files == len(stdlib_source_files())
    num_tokens = len(corpus.train_tokens) + len(corpus.valid_tokens)
    assert 2.5 < corpus.num_bytes / num_tokens < 4.5
    assert 4.0 < unigram_entropy(corpus.train_tokens) < math.log(tok.vocab_size)
    docs = _documents(corpus.train_tokens, tok.eos_id) + _documents(corpus.valid_tokens, tok.eos_id)
    assert len(docs) == corpus.num_files
    texts = [p.read_bytes().decode("utf-8") for p in stdlib_source_files()]
    # Every file survives the tokenizer byte for byte.
    assert sorted(tok.decode(d[:-1].tolist()) for d in docs) == sorted(texts)
