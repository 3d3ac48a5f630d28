"""`nextlat-pt train-tokenizer` and `nextlat-pt prepare-data` end to end (the command functions
the CLI dispatches to), then the training loader on their output."""

from __future__ import annotations

import json

import pytest
import torch

from nextlat_pt.data.commands import prepare_data_main, train_tokenizer_main
from nextlat_pt.data.dataset import open_dataset
from nextlat_pt.data.loader import make_train_loader, make_valid_batches
from nextlat_pt.data.synthetic import synthetic_documents, write_jsonl
from nextlat_pt.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    write_jsonl(root / "web.jsonl.zst", synthetic_documents(150, seed=11), field="content")
    write_jsonl(root / "more.jsonl.gz", synthetic_documents(60, seed=12), field="content")
    (root / "notes.txt").write_text("\n".join(synthetic_documents(40, seed=13, max_lines=1)))
    return root


def test_train_tokenizer_then_prepare_data_then_load(raw, tmp_path, capsys):
    tok_dir = tmp_path / "tok"
    rc = train_tokenizer_main([
        "--input", str(raw / "*.jsonl.*"), str(raw / "notes.txt"), "--text-field", "content",
        "--txt-split", "line", "--vocab-size", "400", "--model-type", "unigram",
        "--special-tokens", "<|fim_prefix|>", "<|fim_suffix|>", "--threads", "1",
        "--output", str(tok_dir),
    ])
    out = capsys.readouterr().out
    assert rc == 0, out
    tok = Tokenizer.load(tok_dir / "tokenizer.model")
    assert tok.vocab_size == 400 and f"fingerprint {tok.fingerprint[:16]}" in out
    info = json.loads((tok_dir / "tokenizer.json").read_text())
    assert info["special_tokens"] == {"<|fim_prefix|>": 4, "<|fim_suffix|>": 5}
    assert info["fingerprint"] == tok.fingerprint and info["model_type"] == "unigram"
    # Special tokens are reserved: text that spells them is not encoded as them.
    assert not {4, 5} & set(tok.encode("x <|fim_prefix|> y"))

    data = tmp_path / "data"
    args = ["--input", str(raw), "--text-field", "content", "--txt-split", "line",
            "--tokenizer", str(tok_dir), "--seq-len", "48", "--output", str(data),
            "--valid-fraction", "0.1", "--shard-samples", "30", "--workers", "2"]
    assert prepare_data_main(args) == 0
    out = capsys.readouterr().out
    assert "train: " in out and "valid: " in out and "tokens/s" in out
    train = open_dataset(data)
    assert train.path == data / "train" and train.seq_len == 48 and len(train.shards) > 1
    assert train.tokenizer_fingerprint == tok.fingerprint

    # A second run finds everything in place.
    assert prepare_data_main(args) == 0
    assert "nothing to do" in capsys.readouterr().out

    with make_train_loader([(data, 1.0)], 48, global_batch_size=8, micro_batch_size=4,
                           dp_rank=0, dp_size=1, seed=0,
                           expected_fingerprint=tok.fingerprint) as loader:
        micro = next(loader)
    assert [m["tokens"].shape for m in micro] == [torch.Size([4, 49])] * 2
    valid = make_valid_batches(data, 48, 2, 2, expected_fingerprint=tok.fingerprint)
    assert valid[0]["doc_ids"].shape == (2, 49)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_command_errors_are_one_line_exit_2(raw, tmp_path, capsys):
    assert train_tokenizer_main(["--input", str(tmp_path / "missing.txt"), "--vocab-size",
                                 "300", "--output", str(tmp_path / "t")]) == 2
    line = _error_line(capsys)
    assert line.startswith("nextlat-pt: error: input ") and "missing.txt not found" in line
    assert train_tokenizer_main(["--input", str(raw / "notes.txt"), "--vocab-size", "100",
                                 "--output", str(tmp_path / "t")]) == 2
    assert "vocab_size=100 is too small" in _error_line(capsys)
    assert train_tokenizer_main(["--input", str(raw / "web.jsonl.zst"), "--vocab-size", "300",
                                 "--output", str(tmp_path / "t")]) == 2
    line = _error_line(capsys)
    assert "web.jsonl.zst:1: no field 'text'" in line and "--text-field" in line
    assert prepare_data_main(["--input", str(raw / "notes.txt"), "--tokenizer",
                              str(tmp_path / "none"), "--seq-len", "8",
                              "--output", str(tmp_path / "d")]) == 2
    assert "tokenizer" in _error_line(capsys)
    assert prepare_data_main(["--input", str(raw / "notes.txt")]) == 2
    assert "required" in capsys.readouterr().err
    assert prepare_data_main(["--help"]) == 0
    assert "--valid-fraction" in capsys.readouterr().out
