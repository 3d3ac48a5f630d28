"""The built-in corpus: the Python standard library sources of the running interpreter.

Real text that exists wherever Python does, so the no-argument training job needs no download.
The tokenizer and the tokenized train/valid arrays are cached in one directory per
(Python version, vocab size, file set); the directory appears only once complete (it is built
under a temporary name and renamed), so a killed first run never leaves a cache that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextlat_pt.data.tokenizer import (
    MODEL_FILE_NAME,
    Tokenizer,
    token_dtype,
    train_sentencepiece,
)

# Bump whenever the cache contents or the tokenizer settings change, to invalidate old caches.
FORMAT_VERSION = 1

_SKIP_DIRS = frozenset({"tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


@dataclass
class BuiltinCorpus:
    """Tokenized stdlib sources: one document per file, each followed by EOS."""

    tokenizer: Tokenizer
    train_tokens: np.ndarray
    valid_tokens: np.ndarray
    num_files: int
    num_bytes: int
    cache_path: Path | None = None


def stdlib_root() -> Path:
    """The running interpreter's standard library directory."""
    return Path(sysconfig.get_paths()["stdlib"])


def _skip_dir(name: str) -> bool:
    return name in _SKIP_DIRS or name.startswith("test")


def _read_source(path: Path) -> str | None:
    """The file's exact text (no newline translation), or None if unreadable or not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def stdlib_source_files(root: Path | None = None) -> list[Path]:
    """Sorted `*.py` files of the standard library (or of `root`), test suites excluded.

    Skips directories named `tests`/`idle_test`/`site-packages`/`dist-packages` or starting
    with `test`, and files that cannot be read as UTF-8.
    """
    root = stdlib_root() if root is None else Path(root)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _skip_dir(d)]  # prune: os.walk skips them
        for name in filenames:
            path = Path(dirpath, name)
            if name.endswith(".py") and _read_source(path) is not None:
                files.append(path)
    return sorted(files)


def _relative_name(path: Path, root: Path) -> str:
    """The name that keys the cache and the split: relative to the stdlib when inside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _hash_unit(name: str) -> float:
    """A uniform number in [0, 1) fixed by the name alone."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def validation_mask(names: list[str], valid_fraction: float) -> list[bool]:
    """Which documents go to validation: those whose name hashes below `valid_fraction`.

    A file's side depends only on its own name, so adding or removing other files never moves
    it. If no name falls below the threshold (few files), the lowest-hashing one is taken, so a
    positive fraction always gives a non-empty validation set.
    """
    units = [_hash_unit(n) for n in names]
    mask = [u < valid_fraction for u in units]
    if valid_fraction > 0 and names and not any(mask):
        mask[units.index(min(units))] = True
    return mask


def _cache_key(names: list[str], sizes: list[int], vocab_size: int, valid_fraction: float) -> str:
    h = hashlib.sha256(f"v{FORMAT_VERSION} vocab={vocab_size} valid={valid_fraction!r}\n".encode())
    for name, size in zip(names, sizes):
        h.update(f"{name}\t{size}\n".encode())
    return h.hexdigest()[:12]


def _tokenize_documents(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """All documents' ids, each followed by EOS, as one flat array of the smallest dtype."""
    docs = tokenizer.encode_batch(texts)
    out = np.empty(sum(map(len, docs)) + len(docs), dtype=token_dtype(tokenizer.vocab_size))
    pos = 0
    for ids in docs:
        out[pos : pos + len(ids)] = ids
        pos += len(ids)
        out[pos] = tokenizer.eos_id
        pos += 1
    return out


def _save_durably(path: Path, write: Callable[[object], None]) -> None:
    # fsync before the directory rename, so after a crash the renamed cache holds real data.
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _load_cache(path: Path) -> BuiltinCorpus:
    tokenizer = Tokenizer.load(path / MODEL_FILE_NAME)
    meta = json.loads((path / "meta.json").read_text())
    if meta["tokenizer_fingerprint"] != tokenizer.fingerprint:
        raise RuntimeError(
            f"built-in corpus cache {path} is inconsistent (tokenizer changed after caching); "
            "delete that directory to rebuild it"
        )
    return BuiltinCorpus(
        tokenizer=tokenizer,
        train_tokens=np.load(path / "train.npy"),
        valid_tokens=np.load(path / "valid.npy"),
        num_files=meta["num_files"],
        num_bytes=meta["num_bytes"],
        cache_path=path,
    )


