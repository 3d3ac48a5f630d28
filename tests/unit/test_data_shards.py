"""The shard format: plain webdataset tars, deterministic bytes, exact windows and boundaries."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import webdataset as wds

from nextlat_pt.data.dataset import open_dataset
from nextlat_pt.data.packed import PackedTokenDataset
from nextlat_pt.data.packing import Packer, Pointer
from nextlat_pt.data.shard_format import decode_sample, encode_sample, npy_payload
from nextlat_pt.data.split_writer import write_token_dataset

EOS = 2
META = {"vocab_size": 1000, "tokenizer": {"fingerprint": "f" * 64, "file": "tokenizer.model"}}


def _stream(num_tokens: int, seed: int = 0, eos_rate: float = 0.05) -> np.ndarray:
    """Random tokens in [3, 1000) with EOS sprinkled in (runs of EOS included), EOS-terminated."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 1000, size=num_tokens)
    tokens[rng.random(num_tokens) < eos_rate] = EOS
    tokens[-1] = EOS
    return tokens.astype(np.uint16)


def test_sample_bytes_are_deterministic_npy_in_tar():
    tokens = np.arange(100, 117, dtype=np.uint16)
    starts = np.array([0, 5, 9], dtype=np.int32)
    data = encode_sample(7, tokens, starts)
    assert data == encode_sample(7, tokens.copy(), starts.copy())
    assert len(data) % 512 == 0
    got_tokens, got_starts = decode_sample(data, np.dtype(np.uint16), seq_len=16)
    np.testing.assert_array_equal(got_tokens, tokens)
    np.testing.assert_array_equal(got_starts, starts)
    # The members are standard: tarfile and numpy read them.
    with tarfile.open(fileobj=io.BytesIO(data + b"\0" * 1024)) as tar:
        names = tar.getnames()
        arr = np.load(io.BytesIO(tar.extractfile(names[0]).read()))
    assert names == ["000000007.tokens.npy", "000000007.doc_starts.npy"]
    np.testing.assert_array_equal(arr, tokens)
    with pytest.raises(ValueError, match="expected 33"):
        decode_sample(data, np.dtype(np.uint16), seq_len=32)
    with pytest.raises(ValueError):
        npy_payload(b"not numpy", np.dtype(np.uint16))


@pytest.mark.parametrize("dtype, shard_samples", [(np.uint16, 7), (np.uint32, 1000)])
def test_samples_equal_packed_token_dataset(tmp_path, dtype, shard_samples):
    """The shards hold exactly PackedTokenDataset's windows and doc ids (the trainer's format)."""
    tokens = _stream(2000, seed=1).astype(dtype)
    seq_len = 16
    write_token_dataset(tmp_path / "ds", tokens, EOS, seq_len, META, shard_samples=shard_samples)
    ds = open_dataset(tmp_path / "ds")
    ref = PackedTokenDataset(tokens, seq_len, EOS)
    assert len(ds) == len(ref) and ds.dtype == np.dtype(dtype) and ds.seq_len == seq_len
    assert len(ds.shards) == -(-len(ref) // shard_samples)
    for i in range(len(ds)):
        got = ds.get(i)
        assert got["tokens"].dtype == got["doc_ids"].dtype == np.int64
        np.testing.assert_array_equal(got["tokens"], ref[i]["tokens"].numpy())
        np.testing.assert_array_equal(got["doc_ids"], ref[i]["doc_ids"].numpy())
    batch = ds.get_batch([3, 0, 3])
    assert batch["tokens"].shape == (3, seq_len + 1)
    assert ds.index["num_tokens"] == len(tokens)
    assert ds.index["num_documents"] == int((tokens == EOS).sum())


def test_doc_starts_mark_document_boundaries(tmp_path):
    #                 0  1  2    3  4    5    6  7  8    9    10 11 12
    tokens = np.array([5, 6, EOS, 7, EOS, EOS, 8, 9, 9, EOS, 4, 4, EOS], dtype=np.uint16)
    write_token_dataset(tmp_path / "ds", tokens, EOS, 6, META, shard_samples=4)
    ds = open_dataset(tmp_path / "ds")
    starts = [ds.read(i)[1].tolist() for i in range(len(ds))]
    # Documents begin at stream positions 0, 3, 5, 6, 10; window 1 covers positions 6..12.
    assert starts == [[0, 3, 5, 6], [0, 4]]
    assert ds.get(0)["doc_ids"].tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert ds.get(1)["doc_ids"].tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_shards_are_plain_webdataset_tars(tmp_path):
    tokens = _stream(600, seed=2)
    write_token_dataset(tmp_path / "ds", tokens, EOS, 20, META, shard_samples=10)
    ds = open_dataset(tmp_path / "ds")
    urls = [str(ds.shard_path(k)) for k in range(len(ds.shards))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(len(ds))]
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(s["tokens.npy"], ds.get(i)["tokens"])
        np.testing.assert_array_equal(s["doc_starts.npy"], ds.read(i)[1])


def test_token_dataset_bytes_are_reproducible(tmp_path):
    tokens = _stream(900, seed=3)
    for name in ("a", "b"):
        write_token_dataset(tmp_path / name, tokens, EOS, 32, META, shard_samples=8)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "index.json" in files and "shard-000000.tar" in files and "shard-000000.idx.npy" in files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_packer_resumes_exactly_at_any_pointer():
    rng = np.random.default_rng(4)
    docs = [(g, np.append(rng.integers(3, 50, size=rng.integers(1, 30)), EOS))
            for g in range(200)]
    seq_len = 8

    def pack(packer: Packer, batch: int = 7):
        out = []
        for lo in range(0, len(docs), batch):
            packer.add(docs[lo : lo + batch])
            out.extend(packer.drain(lambda i: True))
        return out

    full = pack(Packer(seq_len))
    assert [w.index for w, _ in full] == list(range(len(full)))
    for cut in (1, 5, 17, len(full) - 1):
        start_ptr = full[cut][1][0]
        assert full[cut - 1][1][1] == start_ptr  # a window ends where the next begins
        rest = pack(Packer(seq_len, start_ptr, first_sample=cut), batch=3)
        assert len(rest) == len(full) - cut
        for (a, pa), (b, pb) in zip(full[cut:], rest):
            assert a.index == b.index and pa == pb
            np.testing.assert_array_equal(a.tokens, b.tokens)
            np.testing.assert_array_equal(a.starts, b.starts)
    assert Pointer.from_list(full[3][1][0].to_list()) == full[3][1][0]
