"""Validation cross-entropy and perplexity on prepared shards.

By default every window of the split is scored (the last batch may be smaller); with
`max_batches` only the first `max_batches × micro_batch_size` windows, which are the windows
the trainer validates on when they match its `train.eval_batches` and micro-batch size.
Every position is scored (documents packed with EOS between them, as in training), except
in data prepared with prompts: there, as in training, only the completions' tokens. The
softmax runs over the tokenizer's real vocabulary, so a checkpoint and its export give the
same number; the trainer's own val_ce also counts megatron's padding rows, so it can be a
hair higher when the vocabulary is padded.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from nextlat_pt.data.dataset import ShardedDataset, resolve_dataset_dir
from nextlat_pt.data.errors import DataError
from nextlat_pt.data.loader import check_dataset
from nextlat_pt.eval.models import ScoredModel


@dataclass
class ValidResult:
    """Mean next-token CE (nats/token) and its perplexity over `tokens` positions."""

    ce: float
    perplexity: float
    tokens: int
    windows: int
    total_windows: int
    batches: int
    seq_len: int
    data: str
    model: str

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        coverage = (f"all {self.windows:,}" if self.windows == self.total_windows
                    else f"the first {self.windows:,} of {self.total_windows:,}")
        return (f"validation CE {self.ce:.4f} nats/token, perplexity {self.perplexity:.2f} "
                f"over {self.tokens:,} tokens ({coverage} windows of seq_len {self.seq_len}) "
                f"on {self.data}")


def eval_split(path: str | Path) -> tuple[Path, str]:
    """The split `eval` scores at `path`, and a note when it is not a validation split: a
    dataset directory itself; a prepare-data output's `valid` split; or, for an output
    prepared without one (a held-out set prepared on its own), its `train` split."""
    try:
        return resolve_dataset_dir(path, "valid"), ""
    except DataError as err:
        try:
            split = resolve_dataset_dir(path, "train")
        except DataError:
            raise err from None
        return split, f"note: {path} has no valid split; scoring its only split, {split}"


def validation_loss(model: ScoredModel, data: Path, micro_batch_size: int = 8,
                    max_batches: int | None = None, check_tokenizer: bool = True,
                    progress: bool = False) -> ValidResult:
    """Score `model` on the split at `data` (see `eval_split`): all of it, or the first
    `max_batches` batches; `progress` shows a bar on a terminal."""
    split, note = eval_split(data)
    if note:
        print(note, flush=True)
    ds = ShardedDataset(split)
    try:
        check_dataset(ds, ds.seq_len, model.tokenizer_fingerprint if check_tokenizer else None)
        if ds.seq_len > model.max_positions:
            raise DataError(f"{split} has windows of {ds.seq_len} tokens, more than the "
                            f"model's {model.max_positions} positions; prepare shards with a "
                            f"shorter --seq-len")
        windows = len(ds) if max_batches is None else min(len(ds), max_batches *
                                                           micro_batch_size)
        if windows < 1:
            raise DataError(f"{split} holds no windows to score")
        starts = range(0, windows, micro_batch_size)
        total, count = 0.0, 0
        for start in _progress(starts, progress, f"scoring {windows:,} windows"):
            batch = ds.get_batch(range(start, min(start + micro_batch_size, windows)))
            tokens = torch.from_numpy(batch["tokens"])
            if int(tokens.max()) >= model.vocab_size:
                raise DataError(f"{split} holds token id {int(tokens.max())}, outside the "
                                f"model's vocabulary of {model.vocab_size}")
            logits = model.logits(tokens[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                   tokens[:, 1:].reshape(-1), reduction="none")
            if "loss_mask" in batch:  # prepared with prompts: the completions, as training
                loss = loss[torch.from_numpy(batch["loss_mask"][:, 1:]).reshape(-1).bool()]
            total += float(loss.sum())
            count += loss.numel()
        ce = total / count
        return ValidResult(ce=ce, perplexity=math.exp(min(ce, 700)), tokens=count,
                           windows=windows, total_windows=len(ds), batches=len(starts),
                           seq_len=ds.seq_len, data=str(split), model=model.description)
    finally:
        ds.close()


def _progress(items, enabled: bool, description: str):
    """A progress bar on stderr when asked for and stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="batch", leave=False)
