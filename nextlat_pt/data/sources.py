"""Raw text inputs: which files a command line names, their fingerprints, and their documents.

Formats, chosen by the file name: `.txt` (text) and `.jsonl`/`.ndjson` (one JSON object per
line, the document in a string field, `text` by default), each optionally compressed as `.gz`
or `.zst`. A text file is one document by default (like a source file); `txt_split="line"`
makes each line a document and `"paragraph"` splits at blank lines. Text is decoded as UTF-8
with bad bytes replaced (U+FFFD) rather than aborting a long run, and without newline
translation, so "\\r\\n" reaches the tokenizer as written. Empty documents are skipped.

With a prompt field (`prompt_field`, JSONL only) a document is a (prompt, completion) pair: the
record's prompt field and its text field. Its tokens are the prompt's then the completion's,
and training computes the loss on the completion only (see `prepare.py`).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO, Union

from nextlat_pt.data.errors import DataError

TXT_SPLITS = ("file", "line", "paragraph")
SUPPORTED = ".txt, .jsonl or .ndjson, each optionally compressed as .gz or .zst"
_GLOB_CHARS = frozenset("*?[")
# A document: its text, or (prompt, completion) when the reader has a prompt field.
Document = Union[str, tuple[str, str]]


def document_text(doc: Document) -> str:
    """The whole text of a document (prompt and completion joined)."""
    return doc if isinstance(doc, str) else doc[0] + doc[1]


def input_format(path: Path) -> tuple[str, str]:
    """(format, compression) of a file from its name: ("txt" | "jsonl", "" | "gz" | "zst")."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = ""
    if suffixes and suffixes[-1] in (".gz", ".zst"):
        compression = suffixes.pop()[1:]
    if suffixes and suffixes[-1] == ".txt":
        return "txt", compression
    if suffixes and suffixes[-1] in (".jsonl", ".ndjson"):
        return "jsonl", compression
    raise DataError(
        f"input {path} has an unsupported format; expected {SUPPORTED} "
        "(rename or convert the file)"
    )


def _is_supported(path: Path) -> bool:
    try:
        input_format(path)
    except DataError:
        return False
    return True


def expand_inputs(patterns: Sequence[str | Path]) -> list[Path]:
    """The files that `patterns` name, in the order given; each glob's matches sorted.

    A directory stands for every supported file below it (sorted). A pattern that matches
    nothing, a missing file and a file of an unsupported format are errors: a typo in a long
    input list should not silently drop data. The same file named twice is kept once.
    """
    if not patterns:
        raise DataError("no inputs given; pass --input FILE_OR_GLOB ...")
    files: list[Path] = []
    for pattern in map(str, patterns):
        if _GLOB_CHARS & set(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            matches = [m for m in matches if os.path.isfile(m)]
            if not matches:
                raise DataError(f"no files match {pattern!r}; check the pattern and quote it")
            files.extend(Path(m) for m in matches)
        elif os.path.isdir(pattern):
            found = sorted(
                p for p in Path(pattern).rglob("*") if p.is_file() and _is_supported(p)
            )
            if not found:
                raise DataError(f"directory {pattern} holds no {SUPPORTED} files")
            files.extend(found)
        elif os.path.isfile(pattern):
            files.append(Path(pattern))
        else:
            raise DataError(f"input {pattern} not found; fix the path or drop it")
    unique: list[Path] = []
    seen: set[Path] = set()
    for path in files:
        input_format(path)  # refuse unknown formats before any work starts
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of the file's bytes (as stored, compressed or not)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as err:
        raise DataError(f"cannot read input {path}: {err.strerror or err}; fix its permissions "
                        "or drop it") from None
    return h.hexdigest()


def describe_sources(paths: Sequence[Path]) -> list[dict]:
    """For each input: its absolute path, size and content sha256 (the recorded source list)."""
    return [
        {"path": str(Path(p).resolve()), "bytes": Path(p).stat().st_size, "sha256": file_sha256(p)}
        for p in paths
    ]


class _ZstdStream(io.RawIOBase):
    """Decompresses concatenated zstd frames; a stream cut inside a frame raises EOFError.

    (zstandard's own stream_reader ends quietly at a truncation, which would drop the tail of
    a damaged file without a word.)
    """

    def __init__(self, raw: io.BufferedReader) -> None:
        import zstandard

        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._out = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            data = self._raw.read(1 << 20)
            if not data:
                if self._in_frame:
                    raise EOFError("zstd stream ended in the middle of a frame (truncated)")
                return 0
            while data:
                self._in_frame = True
                self._out += self._obj.decompress(data)
                if not self._obj.eof:
                    break
                data = self._obj.unused_data  # the next frame starts here
                self._obj = self._dctx.decompressobj()
                self._in_frame = False
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        del self._out[:n]
        return n


def _zstd_reader(raw: io.BufferedReader) -> io.BufferedReader:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        raise DataError(
            f"{raw.name} is zstd-compressed but the zstandard package is missing; "
            "pip install zstandard"
        ) from None
    return io.BufferedReader(_ZstdStream(raw), buffer_size=1 << 20)


@contextmanager
def open_text(path: Path) -> Iterator[TextIO]:
    """The decoded text of an input, decompressed on the fly (see the module docstring)."""
    _, compression = input_format(path)
    try:
        raw = open(path, "rb")
    except OSError as err:
        raise DataError(f"cannot read input {path}: {err.strerror or err}; fix its permissions "
                        "or drop it") from None
    try:
        if compression == "gz":
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif compression == "zst":
            stream = _zstd_reader(raw)
        else:
            stream = raw
        yield io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="\n")
    finally:
        raw.close()


