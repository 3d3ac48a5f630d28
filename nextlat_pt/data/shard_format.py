"""The on-disk format of one shard: a plain tar file that webdataset reads, with random access.

Sample i of a dataset is two tar members sharing the key `%09d`:
- `{key}.tokens.npy`: the packed window, seq_len+1 tokens (little-endian uint16 when the
  vocabulary fits, else uint32), as a version-1.0 `.npy` file;
- `{key}.doc_starts.npy`: int32 positions j in [0, seq_len] where a document starts inside the
  window (0 when the window opens on a document's first token);
- `{key}.loss_mask.npy`, only in datasets prepared with prompts (`prepare-data --prompt-field`):
  uint8, seq_len+1 values, 1 where the token is a training target (a completion token or its
  EOS), 0 on prompt tokens.

`webdataset.WebDataset(url).decode()` yields {"tokens.npy": array, "doc_starts.npy": array}.
For exact resume and data-parallel slicing the loader does not stream: a per-shard table (the
`.idx.npy` next to the tar, like webdataset's `wids` index) gives each sample's byte offset,
length and crc32 inside its tar, and the loader reads those bytes with one `pread`. The crc
covers the tar headers too, so any damaged byte of a sample is caught; a truncated tar shows up
as a short read.

Everything is deterministic: the tar headers carry mtime 0, mode 0644 and no owner names, and
the `.npy` headers are written here rather than by numpy (whose header padding has changed
between versions), so the same samples always give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tar pads the archive to whole records, as GNU tar does
TOKENS_MEMBER = "tokens.npy"
STARTS_MEMBER = "doc_starts.npy"
MASK_MEMBER = "loss_mask.npy"
STARTS_DTYPE = np.dtype("<i4")
MASK_DTYPE = np.dtype("u1")
# One row per sample of a shard: where its bytes are in the tar and their checksum.
SAMPLE_TABLE_DTYPE = np.dtype([("offset", "<u8"), ("size", "<u4"), ("crc32", "<u4")])
MAX_SHARD_BYTES = (1 << 32) - 1  # sample offsets are uint64, but keep shards sane (< 4 GiB)

_NPY_MAGIC = b"\x93NUMPY"


def sample_key(index: int) -> str:
    """The webdataset key of sample `index`."""
    return f"{index:09d}"


def npy_header(dtype: np.dtype, length: int) -> bytes:
    """The `.npy` (format 1.0) header of a 1-D little-endian array, padded to 64 bytes."""
    descr = np.dtype(dtype).newbyteorder("<").str
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({length},), }}"
    pad = -(len(_NPY_MAGIC) + 4 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return _NPY_MAGIC + b"\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


def npy_payload(buf: memoryview | bytes, dtype: np.dtype) -> np.ndarray:
    """The data of a 1-D `.npy` file held in `buf`, as an array view (no copy)."""
    if bytes(buf[:6]) != _NPY_MAGIC:
        raise ValueError("not an .npy member")
    major = buf[6]
    if major == 1:
        start = 10 + int.from_bytes(buf[8:10], "little")
    elif major in (2, 3):
        start = 12 + int.from_bytes(buf[8:12], "little")
    else:
        raise ValueError(f".npy version {major} is not supported")
    dtype = np.dtype(dtype)
    if (len(buf) - start) % dtype.itemsize:
        raise ValueError(".npy data length is not a whole number of items")
    return np.frombuffer(buf, dtype=dtype, offset=start)


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def _member(name: str, data: bytes) -> bytes:
    return _tar_header(name, len(data)) + data + b"\0" * (-len(data) % TAR_BLOCK)


def _member_size(header: memoryview) -> int:
    field = bytes(header[124:136]).rstrip(b"\0 ")
    return int(field or b"0", 8)


def _npy_member(name: str, array: np.ndarray) -> bytes:
    return _member(name, npy_header(array.dtype, len(array)) + array.tobytes())


def encode_sample(index: int, tokens: np.ndarray, starts: np.ndarray,
                  loss_mask: np.ndarray | None = None) -> bytes:
    """The tar bytes of one sample (every member, headers and padding included)."""
    key = sample_key(index)
    tok = np.ascontiguousarray(tokens, dtype=tokens.dtype.newbyteorder("<"))
    st = np.ascontiguousarray(starts, dtype=STARTS_DTYPE)
    data = _npy_member(f"{key}.{TOKENS_MEMBER}", tok) + _npy_member(f"{key}.{STARTS_MEMBER}", st)
    if loss_mask is not None:
        mask = np.ascontiguousarray(loss_mask, dtype=MASK_DTYPE)
        data += _npy_member(f"{key}.{MASK_MEMBER}", mask)
    return data


def _members(view: memoryview, count: int) -> list[memoryview]:
    """The data of the first `count` tar members in `view`."""
    out, at = [], 0
    for _ in range(count):
        size = _member_size(view[at : at + TAR_BLOCK])
        data = view[at + TAR_BLOCK : at + TAR_BLOCK + size]
        if len(data) != size:
            raise ValueError("sample members run past the sample's bytes")
        out.append(data)
        at += TAR_BLOCK + size + (-size % TAR_BLOCK)
    return out


def decode_sample(
    buf: bytes, dtype: np.dtype, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, doc_starts) from one sample's tar bytes; ValueError if they do not parse."""
    data1, data2 = _members(memoryview(buf), 2)
    tokens = npy_payload(data1, dtype)
    starts = npy_payload(data2, STARTS_DTYPE)
    if len(tokens) != seq_len + 1:
        raise ValueError(f"sample holds {len(tokens)} tokens, expected {seq_len + 1}")
    if starts.size and (starts.min() < 0 or starts.max() > seq_len):
        raise ValueError("document start outside the window")
    return tokens, starts


