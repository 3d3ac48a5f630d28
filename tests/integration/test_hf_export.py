"""Real training runs -> Hugging Face exports -> transformers, lm-eval, and back.

Three CLI runs cover the parity matrix with the fewest processes:

| run    | launch        | layout    | embeddings | attention | vocab 4096 padded to |
|--------|---------------|-----------|------------|-----------|----------------------|
| tp1    | one process   | TP1 PP1   | untied     | MHA       | 4096 (40 steps: e2e) |
| pp2    | torchrun ×2   | PP2       | tied       | MHA       | 4100                 |
| tp2pp2 | torchrun ×4   | TP2 × PP2 | untied     | GQA 4/2   | 4200                 |

TP=2 sharding (QKV by whole query groups, SwiGLU fc1 per rank, vocab-parallel embedding and
head) is exercised by tp2pp2; PP's last-stage copies (the tied head, ψ's embedding replica)
by pp2 and tp2pp2. The reference for every comparison is our own megatron model, loaded
through the trainer's `load_model_weights` (dist_checkpointing resharding), not through the
exporter's reader.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runner import cli_command, read_jsonl, run_cli

from nextlat_pt.convert.cli import convert_main
from nextlat_pt.convert.source import open_checkpoint
from nextlat_pt.data.loader import make_valid_batches
from nextlat_pt.eval.cli import eval_main
from nextlat_pt.eval.models import HFModel, NextLatModel
from nextlat_pt.eval.valid_loss import validation_loss

TOL = 1e-4
COMMON = [
    "model.num_layers=2", "model.hidden_size=64", "model.num_heads=4", "model.seq_len=32",
    "train.micro_batch_size=4", "train.global_batch_size=8", "train.eval_batches=4",
    "logging.wandb=disabled", "logging.plot=false", "logging.interval=1",
]
RUNS = {
    "tp1": (1, ["train.max_steps=40", "logging.interval=10"]),
    "tp2": (2, ["parallel.tp=2", "model.num_query_groups=2", "train.max_steps=2"]),
    "pp2": (2, ["parallel.pp=2", "model.tie_embeddings=true",
                "model.make_vocab_size_divisible_by=100", "train.max_steps=2"]),
    "tp2pp2": (4, ["parallel.tp=2", "parallel.pp=2", "model.num_query_groups=2",
                   "model.make_vocab_size_divisible_by=100", "train.max_steps=2"]),
}


class Runs:
    """Each run trained once per module, and exported once."""

    def __init__(self, root: Path, cache: Path) -> None:
        self.root, self.cache = root, cache
        self.done: dict[str, Path] = {}
        self.exports: dict[str, Path] = {}

    def run(self, name: str) -> Path:
        if name not in self.done:
            nproc, overrides = RUNS[name]
            run_dir = self.root / name
            run_cli(["train", *COMMON, *overrides, f"run.dir={run_dir}",
                     f"data.cache_dir={self.cache}"], nproc=nproc)
            self.done[name] = run_dir
        return self.done[name]

    def export(self, name: str) -> Path:
        if name not in self.exports:
            out = self.root / f"{name}_hf"
            # The real command line, as `nextlat-pt convert` runs it.
            cmd, env = cli_command([])
            proc = subprocess.run([sys.executable, "-m", "nextlat_pt.convert", "--to", "hf",
                                   str(self.run(name)), str(out), "--max-shard-size", "400KB"],
                                  env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert "exported step" in proc.stdout
            self.exports[name] = out
        return self.exports[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_cache) -> Runs:
    return Runs(tmp_path_factory.mktemp("hf_export"), corpus_cache)


def _valid_tokens(run_dir: Path) -> torch.Tensor:
    ckpt = open_checkpoint(run_dir)
    batch = make_valid_batches(ckpt.state["data"]["valid"], 32, 4, 1)[0]
    return batch["tokens"]


@pytest.mark.parametrize("name", list(RUNS))
def test_exported_logits_equal_ours(name, runs, parallel_tp1):
    """Parity: fp32 logits of the export and of our model agree to 1e-4."""
    from transformers import AutoModelForCausalLM

    run_dir, hf_dir = runs.run(name), runs.export(name)
    tokens = _valid_tokens(run_dir)[:, :-1]
    random_ids = torch.randint(0, 4096, (2, 32), generator=torch.Generator().manual_seed(0))
    ours = NextLatModel(open_checkpoint(run_dir))
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    worst = 0.0
    for ids in (tokens, random_ids):
        with torch.no_grad():
            theirs = hf(input_ids=ids).logits
        diff = (ours.logits(ids) - theirs).abs().max().item()
        worst = max(worst, diff)
    print(f"{name}: max |Δlogits| = {worst:.3e}")
    assert worst <= TOL

    config = json.loads((hf_dir / "config.json").read_text())
    overrides = RUNS[name][1]
    assert config["tie_word_embeddings"] == ("model.tie_embeddings=true" in overrides)
    assert config["num_key_value_heads"] == (2 if "model.num_query_groups=2" in overrides
                                             else 4)
    assert config["vocab_size"] == 4096  # padding rows dropped
    assert len(list(hf_dir.glob("model-*-of-*.safetensors"))) > 1  # sharded, with an index
    assert (hf_dir / "model.safetensors.index.json").is_file()
    psi = json.loads((hf_dir / "nextlat_dynamics.json").read_text())
    assert psi["width"] == 128 and psi["hidden_size"] == 64
    info = json.loads((hf_dir / "nextlat_export.json").read_text())
    assert info["layout"]["tp"] * info["layout"]["pp"] == RUNS[name][0]
    assert info["last_metrics"]["ce"] > 0 and info["tokens_seen"] > 0  # also with PP > 1
    card = (hf_dir / "README.md").read_text()
    assert "tokens seen" in card and f"{info['last_metrics']['ce']:.4f}" in card


def test_trained_export_round_trips_through_our_format(runs, tmp_path, parallel_tp1):
    """HF -> ours (for TP2×PP2: vocabulary padded to 4200 again) -> HF: identical weights,
    ψ included."""
    from safetensors.torch import load_file

    hf_dir = runs.export("tp2pp2")
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    assert convert_main(["--to", "nextlat", str(hf_dir), str(ckpt), "parallel.tp=2",
                         "parallel.pp=2"]) == 0
    assert convert_main(["--to", "hf", str(ckpt), str(back), "--no-progress"]) == 0
    for pattern in ("model*.safetensors", "nextlat_dynamics.safetensors"):
        before, after = {}, {}
        for folder, out in ((hf_dir, before), (back, after)):
            for path in folder.glob(pattern):
                out.update(load_file(str(path)))
        assert before and before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_end_to_end_trained_model_in_transformers(runs, parallel_tp1):
    """A trained tiny checkpoint -> export -> AutoModelForCausalLM + AutoTokenizer load it,
    generate() runs, and its loss on held-out text is ours."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nextlat_pt.eval.tasks import held_out_sources

    run_dir, hf_dir = runs.run("tp1"), runs.export("tp1")
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    prompt = tok("import os\n\n\ndef ", return_tensors="pt").input_ids
    out = model.generate(prompt, max_new_tokens=16, do_sample=False)
    assert out.shape[1] > prompt.shape[1]
    assert tok.decode(out[0]).startswith("import os\n\n\ndef ")
    assert torch.equal(out, model.generate(prompt, max_new_tokens=16, do_sample=False))

    # Held-out text (files training never saw), tokenized by the exported tokenizer.
    _, text = held_out_sources()[0]
    ids = torch.tensor(tok(text).input_ids[: 4 * 33]).view(4, 33)
    ours = NextLatModel(open_checkpoint(run_dir))
    theirs = HFModel(hf_dir)
    losses = []
    for scorer in (ours, theirs):
        logits = scorer.logits(ids[:, :-1])
        losses.append(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item())
    print(f"held-out CE: ours {losses[0]:.6f}, transformers {losses[1]:.6f}")
    assert abs(losses[0] - losses[1]) < 1e-5
    assert losses[1] < 7.5  # trained: well below ln(4096) = 8.32 of an untrained model


