"""prepare-data: determinism across runs and worker counts, boundaries, resume, repair, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nextlat_pt.data import shard_format
from nextlat_pt.data.dataset import open_dataset
from nextlat_pt.data.errors import DataError
from nextlat_pt.data.prepare import in_validation, prepare_data
from nextlat_pt.data.sources import iter_lines
from nextlat_pt.data.synthetic import synthetic_documents, write_jsonl
from nextlat_pt.data.tokenizer import Tokenizer, train_sentencepiece_on

SEQ_LEN = 32
SHARD = 40
VALID = 0.1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Three inputs (.jsonl.gz, .jsonl.zst, .txt), their documents in order, and a tokenizer."""
    root = tmp_path_factory.mktemp("corpus")
    docs_a = synthetic_documents(120, seed=1)
    docs_b = synthetic_documents(100, seed=2)
    text_c = "\n".join(synthetic_documents(3, seed=3))
    inputs = [
        write_jsonl(root / "a.jsonl.gz", docs_a),
        write_jsonl(root / "b.jsonl.zst", docs_b),
        root / "c.txt",
    ]
    inputs[2].write_text(text_c, encoding="utf-8")
    docs = docs_a + docs_b + [text_c]
    tok_path = train_sentencepiece_on(lambda: iter_lines(iter(docs)), root / "tok", 400,
                                      num_threads=1)
    return {"inputs": inputs, "docs": docs, "tokenizer": tok_path.parent, "root": root}


def _prepare(corpus: dict, out: Path, **kw):
    args = {"workers": 1, "valid_fraction": VALID, "shard_samples": SHARD, "log": lambda m: None}
    args.update(kw)
    return prepare_data(corpus["inputs"], corpus["tokenizer"], SEQ_LEN, out, **args)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    _prepare(corpus, out)
    return out


def test_byte_identical_across_runs_and_worker_counts(corpus, reference, tmp_path):
    summary = _prepare(corpus, tmp_path / "w2", workers=2)
    _prepare(corpus, tmp_path / "again")
    ref = _tree(reference)
    assert {"prepare.json", "train/index.json", "valid/index.json",
            "train/tokenizer.model", "train/shard-000000.tar",
            "train/shard-000000.idx.npy"} <= ref.keys()
    assert not any(name.endswith("progress.jsonl") or "/." in name for name in ref)
    assert _tree(tmp_path / "w2") == ref
    assert _tree(tmp_path / "again") == ref
    assert summary.documents_tokenized == len(corpus["docs"])
    assert summary.splits["train"]["shards"] > 5 and summary.splits["valid"]["samples"] > 0


def test_documents_and_boundaries_preserved(corpus, reference):
    tok = Tokenizer.load(corpus["tokenizer"] / "tokenizer.model")
    for split in ("train", "valid"):
        ds = open_dataset(reference, split)
        assert ds.path == reference / split
        texts = [d for d in corpus["docs"] if in_validation(d, 0, VALID) == (split == "valid")]
        expected = np.concatenate([tok.encode(t) + [tok.eos_id] for t in texts])
        windows = [ds.read(i) for i in range(len(ds))]
        stream = np.concatenate([t[:-1] for t, _ in windows] + [windows[-1][0][-1:]])
        # The shards hold the split's documents in input order, each closed by EOS; only the
        # tail that does not fill a window is missing.
        np.testing.assert_array_equal(stream, expected[: len(stream)])
        assert 0 <= len(expected) - len(stream) < SEQ_LEN
        for i, (w, starts) in enumerate(windows):
            begins = [j for j in range(SEQ_LEN + 1)
                      if (w[j - 1] == tok.eos_id if j else i == 0 or stream[i * SEQ_LEN - 1]
                          == tok.eos_id)]
            assert starts.tolist() == begins
        ends = np.flatnonzero(stream == tok.eos_id)
        docs = np.split(stream, ends + 1)[:-1]
        assert [tok.decode(d[:-1].tolist()) for d in docs] == texts[: len(docs)]

        index = json.loads((reference / split / "index.json").read_text())
        assert index["seq_len"] == SEQ_LEN and index["dtype"] == "uint16"
        assert index["tokenizer"]["fingerprint"] == tok.fingerprint
        assert index["num_documents"] == len(texts) and index["num_tokens"] == len(expected)
        assert [s["num_samples"] for s in index["shards"][:-1]] == [SHARD] * (len(ds.shards) - 1)
        assert [Path(s["path"]).name for s in index["sources"]] == [
            "a.jsonl.gz", "b.jsonl.zst", "c.txt"]
        assert (reference / split / "tokenizer.model").read_bytes() == tok.model_path.read_bytes()


