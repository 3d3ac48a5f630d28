"""The training loader over prepared datasets: this rank's micro-batches of each global batch.

Global batch b covers stream positions [c0 + b*G, c0 + (b+1)*G) of the blended stream
(`blend.py`), c0 being `consumed_samples` at start; data-parallel rank r reads only its
contiguous slice [r*G/dp, (r+1)*G/dp) of it. The global batch is thus the same whatever the
data-parallel size, and resuming needs only `consumed_samples`: the Megatron/OLMo-core pattern
(webdataset's streaming shuffle cannot resume exactly).

Batches are read ahead by a background thread (`prefetch` global batches); the time the
trainer spends waiting on `next()` is reported as `data_wait_s`. With `on_error="skip"` a
sample that cannot be read is replaced by the next readable one of the stream (positions p+1,
p+2, ...: a pure function of the position, so every data-parallel layout replaces it alike) and
counted in `skipped_samples`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from nextlat_pt.data.blend import BlendedDataset
from nextlat_pt.data.dataset import ShardedDataset, open_dataset, stack_samples
from nextlat_pt.data.errors import CorruptSampleError, DataError

ON_ERROR = ("raise", "skip")
# How far past a damaged sample the skip mode searches for a readable one before giving up.
_MAX_SKIP_SEARCH = 10_000


def check_dataset(
    dataset: ShardedDataset,
    seq_len: int,
    expected_fingerprint: str | None = None,
    tokenizer_path: str | Path | None = None,
) -> None:
    """Refuse a dataset whose windows or tokenizer do not fit the model."""
    if dataset.seq_len != seq_len:
        raise DataError(
            f"dataset {dataset.path} holds samples of seq_len {dataset.seq_len} (windows of "
            f"{dataset.seq_len + 1} tokens) but model.seq_len is {seq_len}; set model.seq_len="
            f"{dataset.seq_len} or re-run prepare-data with --seq-len {seq_len}"
        )
    if expected_fingerprint is not None and dataset.tokenizer_fingerprint != expected_fingerprint:
        model_tok = f" ({tokenizer_path})" if tokenizer_path else ""
        raise DataError(
            f"dataset {dataset.path} was tokenized with tokenizer "
            f"{dataset.tokenizer_fingerprint[:16]} ({dataset.tokenizer_path}) but the model's "
            f"tokenizer{model_tok} is {expected_fingerprint[:16]}; train with "
            f"data.tokenizer={dataset.tokenizer_path} or re-run prepare-data with the model's "
            "tokenizer"
        )


def _to_torch(batch: dict[str, np.ndarray], pin: bool) -> dict[str, torch.Tensor]:
    out = {k: torch.from_numpy(v) for k, v in batch.items()}
    return {k: v.pin_memory() for k, v in out.items()} if pin else out


class TrainLoader:
    """Iterator of this rank's micro-batches, one list per global batch, read ahead.

    Each micro-batch is {"tokens", "doc_ids"}: int64 tensors [micro_batch_size, seq_len+1],
    and "loss_mask" (uint8, same shape) when a dataset was prepared with prompts.
    `consumed_samples` counts the global samples of the batches handed out so far (all ranks
    together), the number to save in a checkpoint. Close it (or use `with`) to stop the
    reader thread.
    """

    def __init__(
        self,
        blend: BlendedDataset,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        consumed_samples: int = 0,
        on_error: str = "raise",
        prefetch: int = 2,
        pin_memory: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Check the layout and start the reader thread."""
        if global_batch_size < 1 or micro_batch_size < 1:
            raise DataError(f"global_batch_size={global_batch_size} and micro_batch_size="
                            f"{micro_batch_size} must be positive")
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise DataError(f"dp_rank={dp_rank} must be in [0, dp_size={dp_size})")
        if global_batch_size % dp_size:
            raise DataError(
                f"global_batch_size={global_batch_size} is not divisible by the data-parallel "
                f"size {dp_size}; choose a multiple of {dp_size}"
            )
        local = global_batch_size // dp_size
        if local % micro_batch_size:
            raise DataError(
                f"micro_batch_size={micro_batch_size} does not divide this rank's share of the "
                f"global batch ({global_batch_size} / dp {dp_size} = {local}); pick a micro "
                "batch size that divides it"
            )
        if consumed_samples < 0:
            raise DataError(f"consumed_samples={consumed_samples} must be non-negative")
        if on_error not in ON_ERROR:
            raise DataError(f"data.on_error={on_error!r} must be one of {ON_ERROR}")
        if prefetch < 1:
            raise DataError(f"prefetch={prefetch} must be at least 1")
        self.blend = blend
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.local_batch_size = local
        self.on_error = on_error
        self._pin = pin_memory and torch.cuda.is_available()
        self._log = log
        self._start = consumed_samples
        self._yielded = 0
        self._wait = 0.0
        self._skipped = 0
        self.skip_messages: list[str] = []  # the first few, for the log
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="nextlat-data", daemon=True)
        self._thread.start()

    @property
    def consumed_samples(self) -> int:
        """Global samples consumed after the batches yielded so far."""
        return self._start + self._yielded * self.global_batch_size

    def stats(self) -> dict[str, float]:
        """`data_wait_s`: total time spent waiting in `next()`; `skipped_samples`: damaged
        samples replaced in the batches yielded so far (this rank)."""
        return {"data_wait_s": self._wait, "skipped_samples": self._skipped}

    # ---------------------------------------------------------------- reader thread

    def _read(self, position: int, dataset: int, sample: int) -> tuple[dict, int, str | None]:
        """The sample at `position` (or its replacement): (sample, corrupt count, message)."""
        try:
            return self.blend.datasets[dataset].get(sample), 0, None
        except CorruptSampleError as err:
            if self.on_error == "raise":
                raise
            first_error = str(err)
        for q in range(position + 1, position + 1 + _MAX_SKIP_SEARCH):
            d, i = self.blend.locate([q])
            try:
                return self.blend.datasets[int(d[0])].get(int(i[0])), 1, first_error
            except CorruptSampleError:
                continue
        raise DataError(
            f"no readable sample in the {_MAX_SKIP_SEARCH} stream positions after {position}: "
            f"the datasets are badly damaged ({first_error})"
        )

    def _batch(self, b: int) -> tuple[list[dict[str, torch.Tensor]], int, list[str]]:
        start = self._start + b * self.global_batch_size + self.dp_rank * self.local_batch_size
        positions = np.arange(start, start + self.local_batch_size, dtype=np.int64)
        datasets, samples = self.blend.locate(positions)
        rows, skipped, messages = [], 0, []
        for p, d, i in zip(positions.tolist(), datasets.tolist(), samples.tolist()):
            sample, bad, message = self._read(p, d, i)
            rows.append(sample)
            skipped += bad
            if message:
                messages.append(message)
        mbs = self.micro_batch_size
        micro = []
        for lo in range(0, len(rows), mbs):
            micro.append(_to_torch(stack_samples(rows[lo : lo + mbs]), self._pin))
        return micro, skipped, messages

    def _put(self, item: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        b = 0
        try:
            while not self._stop.is_set():
                if not self._put(("batch", self._batch(b))):
                    return
                b += 1
        except BaseException as err:  # handed to the consumer, raised by next()
            self._put(("error", err))

    # ---------------------------------------------------------------- consumer side

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> list[dict[str, torch.Tensor]]:
        if self._stop.is_set():
            raise StopIteration
        t0 = time.perf_counter()
        kind, payload = self._queue.get()
        self._wait += time.perf_counter() - t0
        if kind == "error":
            self.close()
            raise payload
        micro, skipped, messages = payload
        self._yielded += 1
        self._skipped += skipped
        for message in messages:
            if len(self.skip_messages) < 20:
                self.skip_messages.append(message)
                if self._log is not None:
                    self._log(f"data: skipped a damaged sample: {message}")
        return micro

    def close(self) -> None:
        """Stop the reader thread and close the datasets' files."""
        self._stop.set()
        while True:  # unblock a reader waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        for ds in self.blend.datasets:
            if hasattr(ds, "close"):
                ds.close()

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_train_datasets(
    sources: Sequence[tuple[str | Path, float] | Mapping],
    seq_len: int,
    expected_fingerprint: str | None = None,
    tokenizer_path: str | Path | None = None,
) -> tuple[list[ShardedDataset], list[float]]:
    """Open and check the `data.train` datasets: same seq_len, one tokenizer for all.

    Each source is (path, weight) or a mapping {"path": ..., "weight": ...} (weight 1 if absent),
    as the config holds it.
    """
    if not sources:
        raise DataError("data.train is empty; set data.train=[{path: DIR, weight: 1.0}]")
    datasets, weights = [], []
    for source in sources:
        if isinstance(source, Mapping):
            if "path" not in source:
                raise DataError(f"data.train entry {dict(source)} has no path; write "
                                "{path: DIR, weight: W}")
            path, weight = source["path"], source.get("weight", 1.0)
        else:
            path, weight = source
        ds = open_dataset(path, "train")
        check_dataset(ds, seq_len, expected_fingerprint, tokenizer_path)
        if datasets and ds.tokenizer_fingerprint != datasets[0].tokenizer_fingerprint:
            raise DataError(
                f"datasets {datasets[0].path} and {ds.path} were tokenized with different "
                f"tokenizers ({datasets[0].tokenizer_fingerprint[:16]} vs "
                f"{ds.tokenizer_fingerprint[:16]}); prepare every dataset with one tokenizer"
            )
        datasets.append(ds)
        weights.append(weight)
    return datasets, weights


def make_train_loader(
    sources: Sequence[tuple[str | Path, float] | Mapping],
    seq_len: int,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    seed: int,
    consumed_samples: int = 0,
    on_error: str = "raise",
    prefetch: int = 2,
    expected_fingerprint: str | None = None,
    *,
    tokenizer_path: str | Path | None = None,
    pin_memory: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainLoader:
    """The training loader over `sources` [(dataset dir, weight), ...] for one DP rank.

    Everything that can be checked before training is: the directories and indexes, seq_len,
    the tokenizer fingerprint (against `expected_fingerprint`, the model's; `tokenizer_path`
    only names it in the error), the batch layout and, with `on_error="raise"`, that every
    shard file is present with its recorded size.
    """
    if on_error not in ON_ERROR:
        raise DataError(f"data.on_error={on_error!r} must be one of {ON_ERROR}")
    datasets, weights = open_train_datasets(sources, seq_len, expected_fingerprint,
                                            tokenizer_path)
    for ds in datasets:
        problems = ds.check_files()
        if problems and on_error == "raise":
            raise DataError(problems[0][1])
        if problems and log is not None:
            log(f"data: {len(problems)} damaged shard(s) in {ds.path}; their samples will be "
                f"skipped (data.on_error=skip): {problems[0][1]}")
    blend = BlendedDataset(datasets, weights, seed=seed)
    return TrainLoader(blend, global_batch_size, micro_batch_size, dp_rank, dp_size,
                       consumed_samples, on_error, prefetch, pin_memory, log)


def make_valid_batches(
    path: str | Path,
    seq_len: int,
    micro_batch_size: int,
    max_batches: int,
    expected_fingerprint: str | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Fixed validation micro-batches: the first `max_batches * micro_batch_size` windows.

    `path` is a dataset directory or a prepare-data output (its `valid` split is used).
    """
    ds = open_dataset(path, "valid")
    try:
        check_dataset(ds, seq_len, expected_fingerprint)
        count = min(max_batches, len(ds) // micro_batch_size)
        if count < 1:
            raise DataError(
                f"validation dataset {ds.path} has {len(ds)} samples, fewer than one "
                f"micro-batch ({micro_batch_size}); prepare a larger validation split"
            )
        return [
            _to_torch(ds.get_batch(range(b * micro_batch_size, (b + 1) * micro_batch_size)),
                      False)
            for b in range(count)
        ]
    finally:
        ds.close()
