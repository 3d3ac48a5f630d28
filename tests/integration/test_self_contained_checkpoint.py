"""A checkpoint carries what it needs: its own copy of the tokenizer and absolute data paths.
`generate`, `convert --to hf` and `eval` work from another directory than the one training
ran in, as a Slurm job or a later session runs them."""

from __future__ import annotations

import json
import os

from cli_runner import run_cli

TRAIN = ["train", "train.max_steps=2", "logging.wandb=disabled", "logging.plot=false",
         "model.num_layers=2", "model.hidden_size=64", "model.num_heads=4", "model.seq_len=32",
         "train.micro_batch_size=2", "train.global_batch_size=2", "train.eval_batches=1",
         "run.dir=runs/t"]


def test_generate_convert_and_eval_work_from_another_directory(tmp_path, corpus_cache):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    cache = os.path.relpath(corpus_cache, work)  # every recorded path starts out relative
    run_cli([*TRAIN, f"data.cache_dir={cache}"], cwd=work)
    step = work / "runs" / "t" / "checkpoints" / "step_0000002"
    state = json.loads((step / "trainer_state.json").read_text())
    assert (step / "tokenizer.model").is_file()
    assert os.path.isabs(state["tokenizer"]["path"]) and os.path.isabs(state["data"]["valid"])
    marker = json.loads((step / "COMPLETE").read_text())
    assert "tokenizer.model" in marker["sha256"]  # verified like every other file

    run = str(work / "runs" / "t")
    out = run_cli(["generate", run, "--prompt", "def ", "--max-new-tokens", "4", "--greedy"],
                  cwd=elsewhere)
    assert out.stdout.startswith("def ")
    run_cli(["convert", "--to", "hf", run, "export", "--no-progress"], cwd=elsewhere)
    assert (elsewhere / "export" / "tokenizer.model").is_file()
    for model in (run, "export"):
        scored = run_cli(["eval", model], cwd=elsewhere)
        assert "validation CE" in scored.stdout, scored.stdout
        assert "Loading weights" not in scored.stderr and "arning" not in scored.stderr
