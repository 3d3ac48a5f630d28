"""Random access to a prepared dataset: `open_dataset(path).get(i)`.

Sample i is found through the index (which shard) and that shard's per-sample table (where in
the tar), read with one `pread`, checked against its crc32 and decoded. Reading never streams
through a tar, so any sample costs the same whatever was read before: that is what makes the
global order a pure function of (seed, epoch, weights, index) and resume exact.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nextlat_pt.data.errors import CorruptSampleError, DataError
from nextlat_pt.data.shard_format import (
    SAMPLE_TABLE_DTYPE,
    decode_masked_sample,
    decode_sample,
    doc_ids_from_starts,
    file_sha256,
    sample_key,
)
from nextlat_pt.data.split_writer import FORMAT_NAME, FORMAT_VERSION, INDEX_NAME, JOURNAL_NAME

_MAX_OPEN_SHARDS = 64


def resolve_dataset_dir(path: str | Path, split: str = "train") -> Path:
    """The dataset directory `path` names: itself, or its `split` subdirectory.

    `prepare-data --output OUT` writes OUT/train and OUT/valid; either those or OUT itself may
    be given (OUT then means its `split`).
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"dataset directory {path} not found; run `nextlat-pt prepare-data ... --output "
            f"{path}` or fix the path in the config"
        )
    for candidate in (path, path / split):
        if (candidate / INDEX_NAME).is_file():
            return candidate
    incomplete = (f"is incomplete (no {INDEX_NAME} yet: prepare-data was interrupted); re-run "
                  "the same prepare-data command to finish it")
    if (path / "prepare.json").is_file():  # a prepare-data output root
        if not (path / split).is_dir():
            hint = ("re-run prepare-data with --valid-fraction F into a new --output, or point "
                    "at another prepared dataset" if split == "valid" else
                    "point at a dataset directory")
            raise DataError(f"{path} has no {split} split; {hint}")
        raise DataError(f"dataset {path / split} {incomplete}")
    if (path / JOURNAL_NAME).is_file():
        raise DataError(f"dataset {path} {incomplete}")
    raise DataError(
        f"{path} holds no {INDEX_NAME} (nor {path / split / INDEX_NAME}); point at a "
        "directory written by `nextlat-pt prepare-data`"
    )


def _load_index(directory: Path) -> dict:
    path = directory / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(
            f"cannot read {path}: {err}; re-run the prepare-data command that wrote it"
        ) from None
    if index.get("format") != FORMAT_NAME:
        raise DataError(f"{path} is not a nextlat-pt dataset index (format "
                        f"{index.get('format')!r}); point at a prepare-data output")
    if index.get("version", 0) > FORMAT_VERSION:
        raise DataError(f"{path} has format version {index['version']}, newer than this "
                        f"nextlat_pt reads ({FORMAT_VERSION}); upgrade nextlat_pt")
    return index


