"""`nextlat-pt train` on datasets written by `nextlat-pt prepare-data`: two datasets blended
by weight with a validation split, and the mismatches that must stop a run before it trains
(another tokenizer, another seq_len)."""

from __future__ import annotations

import pytest
from cli_runner import read_jsonl, run_cli

from nextlat_pt.data.commands import prepare_data_main, train_tokenizer_main
from nextlat_pt.data.synthetic import synthetic_documents, write_jsonl

TRAIN = ["train", "train.max_steps=6", "logging.interval=1", "logging.wandb=disabled",
         "logging.plot=false", "model.num_layers=2", "model.hidden_size=64",
         "model.num_heads=4", "model.seq_len=64", "train.micro_batch_size=2",
         "train.global_batch_size=4", "train.eval_batches=2"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    write_jsonl(root / "web.jsonl.zst", synthetic_documents(300, seed=1))
    write_jsonl(root / "code.jsonl.gz", synthetic_documents(200, seed=2))
    for name, vocab in (("tok", 400), ("other_tok", 420)):
        assert train_tokenizer_main(["--input", str(root / "web.jsonl.zst"), "--vocab-size",
                                     str(vocab), "--output", str(root / name)]) == 0
    for name in ("web", "code"):
        assert prepare_data_main([
            "--input", str(next(root.glob(f"{name}.jsonl.*"))), "--tokenizer",
            str(root / "tok"), "--seq-len", "64", "--output", str(root / name),
            "--valid-fraction", "0.1"]) == 0
    return root


def test_train_on_two_blended_datasets(tmp_path, prepared):
    run_dir = tmp_path / "run"
    sources = f"[{{path: {prepared / 'web'}, weight: 0.7}}, {{path: {prepared / 'code'}, " \
              f"weight: 0.3}}]"
    proc = run_cli([*TRAIN, f"data.train={sources}", f"run.dir={run_dir}"])
    assert "prepared datasets:" in proc.stdout and "×0.7" in proc.stdout
    assert "final validation CE" in proc.stdout
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(r["data_wait"] >= 0 for r in records)
    assert records[-1]["ce"] < records[0]["ce"]


def test_a_different_tokenizer_is_refused_before_training(tmp_path, prepared):
    run_dir = tmp_path / "run"
    proc = run_cli([*TRAIN, f"data.train={prepared / 'web'}",
                    f"data.tokenizer={prepared / 'other_tok'}", f"run.dir={run_dir}"],
                   expect_code=2)
    assert "nextlat-pt: error:" in proc.stderr and "tokenized with tokenizer" in proc.stderr
    assert not (run_dir / "metrics.jsonl").exists()


def test_a_different_seq_len_is_refused_before_training(tmp_path, prepared):
    run_dir = tmp_path / "run"
    proc = run_cli([*TRAIN, "model.seq_len=32", f"data.train={prepared / 'web'}",
                    f"run.dir={run_dir}"], expect_code=2)
    assert "nextlat-pt: error:" in proc.stderr and "seq_len" in proc.stderr
    assert not (run_dir / "metrics.jsonl").exists()
