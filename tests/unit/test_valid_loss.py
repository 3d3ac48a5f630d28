"""`eval` scores the whole split by default (a partial last batch included), says how many
tokens it scored, and takes a prepare-data output without a valid split (a held-out set
prepared on its own) by scoring its only split."""

from __future__ import annotations

import math

import numpy as np
import torch

from nextlat_pt.data.split_writer import write_token_dataset
from nextlat_pt.eval.valid_loss import validation_loss

SEQ, VOCAB, WINDOWS = 16, 50, 23
FINGERPRINT = "cd" * 32


class UniformModel:
    """Equal logits everywhere: the CE is ln(vocab) exactly, whatever the tokens."""

    vocab_size, max_positions = VOCAB, 64
    tokenizer_fingerprint, description = FINGERPRINT, "uniform"

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*tokens.shape, VOCAB)


def _prepared_without_valid_split(root):
    tokens = (np.arange(WINDOWS * SEQ + 1) % (VOCAB - 3) + 3).astype(np.uint16)
    tokens[-1] = 2
    write_token_dataset(root / "train", tokens, 2, SEQ,
                        {"vocab_size": VOCAB, "tokenizer": {"fingerprint": FINGERPRINT,
                                                            "file": "tokenizer.model"}},
                        log=lambda m: None)
    (root / "prepare.json").write_text("{}")  # what marks a prepare-data output
    return root


def test_the_whole_split_is_scored_partial_batch_included(tmp_path, capsys):
    data = _prepared_without_valid_split(tmp_path / "heldout")
    result = validation_loss(UniformModel(), data, micro_batch_size=8)  # batches 8, 8, 7
    assert "has no valid split; scoring its only split" in capsys.readouterr().out
    assert (result.windows, result.total_windows, result.batches) == (WINDOWS, WINDOWS, 3)
    assert result.tokens == WINDOWS * SEQ
    assert abs(result.ce - math.log(VOCAB)) < 1e-12
    assert f"over {WINDOWS * SEQ:,} tokens (all {WINDOWS} windows of seq_len" in result.summary()


def test_max_batches_scores_the_first_windows_and_says_so(tmp_path):
    data = _prepared_without_valid_split(tmp_path / "heldout") / "train"
    result = validation_loss(UniformModel(), data, micro_batch_size=8, max_batches=2)
    assert result.tokens == 16 * SEQ and result.batches == 2
    assert f"the first 16 of {WINDOWS} windows" in result.summary()


def test_data_prepared_with_prompts_is_scored_on_its_completions_only(tmp_path):
    from nextlat_pt.data.dataset import open_dataset
    from nextlat_pt.tasks.pathstar.build import PathStarSettings, make_pathstar

    task = tmp_path / "task"
    make_pathstar(task, PathStarSettings(degree=2, length=3, nodes=10, num_graphs=30,
                                         test_graphs=6), log=lambda m: None)
    ds = open_dataset(task / "shards", "valid")
    targets = sum(int(ds.get(i)["loss_mask"][1:].sum()) for i in range(len(ds)))
    model = UniformModel()
    model.vocab_size, model.tokenizer_fingerprint = ds.vocab_size, ds.tokenizer_fingerprint

    def logits(tokens):
        return torch.zeros(*tokens.shape, ds.vocab_size)

    model.logits = logits
    result = validation_loss(model, task / "shards", micro_batch_size=2)
    assert result.tokens == targets == len(ds) * 6  # the path's 5 tokens and its EOS
    assert abs(result.ce - math.log(ds.vocab_size)) < 1e-12