def _build_cache(
    tmp: Path,
    files: list[Path],
    names: list[str],
    vocab_size: int,
    valid_fraction: float,
    log: Callable[[str], None],
) -> None:
    """Train the tokenizer and write model, arrays and meta.json into the directory `tmp`."""
    texts = [_read_source(p) for p in files]
    if any(t is None for t in texts):
        bad = next(p for p, t in zip(files, texts) if t is None)
        raise OSError(f"{bad} became unreadable while preparing the built-in corpus; retry")
    sizes = [len(t.encode("utf-8")) for t in texts]
    is_valid = validation_mask(names, valid_fraction)
    if all(is_valid):
        raise ValueError(
            f"all {len(files)} files fell in the validation split; lower valid_fraction"
        )
    train_idx = [i for i, v in enumerate(is_valid) if not v]
    valid_idx = [i for i, v in enumerate(is_valid) if v]

    # The tokenizer sees only the training documents, so validation text stays unseen.
    train_mb = sum(sizes[i] for i in train_idx) / 1e6
    log(f"training tokenizer (vocab {vocab_size}) on {len(train_idx)} files ({train_mb:.1f} MB)...")
    t0 = time.perf_counter()
    tokenizer = Tokenizer.load(train_sentencepiece([files[i] for i in train_idx], tmp, vocab_size))
    log(f"trained tokenizer in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    train_tokens = _tokenize_documents(tokenizer, [texts[i] for i in train_idx])
    valid_tokens = _tokenize_documents(tokenizer, [texts[i] for i in valid_idx])
    num_tokens = len(train_tokens) + len(valid_tokens)
    log(
        f"tokenized {num_tokens / 1e6:.1f}M tokens in {time.perf_counter() - t0:.1f} s "
        f"({sum(sizes) / num_tokens:.2f} bytes/token; {len(valid_idx)} files held out)"
    )

    _save_durably(tmp / "train.npy", lambda f: np.save(f, train_tokens))
    _save_durably(tmp / "valid.npy", lambda f: np.save(f, valid_tokens))
    meta = {
        "format_version": FORMAT_VERSION,
        "python": sys.version.split()[0],
        "stdlib": str(stdlib_root()),
        "vocab_size": vocab_size,
        "valid_fraction": valid_fraction,
        "num_files": len(files),
        "num_bytes": sum(sizes),
        "train_tokens": len(train_tokens),
        "valid_tokens": len(valid_tokens),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "valid_files": [names[i] for i in valid_idx],
    }
    _save_durably(tmp / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))


