"""Writing one split of a prepared dataset: packing into shards, a journal, resume, the index.

A split directory holds `shard-NNNNNN.tar` + `shard-NNNNNN.idx.npy` pairs and, once complete,
`index.json` (written last). While it is being built, `progress.jsonl` records each finished
shard (size, sha256, the stream pointers where it starts and ends) and, at the end of the input,
the split's totals. A later run with the same plan trusts a shard only if its files are present
and match the recorded size and checksums; packing restarts at the first shard that is not, from
the pointer recorded at the end of the shard before it, and shards that verify are not
rewritten. With `index.json` present the same checks repair a damaged or deleted shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nextlat_pt.data.errors import DataError
from nextlat_pt.data.packing import Packer, Pointer
from nextlat_pt.data.shard_format import TAR_BLOCK, ShardWriter, file_sha256, write_atomically

INDEX_NAME = "index.json"
JOURNAL_NAME = "progress.jsonl"
FORMAT_NAME = "nextlat-pt-shards"
FORMAT_VERSION = 1
SHARD_TARGET_BYTES = 256 << 20  # webdataset's advice: shards of a few hundred MB


def default_shard_samples(seq_len: int, dtype: np.dtype) -> int:
    """Samples per shard for shards of about `SHARD_TARGET_BYTES`."""
    tokens = 128 + (seq_len + 1) * np.dtype(dtype).itemsize
    per_sample = 3 * TAR_BLOCK + tokens + (-tokens % TAR_BLOCK)  # 2 headers + doc starts
    return max(1, SHARD_TARGET_BYTES // per_sample)


def shard_name(k: int) -> str:
    """File name of shard k."""
    return f"shard-{k:06d}.tar"


def _read_journal(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a crash: what follows it cannot be trusted
    return records


def _verify(directory: Path, record: dict) -> str | None:
    """None if the shard's files match the record, else what is wrong."""
    tar, table = directory / record["name"], directory / record["index"]
    if not tar.is_file() or not table.is_file():
        return "missing"
    if tar.stat().st_size != record["bytes"]:
        return f"{tar.stat().st_size} bytes, expected {record['bytes']}"
    if file_sha256(tar) != record["sha256"] or file_sha256(table) != record["index_sha256"]:
        return "checksum mismatch"
    return None


