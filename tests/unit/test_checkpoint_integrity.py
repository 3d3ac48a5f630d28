"""Which checkpoint a relaunch trusts: complete, checksummed, newest first; and the
`ckpt list|inspect` tool. Built on synthetic step directories (no training needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nextlat_pt.checkpointing.errors import CheckpointError
from nextlat_pt.checkpointing.format import finalize, verify_checksums
from nextlat_pt.checkpointing.retention import Retention, find_latest_valid, prune
from nextlat_pt.config import Config
from nextlat_pt.train import ckpt_tool


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
    finalize(tmp, root / f"step_{step:07d}", step)
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


def _corrupt(ckpt: Path) -> None:
    blob = ckpt / "model" / "weights.bin"
    data = bytearray(blob.read_bytes())
    data[7] ^= 0xFF
    blob.write_bytes(bytes(data))


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("step_*"))


def test_corrupt_checkpoints_do_not_count_toward_keep(tmp_path):
    """Three corrupt checkpoints (with markers) must not push out the only two good ones."""
    for step in (5, 7, 10, 15, 20):
        _make(tmp_path, step)
    for step in (10, 15, 20):
        _corrupt(tmp_path / f"step_{step:07d}")
    (tmp_path / "latest").write_text("step_0000007\n")
    prune(tmp_path, keep=3)
    assert _names(tmp_path) == ["step_0000005", "step_0000007", "step_0000010",
                                "step_0000015", "step_0000020"]


def test_a_relaunch_past_corrupt_checkpoints_keeps_what_it_writes(tmp_path):
    """The issue's sequence: 10, 15, 20 corrupt, a relaunch from scratch writes 5 and 7. Both
    stay, `latest` names 7, the corrupt ones newer than the start are left for a human."""
    for step in (10, 15, 20):
        _corrupt(_make(tmp_path, step))
    retention = Retention(tmp_path, keep=3)
    assert find_latest_valid(tmp_path, lambda _: None, retention.verdicts) is None
    retention.protect_newer_than(0)
    for step in (5, 7):
        retention.after_save(_make(tmp_path, step))
    assert _names(tmp_path) == ["step_0000005", "step_0000007", "step_0000010",
                                "step_0000015", "step_0000020"]
    assert (tmp_path / "latest").read_text().strip() == "step_0000007"
    assert find_latest_valid(tmp_path, lambda _: None).name == "step_0000007"


def test_pruning_deletes_beyond_keep_good_ones_but_never_newer_or_protected(tmp_path):
    for step in (1, 2, 3):
        _make(tmp_path, step)
    _corrupt(tmp_path / "step_0000002")
    _make(tmp_path, 4, complete=False)  # a stale interrupted save
    _corrupt(_make(tmp_path, 30))  # newer than the start: a relaunch skipped it
    retention = Retention(tmp_path, keep=2)
    retention.protect_newer_than(3)
    for step in (5, 6):
        retention.after_save(_make(tmp_path, step))
    # good ones: 6, 5 (keep=2); older ones go, corrupt or not; 30 is protected
    assert _names(tmp_path) == ["step_0000005", "step_0000006", "step_0000030"]
    assert (tmp_path / "latest").read_text().strip() == "step_0000006"


def test_pruning_never_deletes_what_latest_names(tmp_path):
    for step in (1, 2, 3, 4):
        _make(tmp_path, step)
    (tmp_path / "latest").write_text("step_0000001\n")
    prune(tmp_path, keep=2)
    assert _names(tmp_path) == ["step_0000001", "step_0000003", "step_0000004"]


def test_each_checkpoint_is_hashed_at_most_once_per_run(tmp_path, monkeypatch):
    from nextlat_pt.checkpointing import retention as checkpoint

    hashed: list[str] = []
    real = checkpoint.verify_checksums
    monkeypatch.setattr(checkpoint, "verify_checksums",
                        lambda ckpt: (hashed.append(ckpt.name), real(ckpt))[1])
    for step in (2, 4):
        _make(tmp_path, step)
    retention = Retention(tmp_path, keep=3)
    assert find_latest_valid(tmp_path, lambda _: None, retention.verdicts).name == "step_0000004"
    for step in (6, 8, 10):
        retention.after_save(_make(tmp_path, step))
    # 4 at resume, 2 once to fill `keep` while it was needed; what this run wrote never
    assert hashed == ["step_0000004", "step_0000002"]
    assert _names(tmp_path) == ["step_0000006", "step_0000008", "step_0000010"]


def test_a_garbage_or_dangling_latest_is_reported(tmp_path):
    _make(tmp_path, 2)
    for content, expected in (("step_0000009\n", "names step_0000009, which does not exist"),
                              ("\x00garbage", "not a checkpoint name")):
        (tmp_path / "latest").write_text(content)
        warnings: list[str] = []
        assert find_latest_valid(tmp_path, warnings.append).name == "step_0000002"
        assert len(warnings) == 1 and expected in warnings[0], warnings


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


def test_ckpt_inspect_says_whether_the_optimizer_state_moves_to_another_layout(
        tmp_path, capsys):
    """A checkpoint from before format 2 (no format_version) keeps its layout's optimizer
    state; a format-2 one says any layout resumes with it."""
    old = _make(tmp_path / "old", 2)
    assert ckpt_tool.main(["inspect", str(old)]) == 0
    assert "format          1; optimizer state tied to its layout" in capsys.readouterr().out
    new = tmp_path / "new" / "step_0000002.tmp"
    (new / "model").mkdir(parents=True)
    state = {"step": 2, "format_version": 2, "optimizer_state": "layout-independent",
             "layout": {"tp": 2, "pp": 1, "dp": 1, "zero_stage": 1}}
    (new / "trainer_state.json").write_text(json.dumps(state))
    finalize(new, new.with_name("step_0000002"), 2)
    assert ckpt_tool.main(["inspect", str(new.with_name("step_0000002"))]) == 0
    assert "format          2; optimizer state layout-independent" in capsys.readouterr().out


def test_ckpt_list_verify_fails_on_a_corrupt_checkpoint_and_says_what_a_resume_uses(
        tmp_path, capsys):
    root = tmp_path / "run" / "checkpoints"
    for step in (2, 4):
        _make(root, step)
    assert ckpt_tool.main(["list", str(root.parent), "--verify"]) == 0  # the control
    assert "a relaunch would resume from step_0000004" in capsys.readouterr().out
    _corrupt(root / "step_0000004")
    _make(root, 6, complete=False)
    assert ckpt_tool.main(["list", str(root.parent), "--verify"]) == 1
    out = capsys.readouterr().out.splitlines()
    table = out[1:4]
    assert len(table) == 3
    # aligned: every row's name column starts where the header's does
    name_at = out[0].index("name")
    assert all(line.index("step_000000") == name_at for line in table), out
    row4 = next(line for line in table if "step_0000004" in line)
    assert " corrupt " in row4 and "<- latest" in row4
    assert "step_0000004: model/weights.bin fails its checksum" in out
    assert out[-1] == ("a relaunch would resume from step_0000002 (latest names "
                       "step_0000004, which it skips)")
    # without --verify nothing is hashed, and the answer says so
    assert ckpt_tool.main(["list", str(root.parent)]) == 0
    assert "if its checksums pass (check with --verify)" in capsys.readouterr().out


def test_ckpt_help_lists_its_subcommands(capsys):
    assert ckpt_tool.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "list" in out and "inspect" in out and "--verify" in out
    assert ckpt_tool.main([]) == 2
    assert ckpt_tool.main(["lst"]) == 2
    assert "ckpt knows list and inspect" in capsys.readouterr().err


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_checkpoint_metadata_pickle_may_name_only_storage_classes(tmp_path):
    import pickle

    from nextlat_pt.checkpointing.dcp_metadata import check_metadata_is_plain

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


def test_older_checkpoints_with_relative_paths_are_resolved_from_where_they_sit(tmp_path):
    """Before checkpoints held a tokenizer copy and absolute paths, they recorded paths
    relative to where training ran: found again from the checkpoint's own location."""
    from nextlat_pt.config import load_config
    from nextlat_pt.convert.source import NextLatCheckpoint

    where_it_ran = tmp_path / "project"
    step = where_it_ran / "runs" / "t" / "checkpoints" / "step_0000002"
    step.mkdir(parents=True)
    (where_it_ran / "data" / "tok").mkdir(parents=True)
    (where_it_ran / "data" / "tok" / "tokenizer.model").write_bytes(b"sp")
    (where_it_ran / "data" / "valid").mkdir()
    state = {"tokenizer": {"path": "data/tok/tokenizer.model", "vocab_size": 8},
             "data": {"valid": "data/valid"}}
    ckpt = NextLatCheckpoint(step, load_config(None, ["run.dir=runs/t"]), state)
    assert ckpt.tokenizer_file() == where_it_ran / "data" / "tok" / "tokenizer.model"
    assert ckpt.recorded_path("data/valid") == where_it_ran / "data" / "valid"
    assert ckpt.recorded_path("data/gone") is None
    (step / "tokenizer.model").write_bytes(b"copy")  # a newer checkpoint's own copy wins
    assert ckpt.tokenizer_file() == step / "tokenizer.model"


def test_checkpoint_load_takes_a_run_directory(tmp_path):
    from nextlat_pt.config import load_config
    from nextlat_pt.train.resume import choose_checkpoint

    other = tmp_path / "other_run"
    for step in (2, 4):
        _make(other / "checkpoints", step)
    for given in (other, other / "checkpoints", other / "checkpoints" / "step_0000002"):
        cfg = load_config(None, [f"run.dir={tmp_path / 'new'}", f"checkpoint.load={given}"])
        start = choose_checkpoint(cfg, warn=lambda m: None)
        assert not start.resume
        assert start.path.name == ("step_0000002" if given.name.startswith("step_")
                                   else "step_0000004")