class ShardedDataset:
    """A prepared dataset directory: packed samples of seq_len+1 tokens with document ids.

    Thread-safe. Open shard files are cached (at most 64 at a time).
    """

    def __init__(self, directory: str | Path) -> None:
        """Open the dataset in `directory` (use `open_dataset` to accept a prepare-data root)."""
        self.path = Path(directory)
        index = _load_index(self.path)
        self.index = index
        self.seq_len: int = index["seq_len"]
        self.dtype = np.dtype(index["dtype"])
        self.eos_id: int = index["eos_id"]
        self.vocab_size: int = index["vocab_size"]
        self.tokenizer_fingerprint: str = index["tokenizer"]["fingerprint"]
        self.tokenizer_path = self.path / index["tokenizer"]["file"]
        self.num_documents: int = index["num_documents"]
        self.num_tokens: int = index["num_tokens"]
        # Prepared with prompts: each sample has a loss mask (1 on completion tokens).
        self.has_loss_mask: bool = bool(index.get("loss_mask", False))
        self.shards: list[dict] = index["shards"]
        counts = np.array([s["num_samples"] for s in self.shards], dtype=np.int64)
        self._first = np.concatenate([[0], np.cumsum(counts)])
        if self._first[-1] != index["num_samples"]:
            raise DataError(f"{self.path / INDEX_NAME} is inconsistent (shard sample counts "
                            "do not add up); re-run the prepare-data command that wrote it")
        self._tables: dict[int, np.ndarray] = {}
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._first[-1])

    def __repr__(self) -> str:
        return (f"ShardedDataset({str(self.path)!r}, samples={len(self)}, "
                f"seq_len={self.seq_len}, dtype={self.dtype.name}, shards={len(self.shards)})")

    def shard_path(self, k: int) -> Path:
        """File of shard k."""
        return self.path / self.shards[k]["name"]

    def locate(self, i: int) -> tuple[int, int]:
        """(shard, row in that shard) of sample i."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples of {self.path}")
        k = int(np.searchsorted(self._first, i, side="right")) - 1
        return k, i - int(self._first[k])

    def check_files(self) -> list[tuple[int, str]]:
        """Shards whose file is missing or has the wrong size: (first sample, message) each.

        A cheap `stat` per shard, run before training so a truncated shard stops the job at
        once rather than hours in.
        """
        problems = []
        for k, shard in enumerate(self.shards):
            path = self.shard_path(k)
            try:
                size = path.stat().st_size
            except OSError:
                problems.append((int(self._first[k]), self._missing(k, int(self._first[k]))))
                continue
            if size != shard["bytes"]:
                first_bad = self._first_sample_past(k, size)
                problems.append((first_bad, (
                    f"shard {path} is {'truncated' if size < shard['bytes'] else 'damaged'}: "
                    f"{size} bytes, the index says {shard['bytes']} (first affected sample "
                    f"{first_bad}); {self._fix}"
                )))
        return problems

    def _first_sample_past(self, k: int, size: int) -> int:
        """The first sample of shard k that does not fit in `size` bytes."""
        try:
            table = self._table(k, int(self._first[k]))
        except CorruptSampleError:
            return int(self._first[k])
        ends = table["offset"].astype(np.int64) + table["size"]
        row = int(np.searchsorted(ends, size, side="right"))
        return int(self._first[k]) + min(row, len(table) - 1)

    @property
    def _fix(self) -> str:
        return ("re-run the same prepare-data command to repair it, or set data.on_error=skip "
                "to train without the damaged samples")

    def _missing(self, k: int, i: int) -> str:
        return f"shard {self.shard_path(k)} is missing (sample {i}); {self._fix}"

    def _table(self, k: int, i: int) -> np.ndarray:
        table = self._tables.get(k)
        if table is not None:
            return table
        shard = self.shards[k]
        path = self.path / shard["index"]
        try:
            ok = file_sha256(path) == shard["index_sha256"]
            table = np.load(path) if ok else None
        except (OSError, ValueError):
            ok, table = False, None
        if not ok or table.dtype != SAMPLE_TABLE_DTYPE or len(table) != shard["num_samples"]:
            raise CorruptSampleError(
                f"sample table {path} of shard {self.shard_path(k)} is missing or damaged "
                f"(sample {i}); {self._fix}", str(self.shard_path(k)), i)
        self._tables[k] = table
        return table

    def _fd(self, k: int, i: int) -> int:
        fd = self._fds.get(k)
        if fd is not None:
            self._fds.move_to_end(k)
            return fd
        try:
            fd = os.open(self.shard_path(k), os.O_RDONLY)
        except FileNotFoundError:
            raise CorruptSampleError(self._missing(k, i), str(self.shard_path(k)), i) from None
        except OSError as err:
            raise CorruptSampleError(
                f"cannot read shard {self.shard_path(k)} (sample {i}): {err.strerror}; fix its "
                "permissions", str(self.shard_path(k)), i) from None
        self._fds[k] = fd
        if len(self._fds) > _MAX_OPEN_SHARDS:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens in the stored dtype, document starts) of sample i, checked.

        Raises `CorruptSampleError` (naming the shard file and the sample) if the shard is
        missing, truncated or damaged.
        """
        tokens, starts, _ = self._read(i, decode_sample)
        return tokens, starts

    def read_masked(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, document starts, loss mask) of sample i of a dataset with a loss mask."""
        return self._read(i, decode_masked_sample)

    def _read(self, i: int, decode) -> tuple:
        k, row = self.locate(i)
        path = self.shard_path(k)
        with self._lock:
            table = self._table(k, i)
            offset, size, crc = (int(v) for v in table[row])
            data = os.pread(self._fd(k, i), size, offset)
        if len(data) < size:
            raise CorruptSampleError(
                f"shard {path} is truncated: sample {i} (key {sample_key(i)}) needs bytes "
                f"[{offset}, {offset + size}) but the file ends at {offset + len(data)}; "
                f"{self._fix}", str(path), i)
        if zlib.crc32(data) != crc:
            raise CorruptSampleError(
                f"shard {path} is damaged: sample {i} (key {sample_key(i)}, bytes [{offset}, "
                f"{offset + size})) fails its crc32 check; {self._fix}", str(path), i)
        try:
            return (*decode(data, self.dtype, self.seq_len), None)[:3]
        except ValueError as err:  # crc matched, so the writer itself was wrong
            raise CorruptSampleError(
                f"shard {path}: sample {i} does not decode ({err}); {self._fix}", str(path), i
            ) from None

    def get(self, i: int) -> dict[str, np.ndarray]:
        """Sample i: {"tokens", "doc_ids"}, int64 arrays of seq_len+1 (see packed.py), and
        "loss_mask" (uint8, 1 where the token is a training target) if the dataset has one."""
        if self.has_loss_mask:
            tokens, starts, mask = self.read_masked(i)
            extra = {"loss_mask": mask.copy()}
        else:
            tokens, starts = self.read(i)
            extra = {}
        return {
            "tokens": tokens.astype(np.int64),
            "doc_ids": doc_ids_from_starts(starts, self.seq_len + 1),
            **extra,
        }

    def get_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Samples stacked: {"tokens", "doc_ids"[, "loss_mask"]}, arrays [len(indices),
        seq_len+1]."""
        return stack_samples([self.get(int(i)) for i in indices])

    def close(self) -> None:
        """Close the open shard files."""
        with self._lock:
            while self._fds:
                os.close(self._fds.popitem()[1])

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def stack_samples(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Samples stacked key by key; if some carry a loss mask, those without get all ones (a
    blend of masked and plain datasets trains on every token of the plain ones)."""
    out = {key: np.stack([s[key] for s in samples]) for key in ("tokens", "doc_ids")}
    if any("loss_mask" in s for s in samples):
        out["loss_mask"] = np.stack([s.get("loss_mask", np.ones(len(s["tokens"]), np.uint8))
                                     for s in samples])
    return out


def open_dataset(path: str | Path, split: str = "train") -> ShardedDataset:
    """The prepared dataset at `path` (a dataset directory or a prepare-data output root)."""
    return ShardedDataset(resolve_dataset_dir(path, split))
