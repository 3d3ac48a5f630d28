"""`nextlat-pt generate` end to end on a checkpoint trained here (2 layers, D=64, 10 steps)
and on its Hugging Face export: text on stdout, statistics on stderr, greedy speculative
output identical to plain greedy output, and one-line refusals (exit code 2)."""

from __future__ import annotations

import json

import pytest
from cli_runner import run_cli

from nextlat_pt.convert.cli import convert_main
from nextlat_pt.generate.cli import generate_main

TRAIN = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=4", "model.seq_len=32",
         "train.micro_batch_size=4", "train.global_batch_size=8", "train.max_steps=10",
         "train.eval_batches=1", "logging.wandb=disabled", "logging.plot=false"]
PROMPTS = ["import os\n", "def main("]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_cache):
    root = tmp_path_factory.mktemp("generate_cli")
    run_cli(["train", *TRAIN, f"run.dir={root / 'run'}", f"data.cache_dir={corpus_cache}"])
    assert convert_main(["--to", "hf", str(root / "run"), str(root / "export"),
                         "--no-progress"]) == 0
    return root


def _args(model, *extra):
    prompts = [a for p in PROMPTS for a in ("--prompt", p)]
    return [str(model), *prompts, "--max-new-tokens", "12", "--ignore-eos", *extra]


def test_generate_command_line(trained):
    stats_path = trained / "stats.json"
    proc = run_cli(["generate", *_args(trained / "run", "--greedy", "--draft-len", "3",
                                       "--stats-json", str(stats_path))])
    assert proc.stdout.startswith(PROMPTS[0])
    assert "\n" + PROMPTS[1] in proc.stdout  # the second sample, after a separator
    assert "static K=3" in proc.stderr and "accepted/cycle" in proc.stderr
    stats = json.loads(stats_path.read_text())
    assert stats["new_tokens"] == 24 and stats["sequences"] == 2
    assert stats["drafted"] > 0 and stats["cycles"] + stats["accepted"] + 2 == 24


def test_speculative_greedy_equals_plain_from_checkpoint_and_export(trained, capsys):
    outputs = {}
    for name, model, extra in (
            ("plain", trained / "run", []),
            ("K=4", trained / "run", ["--draft-len", "4"]),
            ("threshold", trained / "export", ["--adaptive", "threshold", "--threshold", "0.2"]),
            ("acceptance, batch 1", trained / "export", ["--adaptive", "acceptance",
                                                         "--batch-size", "1"])):
        assert generate_main(_args(model, "--greedy", "--jsonl", *extra)) == 0
        out = capsys.readouterr().out
        outputs[name] = [json.loads(line)["new_ids"] for line in out.splitlines()]
    assert all(len(ids) == 12 for ids in outputs["plain"])
    assert all(value == outputs["plain"] for value in outputs.values())


def test_refusals_are_one_line(trained, capsys, tmp_path):
    import shutil

    ntp = tmp_path / "ntp_export"
    shutil.copytree(trained / "export", ntp)
    (ntp / "nextlat_dynamics.safetensors").unlink()  # an export without ψ: next-token only
    cases = [
        (_args(ntp, "--draft-len", "2"), "has no ψ"),
        (_args(trained / "run", "--greedy", "--temperature", "0.5"), "--greedy takes no"),
        ([str(trained / "run"), "--prompt", "x " * 40, "--max-new-tokens", "4"],
         "positions"),
        ([str(trained / "run"), "--prompt", "x", "--max-new-tokens", "0"], "must be >= 1"),
        (_args(tmp_path / "missing"), "does not exist"),
    ]
    for argv, message in cases:
        assert generate_main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("nextlat-pt: error")]
        assert len(lines) == 1 and message in lines[0], err
    assert generate_main(_args(ntp, "--greedy")) == 0  # plain decoding needs no ψ