def test_interrupted_run_finishes_the_missing_shards_only(corpus, reference, tmp_path,
                                                          monkeypatch):
    out = tmp_path / "out"
    real_finish = shard_format.ShardWriter.finish
    calls = []

    def interrupt_on_sixth(self):
        calls.append(self.path)
        if len(calls) == 6:
            raise KeyboardInterrupt  # as if stopped mid-run
        return real_finish(self)

    monkeypatch.setattr(shard_format.ShardWriter, "finish", interrupt_on_sixth)
    with pytest.raises(KeyboardInterrupt):
        _prepare(corpus, out)
    monkeypatch.setattr(shard_format.ShardWriter, "finish", real_finish)
    assert not (out / "train" / "index.json").exists()
    done = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("shard-*")}
    assert len(done) == 2 * 5  # five shards (tar + table each) were complete
    assert not list(out.rglob(".*tmp*"))  # the interrupted shard left no temp file

    summary = _prepare(corpus, out, workers=2)
    written = sum(s["written"] for s in summary.splits.values())
    kept = sum(s["kept"] for s in summary.splits.values())
    total = sum(s["shards"] for s in summary.splits.values())
    assert kept == 5 and written == total - 5
    # Documents before the resume points were not tokenized again.
    assert summary.documents_tokenized < len(corpus["docs"])
    for path, stamp in done.items():
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, path
    assert _tree(out) == _tree(reference)


def test_rerun_verifies_and_repairs_a_finished_dataset(corpus, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    summary = _prepare(corpus, out)
    assert sum(s["written"] for s in summary.splits.values()) == 0
    assert summary.documents_tokenized == 0
    damaged = out / "train" / "shard-000003.tar"
    data = bytearray(damaged.read_bytes())
    data[1000] ^= 0xFF
    damaged.write_bytes(bytes(data))
    (out / "train" / "shard-000005.tar").unlink()
    logs = []
    summary = _prepare(corpus, out, log=logs.append)
    assert summary.splits["train"]["written"] == 2
    assert any("shard-000003.tar: checksum mismatch" in m for m in logs)
    assert _tree(out) == _tree(reference)


def test_other_inputs_or_settings_are_refused(corpus, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    with pytest.raises(DataError, match=r"already holds data .*\(changed: seq_len\); choose a "
                                        r"new --output"):
        prepare_data(corpus["inputs"], corpus["tokenizer"], SEQ_LEN * 2, out,
                     valid_fraction=VALID, shard_samples=SHARD, workers=1, log=lambda m: None)
    with pytest.raises(DataError, match=r"changed: inputs"):
        prepare_data(corpus["inputs"][:2], corpus["tokenizer"], SEQ_LEN, out,
                     valid_fraction=VALID, shard_samples=SHARD, workers=1, log=lambda m: None)


def test_prepare_errors(corpus, tmp_path):
    empty = tmp_path / "empty.jsonl"
    write_jsonl(empty, ["", ""])
    with pytest.raises(DataError, match="hold no documents"):
        prepare_data([empty], corpus["tokenizer"], SEQ_LEN, tmp_path / "o1", workers=1,
                     log=lambda m: None)
    with pytest.raises(DataError, match=r"the train split has \d+ tokens, fewer than one sample "
                                        r"of seq_len\+1 = 100001; lower --seq-len"):
        prepare_data(corpus["inputs"][2:], corpus["tokenizer"], 100_000, tmp_path / "o2",
                     workers=1, log=lambda m: None)
    with pytest.raises(DataError, match="the valid split has .* raise --valid-fraction"):
        prepare_data(corpus["inputs"][2:], corpus["tokenizer"], SEQ_LEN, tmp_path / "o3",
                     workers=1, valid_fraction=1e-9, log=lambda m: None)
    with pytest.raises(DataError, match=r"tokenizer .*nope not found"):
        prepare_data(corpus["inputs"], tmp_path / "nope", SEQ_LEN, tmp_path / "o4")
    with pytest.raises(DataError, match=r"--seq-len 0 must be positive"):
        prepare_data(corpus["inputs"], corpus["tokenizer"], 0, tmp_path / "o5")
    # A failed attempt that wrote no shard does not block a corrected run in the same place.
    prepare_data(corpus["inputs"][2:], corpus["tokenizer"], SEQ_LEN, tmp_path / "o2",
                 workers=1, log=lambda m: None)
