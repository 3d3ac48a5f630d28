"""The default job, shortened: `nextlat-pt train` on the built-in corpus leaves a complete run
directory, and its cross-entropy falls."""

from __future__ import annotations

import json

from cli_runner import read_jsonl, run_cli

REQUIRED = {"step", "loss", "ce", "latent", "kl", "lr", "tokens_per_s"}


def test_shortened_default_run(tmp_path, corpus_cache):
    run_dir = tmp_path / "run"
    proc = run_cli(["train", "train.max_steps=40", "logging.interval=5",
                    f"run.dir={run_dir}", f"data.cache_dir={corpus_cache}"])
    out = proc.stdout
    assert "step 40/40" in out and "tok/s" in out
    assert "final validation CE" in out and "unigram entropy" in out

    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "loss.png").stat().st_size > 1000
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb should log offline by default"

    records = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 5, 10, 15, 20, 25, 30, 35, 40]
    for record in train:
        assert REQUIRED <= record.keys()
        assert record["latent"] is not None and record["kl"] is not None
    assert train[-1]["ce"] < train[0]["ce"] - 1.5, "cross-entropy should fall"
    assert any("val_ce" in r for r in records)

    ckpt_root = run_dir / "checkpoints"
    latest = (ckpt_root / "latest").read_text().strip()
    assert latest == "step_0000040"
    ckpt = ckpt_root / latest
    marker = json.loads((ckpt / "COMPLETE").read_text())
    assert marker["step"] == 40 and any(k.startswith("model/") for k in marker["sha256"])
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 40 and state["consumed_samples"] == 40 * 8


def test_ntp_objective_builds_no_psi(tmp_path, corpus_cache):
    run_dir = tmp_path / "ntp"
    proc = run_cli(["train", "nextlat.objective=ntp", "train.max_steps=3", "logging.interval=1",
                    "model.num_layers=1", "model.hidden_size=64", "model.seq_len=64",
                    "logging.wandb=disabled", "logging.plot=false",
                    f"run.dir={run_dir}", f"data.cache_dir={corpus_cache}"])
    assert "ψ 0" in proc.stdout
    assert proc.stderr.strip() == "", f"library noise on stderr:\n{proc.stderr[-3000:]}"
    assert "Setting accelerator" not in proc.stdout  # DeepSpeed logs to stdout
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert len(records) == 3
    for record in records:
        assert record["latent"] is None and record["kl"] is None
        assert record["loss"] == record["ce"]
    assert not (run_dir / "wandb").exists()