def _read_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


def _txt_documents(f: TextIO, split: str) -> Iterator[str]:
    if split == "file":
        yield f.read()
    elif split == "line":
        for line in f:
            yield line.removesuffix("\n")
    else:  # paragraph: blank (or whitespace-only) lines separate documents
        lines: list[str] = []
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).removesuffix("\n")
                lines = []
        if lines:
            yield "".join(lines).removesuffix("\n")


def _jsonl_documents(f: TextIO, path: Path, field: str,
                     prompt_field: str | None = None) -> Iterator[Document]:
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{lineno}: invalid JSON ({err.msg}); fix or remove that line"
            ) from None
        if not isinstance(record, dict) or field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f"{path}:{lineno}: no field {field!r} (found {keys}); pass --text-field NAME"
            )
        text = record[field]
        if not isinstance(text, str):
            raise DataError(
                f"{path}:{lineno}: field {field!r} is a {type(text).__name__}, not a string; "
                "pass the --text-field that holds the document text"
            )
        if prompt_field is None:
            yield text
            continue
        prompt = record.get(prompt_field)
        if not isinstance(prompt, str):
            found = "missing" if prompt is None else f"a {type(prompt).__name__}"
            raise DataError(f"{path}:{lineno}: prompt field {prompt_field!r} is {found}, not a "
                            "string; give every record one, or pass the right --prompt-field")
        yield prompt, text


class DocumentReader:
    """Iterates the documents of a list of inputs in order; counts them as it goes.

    Reading errors (a damaged .gz/.zst, a permission problem, bad JSON) become one-line
    `DataError`s naming the file (and line).
    """

    def __init__(
        self, paths: Sequence[Path], text_field: str = "text", txt_split: str = "file",
        prompt_field: str | None = None,
    ) -> None:
        """Check the settings; nothing is read until iteration. With `prompt_field` every
        input must be JSONL and the documents are (prompt, completion) pairs."""
        if txt_split not in TXT_SPLITS:
            raise DataError(f"txt_split={txt_split!r} is not one of {TXT_SPLITS}")
        if not text_field:
            raise DataError("the text field name is empty; pass --text-field NAME")
        if prompt_field is not None:
            if not prompt_field:
                raise DataError("the prompt field name is empty; pass --prompt-field NAME")
            text_inputs = [p for p in paths if input_format(Path(p))[0] != "jsonl"]
            if text_inputs:
                raise DataError(f"--prompt-field needs JSONL inputs (a prompt and a text field "
                                f"per record); {text_inputs[0]} is a text file")
        self.prompt_field = prompt_field
        self.paths = [Path(p) for p in paths]
        self.text_field = text_field
        self.txt_split = txt_split
        self.documents = 0
        self.empty_skipped = 0

    def iter_file(self, path: Path) -> Iterator[Document]:
        """The non-empty documents of one file."""
        fmt, _ = input_format(path)
        errors = _read_errors()
        with open_text(path) as f:
            docs = (
                _txt_documents(f, self.txt_split)
                if fmt == "txt"
                else _jsonl_documents(f, path, self.text_field, self.prompt_field)
            )
            while True:
                try:
                    text = next(docs)
                except StopIteration:
                    return
                except errors as err:
                    raise DataError(
                        f"cannot read input {path}: {err}; the file is damaged or truncated, "
                        "replace or drop it"
                    ) from None
                if document_text(text):
                    self.documents += 1
                    yield text
                else:
                    self.empty_skipped += 1

    def __iter__(self) -> Iterator[Document]:
        for path in self.paths:
            yield from self.iter_file(path)


def iter_lines(documents: Iterator[str]) -> Iterator[str]:
    """The non-empty lines of documents: the sentences a tokenizer trains on."""
    for doc in documents:
        for line in doc.split("\n"):
            if line:
                yield line
