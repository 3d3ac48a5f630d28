"""`nextlat-pt eval --diagnostics` and `nextlat-pt eval compare` on two tiny trained
checkpoints (NextLat d=1 and NTP, a few steps each)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli

from nextlat_pt.convert.source import open_checkpoint
from nextlat_pt.eval.cli import eval_main
from nextlat_pt.eval.diagnostics import collect_hidden_states
from nextlat_pt.eval.models import NextLatModel

TINY = [
    "model.num_layers=2", "model.hidden_size=64", "model.num_heads=4", "model.seq_len=32",
    "train.micro_batch_size=4", "train.global_batch_size=8", "train.eval_batches=1",
    "train.max_steps=3", "logging.wandb=disabled", "logging.plot=false",
]
# Small enough to keep the test fast, large enough for every code path.
DIAG = ["--rank-sequences", "12", "--rank-tokens", "16", "--probe-offsets", "2",
        "--probe-steps", "10", "--batch-size", "4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_cache) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diagnostics")
    out = {}
    for name, objective in (("nextlat", "nextlat"), ("ntp", "ntp")):
        run_cli(["train", *TINY, f"nextlat.objective={objective}", f"run.dir={root / name}",
                 f"data.cache_dir={corpus_cache}"])
        out[name] = root / name
    return out


def test_hidden_states_of_a_checkpoint_are_its_head_input(runs, parallel_tp1):
    model = NextLatModel(open_checkpoint(runs["nextlat"]))
    ids = torch.randint(0, model.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    hidden = collect_hidden_states(model, ids, batch_size=2)
    with torch.no_grad():
        reference = model.model(ids).hidden.transpose(0, 1)
        logits = hidden @ model.model.head_weight().T
    assert hidden.shape == (3, 16, 64)
    torch.testing.assert_close(hidden, reference)
    torch.testing.assert_close(logits[..., : model.vocab_size], model.logits(ids),
                               rtol=1e-5, atol=1e-5)


def test_eval_diagnostics_and_compare(runs, parallel_tp1, tmp_path, capsys):
    a, b = runs["nextlat"], runs["ntp"]
    assert eval_main([str(a), "--diagnostics", *DIAG, "--max-batches", "1",
                      "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "validation CE" in out and "effective rank" in out and "linear probes" in out
    diag = json.loads((tmp_path / "a.json").read_text())["diagnostics"]
    assert diag["sequences"] == 12 and diag["tokens"] == 16 and diag["hidden_size"] == 64
    assert 1.0 < diag["effective_rank"] <= 64.0
    assert [p["offset"] for p in diag["probes"]] == [1, 2]
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["steps"] == 10 for p in diag["probes"])
    # Split by window: 12 windows -> 10 train, 2 held out. Windows of 16+1 tokens: offset 1
    # has a target for all 16 positions, offset 2 for the first 15.
    sizes = [(p["train_size"], p["test_size"]) for p in diag["probes"]]
    assert sizes == [(10 * 16, 2 * 16), (10 * 15, 2 * 15)]

    # More than the split or the model allows: what there is is used, and said so.
    assert eval_main([str(a), "--diagnostics", "--rank-tokens", "999", "--rank-sequences",
                      "12", "--probe-offsets", "0", "--max-batches", "1"]) == 0
    assert "diagnostics use 12 windows × 32 tokens (asked 12 × 999" in capsys.readouterr().out

    assert eval_main(["compare", str(a), str(b), *DIAG, "--json",
                      str(tmp_path / "ab.json")]) == 0
    table = capsys.readouterr().out
    assert "A: nextlat d=1" in table and "B: ntp" in table and "B−A" in table
    assert "probe acc, token t+2" in table and "effective rank" in table
    both = json.loads((tmp_path / "ab.json").read_text())
    assert both["a"]["objective"] == "nextlat d=1" and both["b"]["objective"] == "ntp"
    # The same windows and probe seed as the single-model run: the same numbers for A.
    assert both["a"]["effective_rank"] == pytest.approx(diag["effective_rank"], rel=1e-9)
    assert both["a"]["ce"] == pytest.approx(diag["ce"], rel=1e-9)
    assert both["a"]["probes"] == diag["probes"]
    assert both["b"]["effective_rank"] != both["a"]["effective_rank"]


def test_compare_refuses_two_tokenizers_and_bad_options(runs, tmp_path, capsys):
    other = tmp_path / "other_tokenizer"
    step = open_checkpoint(runs["ntp"]).path
    shutil.copytree(step, other)
    state = json.loads((other / "trainer_state.json").read_text())
    state["tokenizer"]["fingerprint"] = "0" * 64
    (other / "trainer_state.json").write_text(json.dumps(state))
    assert eval_main(["compare", str(runs["nextlat"]), str(other), *DIAG]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use different tokenizers" in err[0]

    assert eval_main([str(runs["ntp"]), "--diagnostics", "--probe-offsets", "17",
                      "--rank-tokens", "16"]) == 2
    assert "--probe-offsets 17 must be in [0, 16]" in capsys.readouterr().err
    assert eval_main([str(runs["ntp"]), "--diagnostics", "--rank-sequences", "1"]) == 2
