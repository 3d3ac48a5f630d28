"""Validation cross-entropy and perplexity on prepared shards.

The same fixed windows the trainer validates on (`make_valid_batches`: the first
`max_batches × micro_batch_size` windows of seq_len+1 tokens), scored over every position
(documents packed with EOS between them, as in training). The softmax runs over the
tokenizer's real vocabulary, so a checkpoint and its export give the same number; the
trainer's own val_ce also counts megatron's padding rows, so it can be a hair higher
when the vocabulary is padded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch.nn.functional as F

from nextlat_pt.data.dataset import open_dataset
from nextlat_pt.data.errors import DataError
from nextlat_pt.data.loader import make_valid_batches
from nextlat_pt.eval.models import ScoredModel


@dataclass
class ValidResult:
    """Mean next-token CE (nats/token) and its perplexity over `tokens` positions."""

    ce: float
    perplexity: float
    tokens: int
    batches: int
    seq_len: int
    data: str
    model: str

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"validation CE {self.ce:.4f} nats/token, perplexity {self.perplexity:.2f} "
                f"over {self.tokens:,} tokens ({self.batches} batches of seq_len "
                f"{self.seq_len}) on {self.data}")


def dataset_seq_len(path: Path) -> int:
    """The window length the validation split at `path` was prepared with."""
    ds = open_dataset(path, "valid")
    try:
        return ds.seq_len
    finally:
        ds.close()


def validation_loss(model: ScoredModel, data: Path, micro_batch_size: int = 8,
                    max_batches: int = 8, check_tokenizer: bool = True) -> ValidResult:
    """Score `model` on the validation split at `data`."""
    seq_len = dataset_seq_len(data)
    if seq_len > model.max_positions:
        raise DataError(f"{data} has windows of {seq_len} tokens, more than the model's "
                        f"{model.max_positions} positions; prepare shards with a shorter "
                        f"--seq-len")
    fingerprint = model.tokenizer_fingerprint if check_tokenizer else None
    batches = make_valid_batches(data, seq_len, micro_batch_size, max_batches,
                                 expected_fingerprint=fingerprint)
    total, count = 0.0, 0
    for batch in batches:
        tokens = batch["tokens"]
        if int(tokens.max()) >= model.vocab_size:
            raise DataError(f"{data} holds token id {int(tokens.max())}, outside the model's "
                            f"vocabulary of {model.vocab_size}")
        logits = model.logits(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                               tokens[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += tokens[:, 1:].numel()
    ce = total / count
    return ValidResult(ce=ce, perplexity=math.exp(min(ce, 700)), tokens=count,
                       batches=len(batches), seq_len=seq_len, data=str(data),
                       model=model.description)

