"""`torchrun --nproc_per_node=2 -m nextlat_pt train parallel.tp=2` trains end to end."""

from __future__ import annotations

from cli_runner import read_jsonl, run_cli


def test_torchrun_tp2_train(tmp_path, corpus_cache):
    run_dir = tmp_path / "tp2"
    proc = run_cli(["train", "parallel.tp=2", "train.max_steps=12", "logging.interval=4",
                    "model.num_layers=2", "model.seq_len=128", "logging.wandb=disabled",
                    f"run.dir={run_dir}", f"data.cache_dir={corpus_cache}"], nproc=2)
    assert "tp 2 × pp 1 × dp 1" in proc.stdout
    # exactly one rank logs
    assert proc.stdout.count("step 12/12") == 1
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 4, 8, 12]
    assert records[-1]["ce"] < records[0]["ce"] - 0.5
    assert (run_dir / "checkpoints" / "step_0000012" / "COMPLETE").is_file()