def decode_masked_sample(
    buf: bytes, dtype: np.dtype, seq_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, doc_starts, loss_mask) of a sample written with a loss mask."""
    tokens, starts = decode_sample(buf, dtype, seq_len)
    mask = npy_payload(_members(memoryview(buf), 3)[2], MASK_DTYPE)
    if len(mask) != seq_len + 1:
        raise ValueError(f"sample holds {len(mask)} loss-mask values, expected {seq_len + 1}")
    return tokens, starts, mask


def doc_ids_from_starts(starts: np.ndarray, length: int) -> np.ndarray:
    """doc_ids [length]: how many documents start at or before each position, after position 0.

    Equal to "EOS tokens strictly before j" (`PackedTokenDataset`'s definition): a document
    starts right after each EOS, and a start at position 0 does not count.
    """
    marks = np.zeros(length, dtype=np.int64)
    marks[starts[starts > 0]] = 1
    return np.cumsum(marks, out=marks)


class ShardWriter:
    """Writes one shard to a temporary file; `finish` makes it appear under its final name.

    The per-sample table is written next to it (`.idx.npy`, also atomically) before the tar is
    renamed, so a tar under its final name always has its table.
    """

    def __init__(self, path: Path) -> None:
        """Start `path` (a `.tar`); nothing exists under that name until `finish`."""
        self.path = Path(path)
        self.table_path = table_path(self.path)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._file = open(self._tmp, "wb")
        self._sha = hashlib.sha256()
        self._rows: list[tuple[int, int, int]] = []
        self._size = 0

    @property
    def num_samples(self) -> int:
        """Samples written so far."""
        return len(self._rows)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._sha.update(data)
        self._size += len(data)

    def add(self, index: int, tokens: np.ndarray, starts: np.ndarray,
            loss_mask: np.ndarray | None = None) -> None:
        """Append sample `index` (its dataset-wide index, which becomes its key)."""
        data = encode_sample(index, tokens, starts, loss_mask)
        self._rows.append((self._size, len(data), zlib.crc32(data)))
        self._write(data)
        if self._size > MAX_SHARD_BYTES:
            raise ValueError(f"shard {self.path} passed 4 GiB; use fewer samples per shard")

    def finish(self) -> dict:
        """Close the archive, fsync, rename into place; returns the shard's record."""
        end = 2 * TAR_BLOCK
        end += -(self._size + end) % TAR_RECORD
        self._write(b"\0" * end)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        table = np.array(self._rows, dtype=SAMPLE_TABLE_DTYPE)
        table_bytes = _npy_structured_bytes(table)
        write_atomically(self.table_path, table_bytes)
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)
        return {
            "name": self.path.name,
            "index": self.table_path.name,
            "num_samples": len(self._rows),
            "bytes": self._size,
            "sha256": self._sha.hexdigest(),
            "index_sha256": hashlib.sha256(table_bytes).hexdigest(),
        }

    def abort(self) -> None:
        """Drop the temporary file (an interrupted shard is simply missing)."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def table_path(shard: Path) -> Path:
    """The per-sample table of a shard: `shard-000000.tar` -> `shard-000000.idx.npy`."""
    return shard.with_name(shard.name.removesuffix(".tar") + ".idx.npy")


def _npy_structured_bytes(table: np.ndarray) -> bytes:
    """The `.npy` bytes of the sample table, with a header written here (deterministic)."""
    descr = repr(table.dtype.descr)
    text = f"{{'descr': {descr}, 'fortran_order': False, 'shape': ({len(table)},), }}"
    pad = -(len(_NPY_MAGIC) + 4 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    header = _NPY_MAGIC + b"\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")
    return header + table.tobytes()


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file, fsync and rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
