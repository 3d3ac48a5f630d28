"""`prepare-data`: raw text -> tokenized, packed webdataset shards with an index, resumably.

Documents are read in input order, tokenized in parallel (batches of documents spread over
worker processes, results taken back in submission order), given an EOS each, assigned to the
train or validation split by a hash of their text, and packed in document order. The output
bytes therefore depend only on the inputs and the settings (the "plan"), never on the number of
workers. See `split_writer` for the resume rules and `shard_format` for the shard layout.

With `prompt_field` (JSONL records holding a prompt and a completion) every sample also stores
a loss mask: 1 on the completion's tokens and its EOS, 0 on the prompt's, so training computes
the loss on the completions only (`train/step.py`). A document's split is decided by its whole
text, prompt included.

Output directory:
    prepare.json            the plan (settings, input and tokenizer fingerprints), written first
    train/                  a dataset: index.json, shard-NNNNNN.tar + .idx.npy, tokenizer.model
    valid/                  the same, when a validation fraction is asked for
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nextlat_pt.data.errors import DataError
from nextlat_pt.data.shard_format import write_atomically
from nextlat_pt.data.sources import (
    DocumentReader,
    describe_sources,
    document_text,
    expand_inputs,
)
from nextlat_pt.data.split_writer import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SplitWriter,
    default_shard_samples,
)
from nextlat_pt.data.tokenize_worker import Tokenizers
from nextlat_pt.data.tokenizer import MODEL_FILE_NAME, Tokenizer, available_cpus, token_dtype

PLAN_NAME = "prepare.json"
_BATCH_DOCS = 256
_BATCH_CHARS = 1 << 20


@dataclass
class PrepareSummary:
    """What a `prepare_data` run found and did."""

    output: Path
    splits: dict[str, dict] = field(default_factory=dict)
    documents_read: int = 0
    documents_tokenized: int = 0
    tokens_tokenized: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Tokenization throughput of this run (all workers together)."""
        return self.tokens_tokenized / self.seconds if self.seconds > 0 else 0.0


