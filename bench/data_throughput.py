"""Is the data pipeline ever the bottleneck? Tokenization and loader throughput vs one H100.

    python bench/data_throughput.py [--seq-len 1024] [--micro-batch 8] [--global-batch 32]
                                    [--vocab-size 32000] [--tokenizer MODEL] [--repeats 3]
                                    [--batches 100] [--workers N] [--json PATH]

`measure(...)` returns the results as a dict (bench/run_all.py calls it with the training
config's seq_len and batch).

What is measured
----------------
Real text: the Python standard library's sources on this machine (about 12 MB, the built-in
corpus's documents), written as one .jsonl file in a temporary directory. A sentencepiece BPE
tokenizer of `--vocab-size` pieces is trained on them first (not timed), unless `--tokenizer`
gives one.

1. `tokenize, 1 core`: `tokenize_batch` (what each prepare-data worker runs: sentencepiece
   encode + EOS + conversion to a uint32 array) over every document, in this process.
2. `prepare-data, N workers`: the whole command (`prepare_data`: read and parse the .jsonl,
   fingerprint, tokenize with N worker processes, pack, write tar shards, index), per second
   of wall time, then divided by N for a per-core figure.
3. `loader -> 1 rank`: `make_train_loader` over the prepared shards (seq_len, micro batch,
   global batch as given, DP = 1), training tokens (samples × seq_len) handed to the consumer
   per second, with the consumer doing nothing else: the most one rank can pull. The
   background thread reads each sample with one pread, checks its crc32, decodes it, builds
   the doc ids and stacks the micro-batches.
4. `read, no prefetch`: `ShardedDataset.get` in a loop in this thread (the raw read path).

Each is repeated `--repeats` times; the table shows the median and, beside it, the ratio to
50,000 tokens/s, what one H100 consumes training the 1.3B config (published 1B-class runs report
45–55K tokens/s/GPU in BF16). Tokenization is offline (prepare-data runs once, before training), so
its ratio says how many H100s one core keeps up with in real time; the loader's ratio is the
headroom of the online path, which must stay well above 1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
import sentencepiece

# Only light imports at the top: prepare-data's spawned workers re-import this module, and
# torch (imported by the loader) would add seconds to each worker's start.
from nextlat_pt.data import tokenize_worker
from nextlat_pt.data.builtin_corpus import stdlib_source_files
from nextlat_pt.data.dataset import open_dataset
from nextlat_pt.data.prepare import prepare_data
from nextlat_pt.data.sources import iter_lines
from nextlat_pt.data.synthetic import write_jsonl
from nextlat_pt.data.tokenizer import Tokenizer, available_cpus, train_sentencepiece_on

H100_TOKENS_PER_S = 50_000  # one H100, 1.3B config (reported: 45-55K tokens/s/GPU, bf16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--tokenizer", default=None, help="a .model file instead of training one")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=100, help="global batches per loader repeat")
    p.add_argument("--workers", type=int, default=None, help="prepare-data workers (all CPUs)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batches < 1:
        p.error("--repeats and --batches must be >= 1")
    return args


def machine_info() -> dict[str, Any]:
    """CPU model, cores and versions: what the numbers were measured on."""
    info = benchlib.machine_info()
    info.update(numpy=np.__version__, sentencepiece=sentencepiece.__version__)
    return info


def _median(values: list[float]) -> float:
    return statistics.median(values)


def bench_tokenize(model: Path, texts: list[str], repeats: int) -> tuple[float, int]:
    """Median tokens/s of tokenize_batch on one core; and the token count."""
    tokenize_worker.init_worker(model.read_bytes())
    rates, total = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        total = 0
        for lo in range(0, len(texts), 256):
            total += len(tokenize_worker.tokenize_batch(texts[lo : lo + 256])[1])
        rates.append(total / (time.perf_counter() - t0))
    return _median(rates), total


def bench_prepare(jsonl: Path, model: Path, seq_len: int, workers: int, repeats: int,
                  work: Path) -> tuple[float, Path]:
    """Median tokens/s of the whole prepare-data command (wall time, all workers)."""
    rates, out = [], work
    for r in range(repeats):
        out = work / f"prepared-{r}"
        t0 = time.perf_counter()
        summary = prepare_data([jsonl], model, seq_len, out, workers=workers, progress=False,
                               log=lambda m: None)
        rates.append(summary.tokens_tokenized / (time.perf_counter() - t0))
    return _median(rates), out


def bench_loader(data: Path, seq_len: int, global_batch: int, micro_batch: int, batches: int,
                 repeats: int) -> tuple[float, float]:
    """Median training tokens/s handed to one rank; and the share of time spent waiting."""
    from nextlat_pt.data.loader import make_train_loader

    rates, waits = [], []
    per_batch = global_batch * seq_len
    for r in range(repeats):
        with make_train_loader([(data, 1.0)], seq_len, global_batch, micro_batch,
                               dp_rank=0, dp_size=1, seed=r) as loader:
            for _ in range(3):  # warm-up: thread start, file opens, first permutation
                next(loader)
            t0 = time.perf_counter()
            wait0 = loader.stats()["data_wait_s"]
            for _ in range(batches):
                next(loader)
            elapsed = time.perf_counter() - t0
            rates.append(batches * per_batch / elapsed)
            waits.append((loader.stats()["data_wait_s"] - wait0) / elapsed)
    return _median(rates), _median(waits)


def bench_read(data: Path, seq_len: int, samples: int, repeats: int) -> float:
    """Median training tokens/s of ShardedDataset.get alone (this thread, random order)."""
    ds = open_dataset(data)
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(repeats):
        order = rng.integers(0, len(ds), size=samples)
        t0 = time.perf_counter()
        for i in order.tolist():
            ds.get(i)
        rates.append(samples * seq_len / (time.perf_counter() - t0))
    ds.close()
    return _median(rates)


def measure(*, seq_len: int = 1024, micro_batch: int = 8, global_batch: int = 32,
            vocab_size: int = 32000, tokenizer: str | Path | None = None, repeats: int = 3,
            batches: int = 100, workers: int | None = None, max_files: int | None = None,
            log=print) -> dict[str, Any]:
    """Every measurement of the module doc; rates in tokens/s (medians over `repeats`).

    `max_files` limits the corpus to the first N stdlib files (quick runs).
    """
    workers = workers or available_cpus()
    files = stdlib_source_files()
    texts = [p.read_bytes().decode("utf-8") for p in files[:max_files]]
    result: dict[str, Any] = {"machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="nextlat-data-bench-") as tmp:
        work = Path(tmp)
        jsonl = write_jsonl(work / "stdlib.jsonl", texts)
        if tokenizer:
            model = Path(tokenizer)
        else:
            t0 = time.perf_counter()
            model = train_sentencepiece_on(lambda: iter_lines(iter(texts)), work / "tok",
                                           vocab_size, input_sentence_size=300_000)
            log(f"trained a BPE tokenizer, vocab {vocab_size}, in "
                f"{time.perf_counter() - t0:.1f} s")
        tok = Tokenizer.load(model)
        mb = sum(len(t.encode()) for t in texts) / 1e6
        log(f"corpus: {len(texts)} stdlib files, {mb:.1f} MB; tokenizer vocab "
            f"{tok.vocab_size}; seq_len {seq_len}, micro batch {micro_batch}, "
            f"global batch {global_batch}, {repeats} repeats (medians)")

        tok_rate, num_tokens = bench_tokenize(model, texts, repeats)
        prep_rate, prepared = bench_prepare(jsonl, model, seq_len, workers, repeats, work)
        load_rate, wait_share = bench_loader(prepared, seq_len, global_batch, micro_batch,
                                             batches, repeats)
        read_rate = bench_read(prepared, seq_len, 2000, repeats)
    result.update({
        "corpus_files": len(texts), "corpus_mb": mb, "vocab_size": tok.vocab_size,
        "seq_len": seq_len, "micro_batch": micro_batch, "global_batch": global_batch,
        "workers": workers, "repeats": repeats, "tokens": num_tokens,
        "tokenize_per_core": tok_rate, "prepare_wall": prep_rate,
        "prepare_per_core": prep_rate / workers, "loader": load_rate, "read": read_rate,
        "loader_wait_share": wait_share, "h100_tokens_per_s": H100_TOKENS_PER_S,
    })
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine_info().items()))
    r = measure(seq_len=args.seq_len, micro_batch=args.micro_batch,
                global_batch=args.global_batch, vocab_size=args.vocab_size,
                tokenizer=args.tokenizer, repeats=args.repeats, batches=args.batches,
                workers=args.workers)
    workers = r["workers"]
    rows = [
        ("tokenize, 1 core", r["tokenize_per_core"], "offline"),
        (f"prepare-data, {workers} workers (wall)", r["prepare_wall"], "offline"),
        ("prepare-data, per core", r["prepare_per_core"], "offline"),
        ("loader -> 1 rank (prefetch thread)", r["loader"], "online"),
        ("read, no prefetch (1 thread)", r["read"], "online"),
    ]
    print()
    print(f"{'':40s} {'tokens/s':>12s} {'÷ 50K (1 H100, 1.3B)':>22s}")
    for name, rate, _ in rows:
        print(f"{name:40s} {rate:12,.0f} {rate / H100_TOKENS_PER_S:21.1f}x")
    print(f"\n{r['tokens']:,} tokens; the loader's consumer waited {r['loader_wait_share']:.0%} "
          "of the time (it does nothing else: the data path is the only work).")
    load_rate = r["loader"]
    verdict = "never the bottleneck" if load_rate > 10 * H100_TOKENS_PER_S else "TOO SLOW"
    print(f"loader: {load_rate / H100_TOKENS_PER_S:.0f}x what one H100 consumes -> {verdict}")
    results = dict(r, command=command)
    results.update({name: rate for name, rate, _ in rows})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
