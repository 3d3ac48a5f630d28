"""SentencePiece tokenizer: training with settings that keep source code intact, and a wrapper.

Source code must survive encode -> decode byte for byte (newlines, indentation, tabs, trailing
spaces, any Unicode), so training uses the `identity` normalizer (the default `nmt_nfkc` turns
tabs into spaces and applies NFKC), byte fallback, no whitespace collapsing, no dummy prefix,
and "\\n" as a user-defined piece.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

MODEL_FILE_NAME = "tokenizer.model"

# Fixed ids so every model trained here agrees on the special tokens.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3

_MODEL_TYPES = ("bpe", "unigram")


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which respects Slurm/cgroup pinning)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS
        return os.cpu_count() or 1


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """Smallest unsigned dtype that holds every id of a vocabulary: uint16 up to 65536 pieces."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


class Tokenizer:
    """A sentencepiece model loaded from a `.model` file, with its content fingerprint."""

    def __init__(self, model_proto: bytes, model_path: Path) -> None:
        """Prefer `Tokenizer.load`; this takes the model bytes so the fingerprint matches them."""
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._model_path = model_path
        self._fingerprint = hashlib.sha256(model_proto).hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a sentencepiece `.model` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer model {path} not found; train one with `nextlat-pt "
                "train-tokenizer` or point to an existing .model file"
            )
        # Read once and hand the same bytes to sentencepiece, so the fingerprint always
        # describes exactly the model in use.
        return cls(path.read_bytes(), path)

    @property
    def vocab_size(self) -> int:
        """Number of pieces, special pieces included."""
        return self._sp.vocab_size()

    @property
    def eos_id(self) -> int:
        """End-of-document id."""
        return self._sp.eos_id()

    @property
    def bos_id(self) -> int:
        """Beginning-of-document id, -1 if the model has none."""
        return self._sp.bos_id()

    @property
    def pad_id(self) -> int:
        """Padding id, -1 if the model has none."""
        return self._sp.pad_id()

    @property
    def fingerprint(self) -> str:
        """sha256 hex digest of the `.model` file bytes."""
        return self._fingerprint

    @property
    def model_path(self) -> Path:
        """The `.model` file this tokenizer was loaded from."""
        return self._model_path

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS/EOS added)."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """Token ids of each text, encoded in parallel by sentencepiece's thread pool."""
        threads = available_cpus() if num_threads is None else num_threads
        return self._sp.encode(list(texts), out_type=int, num_threads=threads)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; the inverse of `encode` for any string."""
        return self._sp.decode(list(ids))

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary piece of one id (for debugging and tests)."""
        return self._sp.id_to_piece(token_id)

    def piece_to_id(self, piece: str) -> int:
        """The id of a vocabulary piece (special tokens included); the unknown id if absent."""
        return self._sp.piece_to_id(piece)

    def __repr__(self) -> str:
        return (
            f"Tokenizer({str(self._model_path)!r}, vocab_size={self.vocab_size}, "
            f"fingerprint={self._fingerprint[:12]})"
        )


def _iter_lines(files: Sequence[Path]) -> Iterator[str]:
    """Non-empty lines of the files, in order, without their "\\n".

    Only "\\n" ends a line (no universal-newline translation), so "\\r" stays in the text, as it
    does when a document is encoded. Bad UTF-8 becomes U+FFFD rather than aborting a long run.
    """
    for path in files:
        with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
            for line in f:
                line = line.removesuffix("\n")
                if line:
                    yield line


def _sample_mask(num_lines: int, sample_size: int, seed: int) -> np.ndarray | None:
    """Which lines to train on: a seeded uniform sample of `sample_size`, or None for all.

    Done here rather than by sentencepiece's own `input_sentence_size` sampling, which gave a
    different model on every run even after `set_random_generator_seed`.
    """
    if sample_size <= 0 or num_lines <= sample_size:
        return None
    mask = np.zeros(num_lines, dtype=bool)
    mask[np.random.default_rng(seed).choice(num_lines, size=sample_size, replace=False)] = True
    return mask


