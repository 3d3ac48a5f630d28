"""`nextlat-pt make-task manhattan` writes a task the trainer accepts as it is, and the task
metrics score the resulting checkpoint; bad arguments stop with one line and exit code 2."""

from __future__ import annotations

import json

from cli_runner import read_jsonl, run_cli

from nextlat_pt.data.tokenizer import Tokenizer
from nextlat_pt.tasks.manhattan.graph import City
from nextlat_pt.tasks.manhattan.vocab import TaskVocab


def test_make_task_then_train_then_score(tmp_path):
    task = tmp_path / "task"
    proc = run_cli(["make-task", "manhattan", "--output", str(task), "--grid", "4",
                    "--num-walks", "400", "--walk-len", "20", "--seq-len", "32",
                    "--valid-fraction", "0.1"])
    assert "train:" in proc.stdout and "valid:" in proc.stdout
    info = json.loads((task / "task.json").read_text())
    assert info["splits"]["train"]["samples"] > 0 and info["splits"]["valid"]["samples"] > 0
    city = City.load(task / "city.json")
    assert city.is_strongly_connected()
    # One token per symbol: every walk in the shards' source is 1 + walk_len tokens.
    vocab = TaskVocab(Tokenizer.load(task / "tokenizer" / "tokenizer.model"), city)
    first = (task / "walks.txt").read_text().splitlines()[0]
    assert len(vocab.tokenizer.encode(first)) == 21

    run_dir = tmp_path / "run"
    run_cli(["train", f"run.dir={run_dir}", f"data.train=[{{path: {task / 'shards'}, weight: 1}}]",
             f"data.valid={task / 'shards'}", f"data.tokenizer={task / 'tokenizer'}",
             "model.num_layers=1", "model.hidden_size=64", "model.num_heads=2",
             "model.seq_len=32", "train.max_steps=3", "train.micro_batch_size=4",
             "train.global_batch_size=4", "train.eval_batches=1", "nextlat.horizon=2",
             "logging.interval=1", "logging.wandb=disabled", "logging.plot=false"])
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["latent"] is not None

    from nextlat_pt.tasks.manhattan.evaluate import evaluate_checkpoint

    m = evaluate_checkpoint(run_dir / "checkpoints" / "step_0000003", task, num_walks=12,
                            sample_moves=4)
    for key in ("next_token_legal", "valid_trajectory", "legal_mass", "probe_node"):
        assert 0.0 <= m[key] <= 1.0
    assert m["effective_rank"] > 1.0 and m["num_walks"] == 12


def test_make_task_refuses_bad_arguments(tmp_path):
    proc = run_cli(["make-task", "pathstar", "--output", str(tmp_path)], expect_code=2)
    assert "make-task knows the task 'manhattan'" in proc.stderr
    proc = run_cli(["make-task", "manhattan", "--output", str(tmp_path), "--grid", "1"],
                   expect_code=2)
    assert proc.stderr.strip().splitlines()[-1].startswith("nextlat-pt: error: --grid 1")