def prepare_builtin_corpus(
    cache_dir: Path,
    vocab_size: int = 4096,
    valid_fraction: float = 0.01,
    log: Callable[[str], None] = print,
) -> BuiltinCorpus:
    """The tokenized stdlib corpus, built on first use and loaded from `cache_dir` afterwards.

    The cache lives in `cache_dir/stdlib-py{major}{minor}-v{vocab_size}-{hash}`, the hash
    covering the file names and sizes, `vocab_size`, `valid_fraction` and the format version.
    Documents are split into train/valid by a hash of their path (see `validation_mask`).
    Safe to call from several processes at once: each builds privately, the first rename wins.
    """
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid_fraction={valid_fraction} must be in [0, 1)")
    root = stdlib_root()
    files = stdlib_source_files()
    if not files:
        raise FileNotFoundError(
            f"no readable *.py files under the standard library {root}; "
            "this Python install has no sources, so pass a dataset instead"
        )
    names = [_relative_name(p, root) for p in files]
    sizes = [p.stat().st_size for p in files]
    major, minor = sys.version_info[:2]
    key = _cache_key(names, sizes, vocab_size, valid_fraction)
    final = Path(cache_dir) / f"stdlib-py{major}{minor}-v{vocab_size}-{key}"

    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache may be shared by a group
        try:
            _build_cache(tmp, files, names, vocab_size, valid_fraction, log)
            os.rename(tmp, final)  # atomic: the cache is either absent or complete
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.is_dir():
                raise
            # Another process finished the same cache first; use theirs.
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    t0 = time.perf_counter()
    corpus = _load_cache(final)
    log(
        f"built-in corpus: {corpus.num_files} stdlib files, {len(corpus.train_tokens) / 1e6:.2f}M "
        f"train + {len(corpus.valid_tokens) / 1e3:.1f}k valid tokens, vocab "
        f"{corpus.tokenizer.vocab_size} (cache {final}, loaded in {time.perf_counter() - t0:.2f} s)"
    )
    return corpus


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy, in nats per token, of the empirical unigram distribution of `tokens`.

    The cross-entropy a model reaches by predicting token frequencies alone: a trained LM should
    go well below it.
    """
    tokens = np.asarray(tokens).ravel()
    if tokens.size == 0:
        raise ValueError("unigram_entropy needs at least one token")
    counts = np.bincount(tokens)
    p = counts[counts > 0] / tokens.size
    return float(-(p * np.log(p)).sum())


@dataclass
class BuiltinShards:
    """The built-in corpus as prepared datasets (the format `prepare-data` writes)."""

    tokenizer: Tokenizer
    train_dir: Path
    valid_dir: Path
    num_files: int
    train_tokens: int
    valid_tokens: int
    unigram_entropy: float


# Small shards so the default job reads across several of them, like a real one.
_BUILTIN_SHARD_SAMPLES = 4096


def prepare_builtin_shards(
    cache_dir: Path,
    vocab_size: int,
    seq_len: int,
    log: Callable[[str], None] = print,
    valid_fraction: float = 0.02,
) -> BuiltinShards:
    """The built-in corpus packed for `seq_len` into train/valid datasets, cached.

    Reuses `prepare_builtin_corpus` (tokenizer and token arrays) and writes
    `<corpus cache>/shards-seq{seq_len}/{train,valid}` once: built under a temporary name and
    renamed, so the directory is either absent or complete, and safe to call from several
    processes at once.
    """
    from nextlat_pt.data.split_writer import write_token_dataset

    corpus = prepare_builtin_corpus(cache_dir, vocab_size, valid_fraction, log)
    assert corpus.cache_path is not None
    final = corpus.cache_path / f"shards-seq{seq_len}"
    tok = corpus.tokenizer
    if not final.is_dir():
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(dir=corpus.cache_path, prefix=f".{final.name}.tmp-"))
        tmp.chmod(0o755)
        meta = {
            "vocab_size": tok.vocab_size,
            "tokenizer": {"fingerprint": tok.fingerprint, "file": MODEL_FILE_NAME,
                          "source": str(tok.model_path)},
            "sources": [{"builtin": f"stdlib {stdlib_root()}", "files": corpus.num_files,
                         "bytes": corpus.num_bytes}],
        }
        try:
            for split, tokens in (("train", corpus.train_tokens), ("valid", corpus.valid_tokens)):
                out = tmp / split
                write_token_dataset(out, tokens, tok.eos_id, seq_len, {**meta, "split": split},
                                    shard_samples=_BUILTIN_SHARD_SAMPLES, log=log)
                shutil.copyfile(tok.model_path, out / MODEL_FILE_NAME)
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.is_dir():
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        else:
            log(f"built-in corpus shards for seq_len {seq_len} written in "
                f"{time.perf_counter() - t0:.1f} s ({final})")
    return BuiltinShards(
        tokenizer=tok,
        train_dir=final / "train",
        valid_dir=final / "valid",
        num_files=corpus.num_files,
        train_tokens=len(corpus.train_tokens),
        valid_tokens=len(corpus.valid_tokens),
        unigram_entropy=unigram_entropy(corpus.train_tokens),
    )