def _rephrase_trainer_error(err: RuntimeError, vocab_size: int) -> Exception:
    """Turn sentencepiece's internal check failures into one-line errors that say the fix."""
    msg = str(err)
    too_small = re.search(r"smaller than required_chars\. \d+ vs (\d+)", msg)
    if too_small:
        need = int(too_small.group(1))
        return ValueError(
            f"vocab_size={vocab_size} is too small for this input: with the 4 special ids, "
            f"256 byte-fallback pieces and every distinct character it needs at least {need}; "
            f"set vocab_size >= {need}"
        )
    too_big = re.search(
        r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", msg
    )
    if too_big:
        most = int(too_big.group(1))
        return ValueError(
            f"vocab_size={vocab_size} is too large for this input: it yields at most {most} "
            f"pieces; set vocab_size <= {most} or train on more text"
        )
    return RuntimeError(f"sentencepiece training failed: {msg}")


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file + rename, so readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a model file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train_sentencepiece(
    input_files: list[Path],
    output_dir: Path,
    vocab_size: int,
    model_type: str = "bpe",
    input_sentence_size: int = 200_000,
    num_threads: int | None = None,
    *,
    seed: int = 0,
) -> Path:
    """Train sentencepiece on the lines of `input_files`; return `output_dir/tokenizer.model`.

    Every non-empty line is a training sentence; if there are more than `input_sentence_size`
    (0 = no limit), a uniform sample chosen by `seed` is used. The same inputs, settings and
    `num_threads` give the same model bytes (the thread count is recorded in the model).
    The model file is replaced atomically: an interrupted run leaves any previous one intact.
    """
    input_files = [Path(p) for p in input_files]
    if not input_files:
        raise ValueError("train_sentencepiece got no input files; pass at least one text file")
    for path in input_files:
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer training input {path} not found; fix the path or drop it from the list"
            )
    return train_sentencepiece_on(
        lambda: _iter_lines(input_files),
        output_dir,
        vocab_size,
        model_type,
        input_sentence_size,
        num_threads,
        seed=seed,
        inputs_desc=f"the {len(input_files)} input file(s)",
    )


def train_sentencepiece_on(
    sentences: Callable[[], Iterable[str]],
    output_dir: Path,
    vocab_size: int,
    model_type: str = "bpe",
    input_sentence_size: int = 200_000,
    num_threads: int | None = None,
    *,
    seed: int = 0,
    control_symbols: Sequence[str] = (),
    user_defined_symbols: Sequence[str] = (),
    inputs_desc: str = "the inputs",
) -> Path:
    """Train sentencepiece on the sentences that `sentences()` yields (called twice).

    The first call counts the sentences, so an empty input fails before training and the
    sample of `input_sentence_size` is a pure function of (count, seed); the second feeds them.
    `control_symbols` are special tokens with reserved ids that encoding never produces;
    `user_defined_symbols` are pieces always cut out of the text as one token ("\\n" is one
    already). Otherwise as `train_sentencepiece`.
    """
    output_dir = Path(output_dir)
    if vocab_size < 1:
        raise ValueError(f"vocab_size={vocab_size} must be positive")
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not supported; use one of {_MODEL_TYPES}")
    _check_symbols(control_symbols, user_defined_symbols)

    num_lines = sum(1 for _ in sentences())
    if num_lines == 0:
        raise ValueError(
            f"no text to train the tokenizer on: {inputs_desc} contain no non-empty lines; "
            "give files with text"
        )
    mask = _sample_mask(num_lines, input_sentence_size, seed)
    stream = iter(sentences())
    if mask is not None:
        stream = (line for keep, line in zip(mask.tolist(), stream) if keep)

    extra = {"control_symbols": list(control_symbols)} if control_symbols else {}
    spm.set_random_generator_seed(seed)  # nothing below should draw randomness; belt and braces
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=stream,
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            character_coverage=1.0,
            byte_fallback=True,
            input_sentence_size=0,  # sampled above, deterministically
            shuffle_input_sentence=False,
            max_sentence_length=16384,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            # With a dummy prefix, "def" at the start of a training line would become "▁def",
            # while after a "\n" in a real document it is "def": train and use would disagree.
            add_dummy_prefix=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            user_defined_symbols=["\n", *user_defined_symbols],
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
            num_threads=available_cpus() if num_threads is None else num_threads,
            minloglevel=2,  # sentencepiece's per-step logging would drown the caller's
            **extra,
        )
    except RuntimeError as err:
        raise _rephrase_trainer_error(err, vocab_size) from None

    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / MODEL_FILE_NAME
    _write_atomically(path, model.getvalue())
    return path


_RESERVED_PIECES = ("<unk>", "<s>", "</s>", "<pad>", "\n")


def _check_symbols(control: Sequence[str], user: Sequence[str]) -> None:
    """Refuse special tokens sentencepiece would reject with an internal error."""
    seen: set[str] = set()
    for sym in [*control, *user]:
        if not sym:
            raise ValueError("a special token is empty; drop the empty entry")
        if sym in _RESERVED_PIECES:
            raise ValueError(f"special token {sym!r} is built in already; drop it")
        if sym in seen:
            raise ValueError(f"special token {sym!r} is given twice; list each once")
        seen.add(sym)