def resolve_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer at `path`: a train-tokenizer output directory or a `.model` file."""
    path = Path(path)
    model = path / MODEL_FILE_NAME if path.is_dir() else path
    if not model.is_file():
        raise DataError(
            f"tokenizer {path} not found (no {MODEL_FILE_NAME}); pass the --output directory of "
            "`nextlat-pt train-tokenizer` or a sentencepiece .model file"
        )
    try:
        return Tokenizer.load(model)
    except (OSError, RuntimeError) as err:
        raise DataError(f"cannot load tokenizer {model}: {err}; retrain it") from None


def in_validation(text: str, seed: int, fraction: float) -> bool:
    """Whether a document goes to the validation split: a hash of (seed, its text) < fraction.

    A document's side depends only on its text, so exact duplicates never straddle the split.
    """
    digest = hashlib.sha256(seed.to_bytes(8, "little", signed=True) + text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def _plan(
    sources: list[dict], tokenizer: Tokenizer, seq_len: int, shard_samples: int, text_field: str,
    txt_split: str, valid_fraction: float, seed: int, prompt_field: str | None = None,
) -> dict:
    """Everything the output bytes depend on (input paths excluded: moving inputs is fine)."""
    plan = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "seq_len": seq_len,
        "dtype": np.dtype(token_dtype(tokenizer.vocab_size)).name,
        "shard_samples": shard_samples,
        "text_field": text_field,
        "txt_split": txt_split,
        "valid_fraction": valid_fraction,
        "seed": seed,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "inputs_sha256": [s["sha256"] for s in sources],
    }
    if prompt_field is not None:  # absent otherwise: older outputs keep their fingerprint
        plan["prompt_field"] = prompt_field
    return plan


def _fingerprint(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _check_plan(output: Path, plan: dict) -> None:
    """Refuse to mix two plans in one directory, unless the old one left nothing to keep."""
    path = output / PLAN_NAME
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))["plan"]
    except (json.JSONDecodeError, KeyError):
        old = {}
    if old == plan:
        return
    has_shards = any(any((output / s).glob("shard-*.tar")) for s in ("train", "valid"))
    if not has_shards:
        return  # an earlier attempt failed before writing any shard: start over
    changed = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
    what = ", ".join("inputs" if k == "inputs_sha256" else k for k in changed)
    raise DataError(
        f"{output} already holds data prepared from other inputs or settings (changed: {what}); "
        "choose a new --output or delete that directory"
    )


def _batches(
    reader: DocumentReader, writers: dict[str, SplitWriter], valid_fraction: float, seed: int,
) -> Iterator[tuple[list[tuple[int, str]], list[str]]]:
    """Batches of (doc index, split) tags and texts, for documents some split still needs."""
    first = min(w.start_doc for w in writers.values() if not w.done)
    tags: list[tuple[int, str]] = []
    texts: list = []
    chars = 0
    for g, doc in enumerate(reader):
        if g < first:
            continue
        text = document_text(doc)
        split = "valid" if valid_fraction and in_validation(text, seed, valid_fraction) else "train"
        writer = writers[split]
        if writer.done or g < writer.start_doc:
            if all(w.done for w in writers.values()):
                break
            continue
        tags.append((g, split))
        texts.append(doc)
        chars += len(text)
        if len(texts) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
            yield tags, texts
            tags, texts, chars = [], [], 0
    if texts:
        yield tags, texts


def _progress_bar(enabled: bool | None):
    from tqdm import tqdm

    return tqdm(desc="tokenizing", unit=" docs", file=sys.stderr,
                disable=None if enabled is None else not enabled,  # None: only on a terminal
                dynamic_ncols=True, mininterval=0.5)


def prepare_data(
    inputs: Sequence[str | Path],
    tokenizer: str | Path,
    seq_len: int,
    output: str | Path,
    *,
    text_field: str = "text",
    txt_split: str = "file",
    workers: int | None = None,
    valid_fraction: float = 0.0,
    shard_samples: int = 0,
    seed: int = 0,
    prompt_field: str | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> PrepareSummary:
    """Tokenize, pack and shard `inputs` into `output` (see the module docstring).

    `shard_samples=0` picks shards of about 256 MB. `workers` defaults to every CPU this
    process may use. `progress=None` shows the bar only on a terminal. Re-running with the same
    arguments finishes an interrupted run, writing only the missing shards, and checks (and
    repairs) a finished one. `prompt_field`: JSONL records are (prompt, completion) pairs and
    the samples carry a loss mask on the completions (see the module docstring).
    """
    t_start = time.perf_counter()
    if seq_len < 1:
        raise DataError(f"--seq-len {seq_len} must be positive")
    if not 0 <= valid_fraction < 1:
        raise DataError(f"--valid-fraction {valid_fraction} must be in [0, 1)")
    if shard_samples < 0:
        raise DataError(f"--shard-samples {shard_samples} must be positive (0: automatic)")
    workers = available_cpus() if workers is None else workers
    if workers < 1:
        raise DataError(f"--workers {workers} must be at least 1")
    output = Path(output)
    tok = resolve_tokenizer(tokenizer)
    dtype = np.dtype(token_dtype(tok.vocab_size))
    files = expand_inputs(inputs)
    reader = DocumentReader(files, text_field, txt_split, prompt_field)  # checks the settings

    t0 = time.perf_counter()
    sources = describe_sources(files)
    total_mb = sum(s["bytes"] for s in sources) / 1e6
    log(f"{len(files)} input file(s), {total_mb:.1f} MB, fingerprinted in "
        f"{time.perf_counter() - t0:.1f} s")
    shard_samples = shard_samples or default_shard_samples(seq_len, dtype)
    plan = _plan(sources, tok, seq_len, shard_samples, text_field, txt_split, valid_fraction,
                 seed, prompt_field)
    plan_fp = _fingerprint(plan)
    splits = ["train", "valid"] if valid_fraction > 0 else ["train"]

    output.mkdir(parents=True, exist_ok=True)
    _check_plan(output, plan)
    plan_record = {"plan": plan, "plan_fingerprint": plan_fp, "sources": sources,
                   "tokenizer": str(tok.model_path.resolve())}
    write_atomically(output / PLAN_NAME, (json.dumps(plan_record, indent=1) + "\n").encode())

    writers = {
        s: SplitWriter(output / s, seq_len, dtype, shard_samples, plan_fp, log,
                       with_mask=prompt_field is not None) for s in splits
    }
    model_bytes = tok.model_path.read_bytes()
    for s in splits:  # each dataset directory carries its tokenizer
        target = output / s / MODEL_FILE_NAME
        if not target.is_file() or target.read_bytes() != model_bytes:
            write_atomically(target, model_bytes)

    summary = PrepareSummary(output=output)
    if all(w.done for w in writers.values()):
        log(f"{output}: every shard is present and verified; nothing to do")
    else:
        _tokenize_and_pack(reader, writers, tok, workers, valid_fraction, seed, progress,
                           summary)
        summary.documents_read = reader.documents
        if reader.documents == 0:
            raise DataError(
                f"the {len(files)} input file(s) hold no documents (all empty"
                + (f", or no {text_field!r} fields" if text_field else "") + "); give text"
            )

    for s, w in writers.items():
        if w.num_samples == 0:
            tokens = w.end["num_tokens"] if w.end else 0
            hint = ("raise --valid-fraction" if s == "valid"
                    else "lower --seq-len or give more text")
            raise DataError(
                f"the {s} split has {tokens} tokens, fewer than one sample of seq_len+1 = "
                f"{seq_len + 1}; {hint}"
            )
    meta = {
        "eos_id": tok.eos_id,
        "vocab_size": tok.vocab_size,
        "tokenizer": {"fingerprint": tok.fingerprint, "file": MODEL_FILE_NAME,
                      "source": plan_record["tokenizer"]},
        "sources": sources,
        "text_field": text_field,
        "txt_split": txt_split,
        "valid_fraction": valid_fraction,
        "seed": seed,
    }
    for s, w in writers.items():
        w.write_index({**meta, "split": s})
        summary.splits[s] = {
            "samples": w.end["num_samples"],
            "tokens": w.end["num_tokens"],
            "documents": w.end["num_documents"],
            "shards": w.end["num_shards"],
            "written": w.shards_written,
            "kept": w.shards_kept,
            "path": str(w.dir),
        }
    summary.seconds = time.perf_counter() - t_start
    return summary


def _tokenize_and_pack(
    reader: DocumentReader, writers: dict[str, SplitWriter], tok: Tokenizer, workers: int,
    valid_fraction: float, seed: int, progress: bool | None, summary: PrepareSummary,
) -> None:
    """The main loop: batches out to the workers, results back in order into the packers."""
    pool = Tokenizers(tok.model_path.read_bytes(), workers)
    bar = _progress_bar(progress)
    t0 = time.perf_counter()
    try:
        batches = pool.map(_batches(reader, writers, valid_fraction, seed))
        for tags, lengths, tokens, prompt_lengths in batches:
            ends = np.cumsum(lengths)
            per_split: dict[str, list[tuple]] = {s: [] for s in writers}
            for (g, split), end, n, p in zip(tags, ends.tolist(), lengths.tolist(),
                                              prompt_lengths.tolist()):
                doc = (g, tokens[end - n : end])
                if reader.prompt_field is not None:  # the completion and its EOS are targets
                    doc += (np.arange(n) >= p,)
                per_split[split].append(doc)
            for split, docs in per_split.items():
                if docs:
                    writers[split].add(docs)
            summary.documents_tokenized += len(tags)
            summary.tokens_tokenized += len(tokens)
            bar.update(len(tags))
            elapsed = time.perf_counter() - t0
            bar.set_postfix_str(f"{summary.tokens_tokenized / max(elapsed, 1e-9):,.0f} tok/s",
                                refresh=False)
        for w in writers.values():
            w.finish_input()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
        pool.close()