class SplitWriter:
    """Builds (or finishes, or repairs) one split directory for a given plan.

    Feed it every document of this split from `start_doc` on, in order, with `add`; call
    `finish_input` at the end of the input unless `done` turned true first; then `write_index`.
    """

    def __init__(
        self,
        directory: Path,
        seq_len: int,
        dtype: np.dtype,
        shard_samples: int,
        plan: str,
        log: Callable[[str], None] = print,
        with_mask: bool = False,
    ) -> None:
        """Open `directory` and work out which shards are still to be written. `with_mask`:
        documents come with a loss mask, stored with each sample."""
        self.dir = Path(directory)
        self.with_mask = with_mask
        self.dir.mkdir(parents=True, exist_ok=True)
        self.seq_len = seq_len
        self.dtype = np.dtype(dtype)
        self.shard_samples = shard_samples
        self.plan = plan
        self.log = log
        for leftover in self.dir.glob(".*.tmp-*"):  # temp files of a killed run
            leftover.unlink(missing_ok=True)

        self.records: dict[int, dict] = {}
        self.end: dict | None = None
        self._load_records()
        damaged = {}
        for k, record in sorted(self.records.items()):
            problem = _verify(self.dir, record)
            if problem:
                damaged[k] = problem
        for k, problem in damaged.items():
            log(f"{self.dir / self.records[k]['name']}: {problem}; it will be rewritten")
            del self.records[k]
        self.shards_kept = len(self.records)
        self.shards_written = 0

        first_missing = 0
        while first_missing in self.records:
            first_missing += 1
        start = Pointer()
        if first_missing and self.records[first_missing - 1]["end"] is not None:
            start = Pointer.from_list(self.records[first_missing - 1]["end"])
        self.packer = Packer(seq_len, start, first_sample=first_missing * shard_samples,
                             with_mask=with_mask)
        # The last shard this run must write; None: unknown until the input ends.
        self._last_needed: int | None = None
        if self.end is not None:
            missing = [k for k in range(self.end["num_shards"]) if k not in self.records]
            self._last_needed = max(missing) if missing else -1
        self._writer: ShardWriter | None = None
        self._current_start: Pointer | None = None

    def _load_records(self) -> None:
        index_path = self.dir / INDEX_NAME
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                index = {}
            if index.get("plan_fingerprint") == self.plan:
                for k, record in enumerate(index["shards"]):
                    self.records[k] = record
                self.end = {key: index[key] for key in
                            ("num_shards", "num_samples", "num_tokens", "num_documents")}
                return
            index_path.unlink()  # another plan's index: the caller decided to start over
        for record in _read_journal(self.dir / JOURNAL_NAME):
            if record.get("plan") != self.plan:
                continue
            if record["kind"] == "shard":
                self.records[record["shard"]] = {
                    k: v for k, v in record.items() if k not in ("kind", "plan", "shard")
                }
            elif record["kind"] == "end":
                self.end = {k: v for k, v in record.items() if k not in ("kind", "plan")}

    @property
    def start_doc(self) -> int:
        """The first input document this split still needs."""
        return self.packer.start.doc

    @property
    def done(self) -> bool:
        """True when every shard is on disk and the totals are known: no more input needed."""
        if self._last_needed is None:
            return False
        if self._last_needed < 0:
            return True
        return self.packer.next_sample >= (self._last_needed + 1) * self.shard_samples

    def add(self, docs: Sequence[tuple[int, np.ndarray] | tuple[int, np.ndarray, np.ndarray]]
            ) -> None:
        """Append this split's documents (index, tokens with EOS[, loss mask]) and write what
        fills."""
        if self.done:
            return
        self.packer.add(docs)
        s = self.shard_samples
        for window, pointers in self.packer.drain(lambda i: i % s == 0 or (i + 1) % s == 0):
            k, j = divmod(window.index, s)
            if j == 0:
                self._current_start = pointers[0]
                if k not in self.records:
                    self._writer = ShardWriter(self.dir / shard_name(k))
            if self._writer is not None:
                self._writer.add(window.index, window.tokens.astype(self.dtype), window.starts,
                                 window.loss_mask)
                if j == s - 1:
                    self._close_shard(k, pointers[1])

    def _close_shard(self, k: int, end: Pointer | None) -> None:
        assert self._writer is not None and self._current_start is not None
        record = self._writer.finish()
        self._writer = None
        record["start"] = self._current_start.to_list()
        record["end"] = end.to_list() if end is not None else None
        self.records[k] = record
        self.shards_written += 1
        self._journal({"kind": "shard", "plan": self.plan, "shard": k, **record})

    def _journal(self, record: dict) -> None:
        with open(self.dir / JOURNAL_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish_input(self) -> None:
        """The input has ended: close the last (partial) shard and record the totals."""
        if self.done:
            return
        num_samples = self.packer.next_sample
        if self._writer is not None:
            self._close_shard((num_samples - 1) // self.shard_samples, self.packer.pointer())
        end = {
            "num_shards": -(-num_samples // self.shard_samples),
            "num_samples": num_samples,
            "num_tokens": self.packer.num_tokens,
            "num_documents": self.packer.documents,
        }
        if self.end is not None and self.end != end:
            raise DataError(
                f"{self.dir} was recorded with totals {self.end} but this run produced {end}; "
                "the input changed while it was prepared: delete the output and start again"
            )
        self.end = end
        self._last_needed = -1
        self._journal({"kind": "end", "plan": self.plan, **end})

    def abort(self) -> None:
        """Drop an unfinished shard (after an error or an interrupt)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    @property
    def num_samples(self) -> int:
        """Samples of the split (known once the input ended)."""
        return self.end["num_samples"] if self.end else self.packer.next_sample

    def write_index(self, meta: dict) -> Path:
        """Write `index.json` (last: it marks the split complete) and drop the journal."""
        assert self.end is not None, "finish_input first"
        shards = [self.records[k] for k in range(self.end["num_shards"])]
        index = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            **meta,
            **({"loss_mask": True} if self.with_mask else {}),
            "plan_fingerprint": self.plan,
            "seq_len": self.seq_len,
            "sample_tokens": self.seq_len + 1,
            "dtype": self.dtype.name,
            "shard_samples": self.shard_samples,
            **self.end,
            "shards": shards,
        }
        # One line per shard keeps a large index readable and diffable.
        text = json.dumps({**index, "shards": ["@"]}, indent=1).replace(
            '[\n  "@"\n ]', "[\n  " + ",\n  ".join(json.dumps(r) for r in shards) + "\n ]"
        )
        path = self.dir / INDEX_NAME
        write_atomically(path, (text + "\n").encode("utf-8"))
        (self.dir / JOURNAL_NAME).unlink(missing_ok=True)
        return path


def write_token_dataset(
    directory: Path,
    tokens: np.ndarray,
    eos_id: int,
    seq_len: int,
    meta: dict,
    shard_samples: int = 0,
    dtype: np.dtype | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Write a dataset from a flat token array of EOS-terminated documents; returns the index.

    For token streams that exist already (the built-in corpus, tests). `meta` goes into the
    index and must name at least `vocab_size` and `tokenizer` ({fingerprint, file}).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    dtype = np.dtype(dtype or tokens.dtype)
    shard_samples = shard_samples or default_shard_samples(seq_len, dtype)
    ends = np.flatnonzero(tokens == eos_id) + 1
    if len(tokens) and (not len(ends) or ends[-1] != len(tokens)):
        ends = np.append(ends, len(tokens))  # a last document without EOS still counts
    starts = np.concatenate([[0], ends[:-1]])
    plan_key = f"tokens seq_len={seq_len} shard_samples={shard_samples} dtype={dtype.name}\n"
    plan = hashlib.sha256(plan_key.encode() + tokens.tobytes()).hexdigest()
    writer = SplitWriter(directory, seq_len, dtype, shard_samples, plan, log)
    try:
        step = 1024
        for lo in range(0, len(ends), step):
            writer.add([(g, tokens[starts[g] : ends[g]])
                        for g in range(lo, min(lo + step, len(ends)))])
        writer.finish_input()
    except BaseException:
        writer.abort()
        raise
    if writer.num_samples == 0:
        raise DataError(
            f"{len(tokens)} tokens are fewer than one sample of seq_len+1 = {seq_len + 1}; "
            "lower seq_len or give more text"
        )
    return writer.write_index({"eos_id": eos_id, **meta})
