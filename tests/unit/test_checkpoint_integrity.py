"""Which checkpoint a relaunch trusts: complete, checksummed, newest first; and the
`ckpt list|inspect` tool. Built on synthetic step directories (no training needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nextlat_pt.config import Config
from nextlat_pt.train import ckpt_tool
from nextlat_pt.train.checkpoint import (
    CheckpointError,
    _finalize,
    find_latest_valid,
    prune,
    verify_checksums,
)


def _make(root: Path, step: int, complete: bool = True) -> Path:
    tmp = root / f"step_{step:07d}.tmp"
    (tmp / "model").mkdir(parents=True)
    (tmp / "model" / "weights.bin").write_bytes(bytes(range(256)) * 4)
    state = {"step": step, "consumed_samples": 8 * step, "tokens_seen": 256 * step,
             "layout": {"tp": 1, "pp": 1, "dp": 1, "vpp": 0, "zero_stage": 1,
                        "world_size": 1},
             "tokenizer": {"path": "tok.model", "vocab_size": 512, "fingerprint": "ab" * 32},
             "last_metrics": {"loss": 5.0, "ce": 4.5}}
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    (tmp / "config.yaml").write_text(yaml.safe_dump(Config().to_dict()))
    if not complete:
        return tmp
    _finalize(tmp, root / f"step_{step:07d}", step)
    return root / f"step_{step:07d}"


def test_newest_complete_checkpoint_is_chosen(tmp_path):
    for step in (2, 4, 6):
        _make(tmp_path, step)
    warnings: list[str] = []
    assert find_latest_valid(tmp_path, warnings.append).name == "step_0000006"
    assert warnings == []
    assert (tmp_path / "latest").read_text().strip() == "step_0000006"


def test_interrupted_save_is_skipped_with_a_warning(tmp_path):
    _make(tmp_path, 2)
    _make(tmp_path, 4, complete=False)
    warnings: list[str] = []
    assert find_latest_valid(tmp_path, warnings.append).name == "step_0000002"
    assert any("step_0000004.tmp" in w for w in warnings)


def test_missing_marker_is_skipped(tmp_path):
    _make(tmp_path, 2)
    (_make(tmp_path, 4) / "COMPLETE").unlink()
    warnings: list[str] = []
    assert find_latest_valid(tmp_path, warnings.append).name == "step_0000002"
    assert any("step_0000004" in w and "COMPLETE" in w for w in warnings)


def test_corrupted_file_fails_its_checksum_and_is_skipped(tmp_path):
    _make(tmp_path, 2)
    bad = _make(tmp_path, 4)
    blob = bad / "model" / "weights.bin"
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model/weights.bin fails its checksum"):
        verify_checksums(bad)
    warnings: list[str] = []
    assert find_latest_valid(tmp_path, warnings.append).name == "step_0000002"
    assert any("step_0000004" in w and "checksum" in w for w in warnings)


def test_no_valid_checkpoint_gives_none(tmp_path):
    _make(tmp_path, 2, complete=False)
    assert find_latest_valid(tmp_path, lambda _: None) is None
    assert find_latest_valid(tmp_path / "missing", lambda _: None) is None


def test_prune_keeps_the_newest(tmp_path):
    for step in (2, 4, 6, 8):
        _make(tmp_path, step)
    prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000006", "step_0000008"]


def test_ckpt_list_and_inspect(tmp_path, capsys):
    run = tmp_path / "run"
    _make(run / "checkpoints", 2)
    _make(run / "checkpoints", 4, complete=False)
    assert ckpt_tool.main(["list", str(run), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "step_0000002" in out and "complete" in out and "<- latest" in out
    assert "interrupted save" in out and "tp1 pp1 dp1 zero1" in out

    step = run / "checkpoints" / "step_0000002"
    assert ckpt_tool.main(["inspect", str(step), "model.num_layers=8", "train.lr=1e-3"]) == 0
    out = capsys.readouterr().out
    assert "consumed        16 samples, 512 tokens" in out
    assert "config difference (2 keys" in out
    assert "model.num_layers: 4 -> 8" in out and "train.lr: 0.002 -> 0.001" in out

    assert ckpt_tool.main(["inspect", str(tmp_path)]) == 2
    assert "not a checkpoint step directory" in capsys.readouterr().err


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_checkpoint_metadata_pickle_may_name_only_storage_classes(tmp_path):
    import pickle

    from nextlat_pt.train.checkpoint import check_metadata_is_plain

    evil = tmp_path / ".metadata"
    evil.write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(CheckpointError, match="refusing to unpickle posix.system"):
        check_metadata_is_plain(evil)
    import torch
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    plain = tmp_path / "plain"
    plain.write_bytes(pickle.dumps({"size": torch.Size([2, 3]), "dtype": torch.float32,
                                    "chunk": ChunkStorageMetadata(torch.Size([0]),
                                                                  torch.Size([2]))}))
    check_metadata_is_plain(plain)
