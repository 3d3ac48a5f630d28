"""`nextlat-pt make-task manhattan` writes a task the trainer accepts as it is, and the task
metrics score the resulting checkpoint; bad arguments stop with one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

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


def run_cli_module(args: list[str], expect_code: int = 0) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` (a task's own command) with its exit status checked."""
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == expect_code, proc.stderr[-4000:]
    return proc


def test_make_task_refuses_bad_arguments(tmp_path):
    proc = run_cli(["make-task", "citygrid", "--output", str(tmp_path)], expect_code=2)
    assert "make-task knows the tasks manhattan, pathstar, got 'citygrid'" in proc.stderr
    proc = run_cli(["make-task", "manhattan", "--output", str(tmp_path), "--grid", "1"],
                   expect_code=2)
    assert proc.stderr.strip().splitlines()[-1].startswith("nextlat-pt: error: --grid 1")


def _pathstar(out, *args: str, expect_code: int = 0):
    return run_cli(["make-task", "pathstar", "--output", str(out), *args],
                   expect_code=expect_code)


def test_make_task_pathstar_refuses_bad_arguments_in_one_line(tmp_path):
    for args, message in (
            (["--degree", "1"], "--degree 1: a path-star needs at least 2 arms"),
            (["--degree", "5", "--length", "5", "--nodes", "20"],
             "--nodes 20: G(5,5) has 21 nodes, so it needs at least 21 labels; raise --nodes"),
            (["--num-graphs", "0"], "--num-graphs 0 and --test-graphs 2000 must be at least 1"),
            (["--degree", "2", "--length", "2", "--nodes", "3", "--num-graphs", "50"],
             "too few for --num-graphs 50"),
            (["--degree", "two"], "argument --degree: invalid int value: 'two'")):
        proc = _pathstar(tmp_path / "out", *args, expect_code=2)
        last = proc.stderr.strip().splitlines()
        assert last[-1].startswith("nextlat-pt: error: ") and message in last[-1], proc.stderr
        assert not any("Traceback" in line for line in last)
        assert not (tmp_path / "out").exists()  # nothing half-written


def test_make_task_pathstar_then_train_on_the_paths_then_score(tmp_path):
    task = tmp_path / "task"
    proc = _pathstar(task, "--degree", "2", "--length", "4", "--nodes", "20",
                     "--num-graphs", "200", "--test-graphs", "20", "--reverse")
    assert "train: 200 graphs" in proc.stdout and "valid: 20 graphs" in proc.stdout
    info = json.loads((task / "task.json").read_text())
    run_dir = tmp_path / "run"
    run_cli(["train", f"run.dir={run_dir}", f"data.train=[{{path: {task / 'shards'}, weight: 1}}]",
             f"data.valid={task / 'shards'}", f"data.tokenizer={task / 'tokenizer'}",
             "model.num_layers=1", "model.hidden_size=64", "model.num_heads=2",
             f"model.seq_len={info['seq_len']}", "train.max_steps=2",
             "train.micro_batch_size=4", "train.global_batch_size=4", "train.eval_batches=1",
             "nextlat.horizon=2", "logging.wandb=disabled", "logging.plot=false"])
    out = tmp_path / "scores.json"
    proc = run_cli_module(["nextlat_pt.tasks.pathstar.evaluate",
                           str(run_dir / "checkpoints" / "step_0000002"), str(task),
                           "--graphs", "8", "--json", str(out)])
    m = json.loads(out.read_text())
    assert m["num_graphs"] == 8 and len(m["per_position_teacher_forced"]) == 4
    for key in ("exact_match_sampled", "exact_match_greedy"):
        assert 0.0 <= m[key] <= 1.0
    proc = run_cli_module(["nextlat_pt.tasks.pathstar.evaluate", str(run_dir), str(tmp_path)],
                          expect_code=2)
    assert proc.stderr.strip().splitlines()[-1].startswith("nextlat-pt: error: ")