def test_eval_loss_matches_training_and_lm_eval_runs_offline(runs, parallel_tp1, tmp_path,
                                                             monkeypatch, capsys):
    """`eval` gives the same validation loss for the checkpoint and its export (and the
    trainer's own final val_ce); lm-eval-harness runs on the export with our tasks."""
    run_dir, hf_dir = runs.run("tp1"), runs.export("tp1")
    args = ["--batch-size", "4", "--max-batches", "4"]
    assert eval_main([str(run_dir), *args, "--json", str(tmp_path / "ckpt.json")]) == 0
    assert eval_main([str(hf_dir), *args, "--json", str(tmp_path / "hf.json")]) == 0
    ckpt = json.loads((tmp_path / "ckpt.json").read_text())["validation"]
    hf = json.loads((tmp_path / "hf.json").read_text())["validation"]
    assert "validation CE" in capsys.readouterr().out
    assert abs(ckpt["ce"] - hf["ce"]) < 1e-5 and ckpt["tokens"] == hf["tokens"] == 4 * 4 * 32
    trained = [r["val_ce"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val_ce" in r]
    assert abs(ckpt["ce"] - trained[-1]) < 1e-4  # same windows, unpadded vocabulary
    # The checkpoint eval path also works for a pipelined checkpoint (no export needed).
    pp2 = validation_loss(NextLatModel(open_checkpoint(runs.run("pp2"))),
                          Path(ckpt["data"]), 4, 2)
    assert pp2.tokens == 2 * 4 * 32

    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # datasets' Arrow cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = eval_main([str(hf_dir), "--lm-eval", "--limit", "12", "--task-dir",
                      str(tmp_path / "tasks"), "--json", str(tmp_path / "lm.json"), *args])
    out = capsys.readouterr().out
    assert code == 0
    assert "nextlat_next_line" in out and "nextlat_code_ppl" in out and "acc" in out
    results = json.loads((tmp_path / "lm.json").read_text())["lm_eval"]
    assert 0.0 <= results["nextlat_next_line"]["acc,none"] <= 1.0
    assert 0 < results["nextlat_code_ppl"]["bits_per_byte,none"] < 8


def test_continued_pretraining_from_a_converted_folder(runs, tmp_path, corpus_cache,
                                                       parallel_tp1):
    """HF folder -> `convert --to nextlat` -> `train checkpoint.load=...` starts from it."""
    ckpt = tmp_path / "converted"
    assert convert_main(["--to", "nextlat", str(runs.export("tp1")), str(ckpt)]) == 0
    run_dir = tmp_path / "continued"
    proc = run_cli(["train", str(ckpt / "config.yaml"), f"checkpoint.load={ckpt}",
                    "train.max_steps=1", "logging.interval=1", f"run.dir={run_dir}",
                    f"data.cache_dir={corpus_cache}"])
    assert f"starting from {ckpt} (step 0, optimizer fresh, RNG fresh)" in proc.stdout
    first = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r][0]
    assert first["ce"] < 7.5  # the trained weights, not a fresh init (8.3)
