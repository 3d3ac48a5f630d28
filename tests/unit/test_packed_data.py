"""Packed windows with document ids, and the deterministic, resumable global batch order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nextlat_pt.data.packed import GlobalBatchSampler, PackedTokenDataset

EOS = 2


def _take(sampler: GlobalBatchSampler, n: int) -> list[list[int]]:
    return list(itertools.islice(sampler, n))


def _flat(batches) -> list[int]:
    return list(itertools.chain.from_iterable(batches))


# ---------------------------------------------------------------- PackedTokenDataset


def test_windows_overlap_by_one_and_cover_the_stream():
    tokens = np.arange(100, 100 + 53, dtype=np.uint16)
    ds = PackedTokenDataset(tokens, seq_len=8, eos_id=EOS)
    assert len(ds) == (53 - 1) // 8 == 6
    windows = [ds[i]["tokens"] for i in range(len(ds))]
    assert all(w.dtype == torch.int64 and w.shape == (9,) for w in windows)
    for a, b in itertools.pairwise(windows):
        assert a[-1] == b[0]
    # Inputs of all windows, then the last target, give back the stream: each token is a
    # target exactly once.
    joined = torch.cat([w[:-1] for w in windows] + [windows[-1][-1:]])
    assert torch.equal(joined, torch.from_numpy(tokens[: 6 * 8 + 1].astype(np.int64)))


@pytest.mark.parametrize("length, expected", [(9, 1), (16, 1), (17, 2), (25, 3)])
def test_length_counts_full_windows(length, expected):
    ds = PackedTokenDataset(np.zeros(length, dtype=np.uint16) + 5, seq_len=8, eos_id=EOS)
    assert len(ds) == expected
    ds[expected - 1]
    with pytest.raises(IndexError):
        ds[expected]


def test_doc_ids_count_eos_strictly_before():
    #                   0  1  2    3  4    5    6  7  8    9
    tokens = np.array([5, 6, EOS, 7, EOS, EOS, 8, 9, 9, EOS, 4, 4, 4], dtype=np.uint16)
    ds = PackedTokenDataset(tokens, seq_len=6, eos_id=EOS)
    s0 = ds[0]
    assert s0["doc_ids"].tolist() == [0, 0, 0, 1, 1, 2, 3]  # an EOS ends its own document
    assert s0["doc_ids"].dtype == torch.int64
    # Window 1 starts at position 6; ids restart at 0 within each window.
    assert ds[1]["tokens"].tolist() == [8, 9, 9, EOS, 4, 4, 4]
    assert ds[1]["doc_ids"].tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_get_batch_matches_items():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 6, size=200).astype(np.uint16)
    ds = PackedTokenDataset(tokens, seq_len=16, eos_id=EOS)
    idx = [7, 0, 11, 7]
    batch = ds.get_batch(idx)
    assert batch["tokens"].shape == batch["doc_ids"].shape == (4, 17)
    for row, i in enumerate(idx):
        assert torch.equal(batch["tokens"][row], ds[i]["tokens"])
        assert torch.equal(batch["doc_ids"][row], ds[i]["doc_ids"])


def test_too_short_array_is_a_clear_error():
    with pytest.raises(ValueError, match=r"length 8 .*seq_len\+1 = 9.*lower seq_len"):
        PackedTokenDataset(np.zeros(8, dtype=np.uint16), seq_len=8, eos_id=EOS)


# ---------------------------------------------------------------- GlobalBatchSampler


def test_sampler_is_deterministic_and_seeded():
    a = _take(GlobalBatchSampler(50, 8, seed=3), 20)
    b = _take(GlobalBatchSampler(50, 8, seed=3), 20)
    c = _take(GlobalBatchSampler(50, 8, seed=4), 20)
    assert a == b and a != c
    assert all(len(batch) == 8 for batch in a)


def test_epoch_order_is_the_documented_permutation():
    n = 23
    flat = _flat(_take(GlobalBatchSampler(n, 5, seed=9), 10))  # 50 positions: 2+ epochs
    assert flat[:n] == np.random.default_rng([9, 0]).permutation(n).tolist()
    assert flat[n : 2 * n] == np.random.default_rng([9, 1]).permutation(n).tolist()
    # Every epoch visits each sample once, in a new order.
    assert sorted(flat[:n]) == sorted(flat[n : 2 * n]) == list(range(n))
    assert flat[:n] != flat[n : 2 * n]


def test_consumed_samples_advances_per_global_batch():
    sampler = GlobalBatchSampler(40, 12, seed=0, dp_rank=1, dp_size=3, consumed_samples=5)
    _take(sampler, 4)
    assert sampler.consumed_samples == 5 + 4 * 12


@pytest.mark.parametrize("dp_size", [2, 3, 6])
def test_dp_slices_union_is_the_global_batch(dp_size):
    n, gbs = 31, 12  # batches straddle epoch boundaries
    full = _take(GlobalBatchSampler(n, gbs, seed=1), 9)
    ranks = [
        _take(GlobalBatchSampler(n, gbs, seed=1, dp_rank=r, dp_size=dp_size), 9)
        for r in range(dp_size)
    ]
    for b in range(9):
        parts = [ranks[r][b] for r in range(dp_size)]
        assert all(len(p) == gbs // dp_size for p in parts)
        assert _flat(parts) == full[b]


@pytest.mark.parametrize("consumed", [0, 24, 7, 95])
def test_resume_continues_the_stream_exactly(consumed):
    n, gbs = 29, 8
    stream = _flat(_take(GlobalBatchSampler(n, gbs, seed=5), 30))
    resumed = _flat(_take(GlobalBatchSampler(n, gbs, seed=5, consumed_samples=consumed), 10))
    assert resumed == stream[consumed : consumed + 10 * gbs]


def test_resume_with_another_dp_size():
    # Train 3 steps on 2 ranks, resume on 4 ranks: the global batches continue unchanged.
    first = GlobalBatchSampler(40, 8, seed=2, dp_rank=0, dp_size=2)
    _take(first, 3)
    full = _take(GlobalBatchSampler(40, 8, seed=2), 6)[3:]
    ranks = [
        _take(
            GlobalBatchSampler(
                40, 8, seed=2, dp_rank=r, dp_size=4, consumed_samples=first.consumed_samples
            ),
            3,
        )
        for r in range(4)
    ]
    assert [_flat(ranks[r][b] for r in range(4)) for b in range(3)] == full


def test_sampler_errors():
    with pytest.raises(ValueError, match="not divisible by the data-parallel size 3"):
        GlobalBatchSampler(100, 8, seed=0, dp_rank=0, dp_size=3)
    with pytest.raises(ValueError, match="dp_rank=2 must be in"):
        GlobalBatchSampler(100, 8, seed=0, dp_rank=2, dp_size=2)
    with pytest.raises(ValueError, match="num_samples=0"):
        GlobalBatchSampler(0, 8, seed=0)
