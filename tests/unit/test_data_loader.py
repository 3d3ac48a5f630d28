"""The sharded training loader: deterministic order, DP slicing, resume, blending, bad data."""

from __future__ import annotations

import itertools
import json
import os
import queue
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nextlat_pt.data.blend import BlendedDataset, block_counts
from nextlat_pt.data.dataset import open_dataset
from nextlat_pt.data.errors import CorruptSampleError, DataError
from nextlat_pt.data.loader import make_train_loader, make_valid_batches
from nextlat_pt.data.packed import GlobalBatchSampler, PackedTokenDataset
from nextlat_pt.data.split_writer import write_token_dataset

EOS = 2
SEQ = 16
FP = "ab" * 32


def _tokens(n: int, seed: int, lo: int = 3, hi: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.integers(lo, hi, size=n)
    t[rng.random(n) < 0.05] = EOS
    t[-1] = EOS
    return t.astype(np.uint16)


def _write(path: Path, tokens: np.ndarray, fingerprint: str = FP, seq_len: int = SEQ,
           shard_samples: int = 16) -> Path:
    meta = {"vocab_size": 1000, "tokenizer": {"fingerprint": fingerprint,
                                              "file": "tokenizer.model"}}
    write_token_dataset(path, tokens, EOS, seq_len, meta, shard_samples=shard_samples,
                        log=lambda m: None)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("loader")
    # Dataset "a" holds token ids below 500, "b" ids from 500 up: a sample shows its source.
    a_tokens, b_tokens = _tokens(97 * SEQ + 1, 1, hi=500), _tokens(23 * SEQ + 1, 2, lo=500)
    return {"a": _write(root / "a", a_tokens), "b": _write(root / "b", b_tokens),
            "a_tokens": a_tokens, "root": root}


def _batches(loader, n: int) -> list[torch.Tensor]:
    """n global batches of this rank, each as [local batch, seq+1] tokens and doc ids."""
    out = []
    for micro in itertools.islice(loader, n):
        out.append(torch.cat([torch.stack([m["tokens"], m["doc_ids"]], 1) for m in micro]))
    return out


def _loader(sources, dp_rank=0, dp_size=1, gbs=8, mbs=2, seed=5, **kw):
    return make_train_loader(sources, SEQ, gbs, mbs, dp_rank, dp_size, seed, **kw)


def test_single_dataset_order_is_global_batch_sampler_order(data):
    ref = PackedTokenDataset(data["a_tokens"], SEQ, EOS)
    sampler = GlobalBatchSampler(len(ref), 8, seed=5)
    with _loader([(data["a"], 1.0)]) as loader:
        for indices, micro in zip(itertools.islice(sampler, 30), loader):  # 2.5 epochs
            assert len(micro) == 4 and micro[0]["tokens"].shape == (2, SEQ + 1)
            assert micro[0]["tokens"].dtype == micro[0]["doc_ids"].dtype == torch.int64
            expected = ref.get_batch(indices)
            assert torch.equal(torch.cat([m["tokens"] for m in micro]), expected["tokens"])
            assert torch.equal(torch.cat([m["doc_ids"] for m in micro]), expected["doc_ids"])
        assert loader.consumed_samples == 30 * 8


@pytest.mark.parametrize("dp_size", [2, 4])
def test_dp_slices_union_is_the_single_rank_global_batch(data, dp_size):
    sources = [(data["a"], 0.7), (data["b"], 0.3)]
    with _loader(sources, gbs=8, mbs=1) as single:
        full = _batches(single, 12)
    per_rank = []
    for r in range(dp_size):
        with _loader(sources, dp_rank=r, dp_size=dp_size, gbs=8, mbs=1) as rank:
            per_rank.append(_batches(rank, 12))
    for b in range(12):
        assert all(len(per_rank[r][b]) == 8 // dp_size for r in range(dp_size))
        assert torch.equal(torch.cat([per_rank[r][b] for r in range(dp_size)]), full[b])


@pytest.mark.parametrize("k", [0, 8, 5, 97 * 3 + 1])
def test_resume_at_consumed_samples_yields_the_rest_of_the_stream(data, k):
    sources = [(data["a"], 0.5), (data["b"], 0.5)]
    with _loader(sources, gbs=4, mbs=4) as loader:
        stream = torch.cat(_batches(loader, (k + 40) // 4 + 1))
    with _loader(sources, gbs=4, mbs=4, consumed_samples=k) as resumed:
        rest = torch.cat(_batches(resumed, 10))
        assert resumed.consumed_samples == k + 40
    assert torch.equal(rest, stream[k : k + 40])


def test_resume_with_dp2_then_dp1_continues_at_the_same_sample(data):
    sources = [(data["a"], 1.0)]
    ranks = [_loader(sources, dp_rank=r, dp_size=2) for r in range(2)]
    first = [_batches(r, 5) for r in ranks]
    consumed = ranks[0].consumed_samples
    assert consumed == ranks[1].consumed_samples == 40
    for r in ranks:
        r.close()
    with _loader(sources) as single:
        reference = _batches(single, 8)
    with _loader(sources, consumed_samples=consumed) as resumed:
        after = _batches(resumed, 3)
    assert all(torch.equal(torch.cat([first[0][b], first[1][b]]), reference[b])
               for b in range(5))
    assert all(torch.equal(after[b], reference[5 + b]) for b in range(3))


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_blend_proportions_are_exact_per_block_and_pure():
    weights = [0.62, 0.3, 0.08]
    sets = [_Sized(1000), _Sized(37), _Sized(5000)]
    blend = BlendedDataset(sets, weights, seed=3, block_size=4096)
    counts = block_counts(weights, 4096)
    assert counts.sum() == 4096 and np.abs(counts / 4096 - weights).max() < 1 / 4096
    which, sample = blend.locate(np.arange(3 * 4096))
    for b in range(3):
        got = np.bincount(which[b * 4096 : (b + 1) * 4096], minlength=3)
        assert got.tolist() == counts.tolist()
    # Any window of a few thousand positions is close to the weights too.
    share = np.bincount(which[1000:6000], minlength=3) / 5000
    assert np.abs(share - weights).max() < 0.02
    # Each dataset's draws run through whole epochs: dataset 1 (37 samples) repeats in order.
    draws = sample[which == 1]
    for e in range(len(draws) // 37):
        assert sorted(draws[e * 37 : (e + 1) * 37].tolist()) == list(range(37))
    assert sample.max() < 5000 and (sample[which == 0] < 1000).all()
    # A pure function of the position: any query order, a fresh instance, same answer.
    again = BlendedDataset(sets, weights, seed=3, block_size=4096)
    pos = np.array([9000, 3, 4095, 4096, 12287, 17])
    w2, s2 = again.locate(pos)
    assert (w2 == which[pos]).all() and (s2 == sample[pos]).all()
    other = BlendedDataset(sets, weights, seed=4, block_size=4096)
    assert not (other.locate(np.arange(4096))[0] == which[:4096]).all()


def test_blend_proportions_in_loaded_batches(data):
    sources = [{"path": str(data["a"]), "weight": 3}, {"path": str(data["b"]), "weight": 1}]
    with _loader(sources, gbs=64, mbs=64) as loader:  # config-style entries, relative weights
        tokens = torch.cat(_batches(loader, 40))[:, 0]
    from_b = (tokens.max(dim=1).values >= 500).float().mean().item()
    assert abs(from_b - 0.25) < 0.03


def test_blend_errors():
    with pytest.raises(DataError, match="weight -1.0 must be a positive"):
        BlendedDataset([_Sized(3), _Sized(3)], [1, -1])
    with pytest.raises(DataError, match="2 datasets but 1 weights"):
        BlendedDataset([_Sized(3), _Sized(3)], [1])
    with pytest.raises(DataError, match="too small"):
        BlendedDataset([_Sized(3), _Sized(3)], [1, 1e-9])
    with pytest.raises(DataError, match="no training datasets"):
        BlendedDataset([], [])


# ---------------------------------------------------------------- bad data


@pytest.fixture
def damaged(data, tmp_path) -> Path:
    """A private copy of dataset "a" to damage."""
    return _write(tmp_path / "a", data["a_tokens"])


def _flip_byte(ds_path: Path, sample: int) -> Path:
    ds = open_dataset(ds_path)
    k, row = ds.locate(sample)
    table = np.load(ds_path / ds.shards[k]["index"])
    shard = ds.shard_path(k)
    data = bytearray(shard.read_bytes())
    data[int(table["offset"][row]) + 600] ^= 0x01  # inside the tokens' data
    shard.write_bytes(bytes(data))
    return shard


def test_corrupt_sample_raises_one_error_naming_shard_and_sample(damaged):
    shard = _flip_byte(damaged, 20)  # shard 1 (16 samples per shard), row 4
    ds = open_dataset(damaged)
    with pytest.raises(CorruptSampleError) as err:
        ds.get(20)
    msg = str(err.value)
    assert "\n" not in msg and str(shard) in msg and "sample 20 " in msg and "crc32" in msg
    assert err.value.sample == 20 and err.value.shard == str(shard)
    ds.get(19), ds.get(21)  # neighbours are fine
    with _loader([(damaged, 1.0)], gbs=97, mbs=97) as loader:  # one batch = one epoch
        with pytest.raises(CorruptSampleError, match="sample 20 "):
            next(loader)


def test_skip_mode_replaces_a_corrupt_sample_with_the_next_and_counts_it(data, damaged):
    _flip_byte(damaged, 20)
    with _loader([(data["a"], 1.0)], gbs=97, mbs=97) as clean:
        clean_batches = _batches(clean, 3)
    logs = []
    with _loader([(damaged, 1.0)], gbs=97, mbs=97, on_error="skip", log=logs.append) as loader:
        got = _batches(loader, 3)
        assert loader.stats()["skipped_samples"] == 3  # once per epoch
    order = np.concatenate([np.random.default_rng([5, e]).permutation(97) for e in range(3)])
    for b in range(3):
        p = int(np.flatnonzero(order[b * 97 : (b + 1) * 97] == 20)[0])
        expected = clean_batches[b].clone()
        # Position p gets the sample of the next stream position (p + 1, maybe next epoch).
        nxt = clean_batches[b][p + 1] if p + 1 < 97 else clean_batches[b + 1][0] if b < 2 \
            else None
        if nxt is not None:
            expected[p] = nxt
            assert torch.equal(got[b], expected)
        mask = torch.ones(97, dtype=torch.bool)
        mask[p] = False
        assert torch.equal(got[b][mask], clean_batches[b][mask])
    assert logs and "sample 20" in logs[0]


def test_truncated_shard_stops_before_training_or_is_skipped(damaged):
    ds = open_dataset(damaged)
    shard = ds.shard_path(2)
    table = np.load(damaged / ds.shards[2]["index"])
    cut = int(table["offset"][5]) + 100  # inside sample 2*16 + 5
    os.truncate(shard, cut)
    with pytest.raises(DataError, match=rf"shard {shard} is truncated: .*first affected sample "
                                        r"37\)"):
        _loader([(damaged, 1.0)])
    with pytest.raises(CorruptSampleError, match=r"truncated: sample 37 \(key 000000037\)"):
        open_dataset(damaged).get(37)
    logs = []
    with _loader([(damaged, 1.0)], gbs=97, mbs=97, on_error="skip", log=logs.append) as loader:
        next(loader)
        assert loader.stats()["skipped_samples"] == 16 - 5  # the rest of shard 2
    assert "damaged shard" in logs[0]
    shard.unlink()
    with pytest.raises(DataError, match=rf"shard {shard} is missing \(sample 32\)"):
        _loader([(damaged, 1.0)])


def test_fingerprint_and_seq_len_mismatches_are_refused(data, tmp_path):
    with pytest.raises(DataError) as err:
        _loader([(data["a"], 1.0)], expected_fingerprint="cd" * 32,
                tokenizer_path="/models/tok.model")
    msg = str(err.value)
    assert "\n" not in msg and FP[:16] in msg and "cd" * 8 in msg
    assert "/models/tok.model" in msg and str(data["a"] / "tokenizer.model") in msg
    with pytest.raises(DataError, match=r"samples of seq_len 16 .* but model.seq_len is 32; set "
                                        r"model.seq_len=16 or re-run prepare-data with "
                                        r"--seq-len 32"):
        make_train_loader([(data["a"], 1.0)], 32, 8, 2, 0, 1, seed=0)
    other = _write(tmp_path / "other", _tokens(200, 3), fingerprint="ef" * 32)
    with pytest.raises(DataError, match="different tokenizers"):
        _loader([(data["a"], 1.0), (other, 1.0)])


def test_missing_and_incomplete_datasets(data, tmp_path):
    with pytest.raises(DataError, match=r"dataset directory .*nowhere not found"):
        _loader([(tmp_path / "nowhere", 1.0)])
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"holds no index\.json"):
        _loader([(tmp_path / "plain", 1.0)])
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "progress.jsonl").write_text("")
    with pytest.raises(DataError, match=r"incomplete .* re-run the same prepare-data"):
        _loader([(tmp_path / "partial", 1.0)])
    (tmp_path / "root" / "train").mkdir(parents=True)
    (tmp_path / "root" / "prepare.json").write_text("{}")
    with pytest.raises(DataError, match=r"dataset .*root/train is incomplete"):
        _loader([(tmp_path / "root", 1.0)])
    with pytest.raises(DataError, match=r"root has no valid split; re-run prepare-data with "
                                        r"--valid-fraction"):
        make_valid_batches(tmp_path / "root", SEQ, 2, 2)
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "index.json").write_text("{not json")
    with pytest.raises(DataError, match=r"cannot read .*garbled/index\.json"):
        _loader([(tmp_path / "garbled", 1.0)])
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a nextlat-pt dataset index"):
        _loader([(tmp_path / "foreign", 1.0)])
    with pytest.raises(DataError, match="data.train is empty"):
        _loader([])


def test_layout_errors(data):
    with pytest.raises(DataError, match="not divisible by the data-parallel size 3"):
        _loader([(data["a"], 1.0)], dp_size=3)
    with pytest.raises(DataError, match=r"micro_batch_size=3 does not divide .* = 4\)"):
        _loader([(data["a"], 1.0)], dp_size=2, mbs=3)
    with pytest.raises(DataError, match="on_error='ignore' must be one of"):
        _loader([(data["a"], 1.0)], on_error="ignore")


class _GatedReads:
    """Stands in for the disk and the clock of the loader: every sample read advances a fake
    `perf_counter` by one second, and reads beyond `allowed` block until it is raised. The
    test then knows exactly how far the reader thread can be, with no sleeps or timings."""

    def __init__(self, real_get, allowed: int) -> None:
        self.real_get = real_get
        self.now = 0.0
        self.reads = 0
        self.allowed = allowed
        self.cond = threading.Condition()
        self.consumer_waiting = threading.Event()

    def get(self, dataset, i):
        with self.cond:
            self.cond.wait_for(lambda: self.reads < self.allowed)
            self.reads += 1
            self.now += 1.0
            self.cond.notify_all()
        return self.real_get(dataset, i)

    def allow(self, allowed: int) -> None:
        with self.cond:
            self.allowed = allowed
            self.cond.notify_all()

    def wait_for_reads(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.reads >= n, timeout=30), self.reads

    def perf_counter(self) -> float:
        if threading.current_thread().name == "consumer":
            self.consumer_waiting.set()
        with self.cond:
            return self.now


def test_prefetch_depth_wait_metric_and_close(data, monkeypatch):
    """The reader runs `prefetch` batches ahead and no further; `data_wait_s` is exactly the
    time next() spent blocked on the reader (0 when a batch was ready)."""
    from nextlat_pt.data import dataset as dataset_module
    from nextlat_pt.data import loader as loader_module

    queue_full = threading.Event()

    class RecordingQueue(queue.Queue):
        def put(self, item, block=True, timeout=None):
            try:
                super().put(item, block, timeout)
            except queue.Full:
                queue_full.set()  # the reader has a batch ready and no room for it
                raise

    gate = _GatedReads(dataset_module.ShardedDataset.get, allowed=10**9)
    monkeypatch.setattr(dataset_module.ShardedDataset, "get", lambda ds, i: gate.get(ds, i))
    monkeypatch.setattr(loader_module, "time", gate)
    monkeypatch.setattr(loader_module, "queue", SimpleNamespace(
        Queue=RecordingQueue, Full=queue.Full, Empty=queue.Empty))
    loader = _loader([(data["a"], 1.0)], prefetch=2)  # 8 samples per global batch
    thread = loader._thread
    assert queue_full.wait(timeout=30)
    gate.allow(3 * 8)  # hold the reader at its next read from here on
    # two batches queued, the third built and waiting for room: nothing more was read
    assert loader._queue.qsize() == 2 and gate.reads == 3 * 8
    for _ in range(3):  # ready batches: no waiting, and the clock stands still while the
        next(loader)    # reader is held at read 25
    assert loader.stats()["data_wait_s"] == 0.0
    assert gate.reads == 3 * 8

    # The queue is empty: next() blocks until the reader has read the 8 samples of batch 4.
    got = []
    consumer = threading.Thread(target=lambda: got.append(next(loader)), name="consumer")
    consumer.start()
    assert gate.consumer_waiting.wait(timeout=30)  # next() has read its start time
    gate.allow(4 * 8)
    consumer.join(timeout=30)
    assert got and loader.stats()["data_wait_s"] == 8.0
    assert loader.consumed_samples == 4 * 8
    gate.allow(10**9)  # a reader that is not held by the test stops at close()
    loader.close()
    assert not thread.is_alive()
    with pytest.raises(StopIteration):
        next(loader)


def test_valid_batches_are_the_first_windows(data, tmp_path):
    ref = PackedTokenDataset(data["a_tokens"], SEQ, EOS)
    batches = make_valid_batches(data["a"], SEQ, 4, max_batches=3)
    assert len(batches) == 3
    for b, mb in enumerate(batches):
        expected = ref.get_batch(range(4 * b, 4 * b + 4))
        assert torch.equal(mb["tokens"], expected["tokens"])
        assert torch.equal(mb["doc_ids"], expected["doc_ids"])
    assert len(make_valid_batches(data["a"], SEQ, 40, max_batches=10)) == 97 // 40
    with pytest.raises(DataError, match="fewer than one micro-batch"):
        make_valid_batches(data["a"], SEQ, 200, max_batches=1)
    # A prepare-data root means its valid split.
    (tmp_path / "root").mkdir()
    _write(tmp_path / "root" / "valid", data["a_tokens"][: 5 * SEQ + 1])
    assert len(make_valid_batches(tmp_path / "root", SEQ, 5, max_batches=9)) == 1


def test_uint32_tokens_round_trip(tmp_path):
    tokens = _tokens(40 * SEQ + 1, 7, hi=70_000).astype(np.uint32)
    tokens[5] = 69_999
    path = _write(tmp_path / "big", tokens)
    ds = open_dataset(path)
    assert ds.dtype == np.uint32
    np.testing.assert_array_equal(ds.get(0)["tokens"], tokens[: SEQ + 1].astype(np.int64))
