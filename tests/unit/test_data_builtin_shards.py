"""The built-in corpus as prepared shards: the same windows as before, cached per seq_len."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nextlat_pt.data import builtin_corpus as bc
from nextlat_pt.data.builtin_corpus import (
    prepare_builtin_corpus,
    prepare_builtin_shards,
    stdlib_source_files,
    unigram_entropy,
)
from nextlat_pt.data.dataset import open_dataset
from nextlat_pt.data.loader import make_train_loader, make_valid_batches
from nextlat_pt.data.packed import PackedTokenDataset

VOCAB = 512


@pytest.fixture
def small_stdlib(monkeypatch):
    """About 40 real stdlib files instead of all (as in test_builtin_corpus)."""
    files = [p for p in stdlib_source_files() if p.stat().st_size < 20_000]
    subset = files[:: max(1, len(files) // 40)][:40]
    monkeypatch.setattr(bc, "stdlib_source_files", lambda: list(subset))
    return subset


def test_builtin_shards_hold_the_corpus_windows(small_stdlib, tmp_path):
    quiet = {"log": lambda m: None}
    shards = prepare_builtin_shards(tmp_path, VOCAB, 64, valid_fraction=0.1, **quiet)
    corpus = prepare_builtin_corpus(tmp_path, VOCAB, 0.1, **quiet)
    assert shards.tokenizer.fingerprint == corpus.tokenizer.fingerprint
    assert (shards.num_files, shards.train_tokens, shards.valid_tokens) == (
        corpus.num_files, len(corpus.train_tokens), len(corpus.valid_tokens))
    assert shards.unigram_entropy == pytest.approx(unigram_entropy(corpus.train_tokens))
    assert shards.train_dir.parent.parent == corpus.cache_path
    for directory, tokens in ((shards.train_dir, corpus.train_tokens),
                              (shards.valid_dir, corpus.valid_tokens)):
        ds = open_dataset(directory)
        ref = PackedTokenDataset(tokens, 64, corpus.tokenizer.eos_id)
        assert len(ds) == len(ref) > 0
        assert ds.tokenizer_fingerprint == shards.tokenizer.fingerprint
        assert (directory / "tokenizer.model").read_bytes() == \
            shards.tokenizer.model_path.read_bytes()
        for i in range(0, len(ds), 7):
            np.testing.assert_array_equal(ds.get(i)["tokens"], ref[i]["tokens"].numpy())
            np.testing.assert_array_equal(ds.get(i)["doc_ids"], ref[i]["doc_ids"].numpy())

    # The trainer's entry points accept them, fingerprint checked.
    fp = shards.tokenizer.fingerprint
    with make_train_loader([(shards.train_dir, 1.0)], 64, 4, 2, 0, 1, seed=1,
                           expected_fingerprint=fp) as loader:
        assert next(loader)[0]["tokens"].shape == (2, 65)
    assert make_valid_batches(shards.valid_dir, 64, 2, 3, expected_fingerprint=fp)

    # Cached: a second call writes nothing; another seq_len is another directory.
    stamp = (shards.train_dir / "index.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = prepare_builtin_shards(tmp_path, VOCAB, 64, valid_fraction=0.1, **quiet)
    assert time.perf_counter() - t0 < 2.0
    assert again.train_dir == shards.train_dir
    assert (shards.train_dir / "index.json").stat().st_mtime_ns == stamp
    other = prepare_builtin_shards(tmp_path, VOCAB, 32, valid_fraction=0.1, **quiet)
    assert other.train_dir != shards.train_dir and open_dataset(other.train_dir).seq_len == 32
    assert not [p for p in corpus.cache_path.iterdir() if p.name.startswith(".")]
