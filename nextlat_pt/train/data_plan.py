"""The data a run trains and validates on: prepared datasets from `data.train`, or the
built-in corpus packed into the same shard format, with its tokenizer; and the fingerprint a
checkpoint records to notice when a resumed run reads other data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nextlat_pt.config import Config
from nextlat_pt.data.builtin_corpus import prepare_builtin_shards
from nextlat_pt.data.dataset import open_dataset, resolve_dataset_dir
from nextlat_pt.data.errors import DataError
from nextlat_pt.data.loader import TrainLoader, make_valid_batches
from nextlat_pt.data.tokenizer import Tokenizer
from nextlat_pt.train.step import MicroBatch

# Held-out share of the built-in corpus's files (~30k tokens: enough for the eval batches).
VALID_FRACTION = 0.02


@dataclass
class DataPlan:
    """What the run trains and validates on, and with which tokenizer."""

    tokenizer: Tokenizer
    sources: list[dict[str, Any]]
    valid: Path | None
    description: str
    unigram_entropy: float | None = None  # the built-in corpus's, for the final report


def _tokenizer_for(cfg: Config) -> Tokenizer:
    """`data.tokenizer` (a .model or a directory holding tokenizer.model), else the copy
    that prepare-data stored with the first training dataset."""
    if cfg.data.tokenizer:
        path = Path(cfg.data.tokenizer)
        return Tokenizer.load(path / "tokenizer.model" if path.is_dir() else path)
    stored = open_dataset(cfg.data.train[0]["path"], "train").tokenizer_path
    if stored is None or not Path(stored).is_file():
        raise DataError(f"{cfg.data.train[0]['path']} has no stored tokenizer; set "
                        f"data.tokenizer to the one it was prepared with")
    return Tokenizer.load(stored)


def plan_data(cfg: Config, rank: int, log: Callable[[str], None]) -> DataPlan:
    """Prepared datasets from `data.train`, or the built-in corpus packed into the same
    shard format (rank 0 builds the cache, the others wait and read it)."""
    if cfg.data.train:
        tokenizer = _tokenizer_for(cfg)
        valid = Path(cfg.data.valid) if cfg.data.valid else None
        if valid is None:
            try:  # the valid split of the first dataset, if it was prepared with one
                open_dataset(cfg.data.train[0]["path"], "valid").close()
                valid = Path(cfg.data.train[0]["path"])
            except DataError:
                log("note: no validation data (set data.valid or prepare-data "
                    "--valid-fraction); validation is skipped")
        names = ", ".join(f"{s['path']} ×{s['weight']:g}" for s in cfg.data.train)
        return DataPlan(tokenizer, cfg.data.train, valid, f"prepared datasets: {names}")

    def build(quiet: bool):
        return prepare_builtin_shards(cfg.cache_dir, cfg.data.builtin_vocab_size,
                                      cfg.model.seq_len, log=(lambda _: None) if quiet else log,
                                      valid_fraction=VALID_FRACTION)

    builtin = build(quiet=False) if rank == 0 else None
    if dist.is_initialized():
        dist.barrier()
    if builtin is None:
        builtin = build(quiet=True)
    return DataPlan(
        builtin.tokenizer, [{"path": str(builtin.train_dir), "weight": 1.0}], builtin.valid_dir,
        f"built-in corpus: {builtin.num_files} files, {builtin.train_tokens:,} train tokens, "
        f"{builtin.valid_tokens:,} validation tokens", builtin.unigram_entropy)


def data_fingerprint(sources: list[dict[str, Any]]) -> str:
    """sha256 over the training datasets' index files and weights: what the run reads."""
    digest = hashlib.sha256()
    for source in sources:
        index = resolve_dataset_dir(source["path"], "train") / "index.json"
        digest.update(index.read_bytes())
        digest.update(f"{source['weight']!r}".encode())
    return digest.hexdigest()


def micro_batches(loader: TrainLoader, device: torch.device) -> Iterator[list[MicroBatch]]:
    for group in loader:
        yield [MicroBatch.from_sample(sample, device) for sample in group]


def validation_batches(plan: DataPlan, cfg: Config, device: torch.device):
    """A fixed set of validation micro-batches (the first windows of the held-out split)."""
    if plan.valid is None:
        return lambda: []
    batches = [MicroBatch.from_sample(b, device) for b in make_valid_batches(
        plan.valid, cfg.model.seq_len, cfg.train.micro_batch_size, cfg.train.eval_batches,
        expected_fingerprint=plan.tokenizer.fingerprint)]
    return lambda: batches
