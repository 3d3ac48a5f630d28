"""Hugging Face export time per billion parameters, against a raw write of the same bytes.

    python bench/export_throughput.py [--repeats N] [--dir DIR] [section.key=value ...]

One process trains a small BPE tokenizer on stdlib sources (untimed), builds the model of the
given config with that vocabulary (default: 8 layers, D=512, NextLat d=1, about 30M
parameters with ψ), saves one real checkpoint (`save_checkpoint`, with a trainer state naming
the tokenizer, as the trainer writes it), then, `--repeats` times, runs the whole
`export_to_hf` (checkpoint verification with checksums, tokenizer export and parity check,
weights streamed layer by layer into safetensors, ψ file, config, model card) into a fresh
folder, and, side by side, one raw sequential write of as many bytes as the export wrote.

Reported: median export seconds, seconds per 1e9 exported parameters (the Llama weights plus
ψ, in the checkpoint's dtype), and export throughput over raw write throughput. The
tokenizer export and the checksum pass are fixed costs, so at this small size the time per
billion parameters is an upper bound of what a 1B model's export takes per billion.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from benchlib import describe_machine, machine_info
from checkpoint_throughput import _dir_bytes, _raw_write

from nextlat_pt.config import load_config
from nextlat_pt.convert.to_hf import export_to_hf
from nextlat_pt.data.builtin_corpus import stdlib_source_files
from nextlat_pt.data.tokenizer import Tokenizer, train_sentencepiece
from nextlat_pt.model.gpt import count_parameters
from nextlat_pt.parallel import distributed
from nextlat_pt.train.build import build_training
from nextlat_pt.train.checkpoint import save_checkpoint

DEFAULTS = ["model.num_layers=8", "model.hidden_size=512", "model.num_heads=8",
            "logging.wandb=disabled", "checkpoint.keep=1"]


def make_checkpoint(workdir: Path, overrides: Sequence[str], vocab: int, files: int
                    ) -> tuple[Path, int]:
    """A tokenizer and one saved checkpoint of the config; returns (step dir, ψ params)."""
    sp_model = train_sentencepiece(stdlib_source_files()[:files], workdir / "tok", vocab,
                                   input_sentence_size=100_000, num_threads=1)
    tokenizer = Tokenizer.load(sp_model)
    cfg = load_config(None, [*DEFAULTS, *overrides, f"run.dir={workdir}/run"])
    distributed.initialize(1, 1, seed=cfg.run.seed)
    chunks, engine = build_training(cfg, tokenizer.vocab_size, distributed.device())
    models = [c.model for c in chunks]
    state = {"step": 1, "consumed_samples": 0, "tokens_seen": 0,
             "tokenizer": {"path": str(tokenizer.model_path),
                           "fingerprint": tokenizer.fingerprint,
                           "vocab_size": tokenizer.vocab_size}}
    ckpt = save_checkpoint(cfg, models, engine, 1, state)
    psi = sum(count_parameters(m)["psi"] for m in models)
    del engine, chunks, models
    return ckpt, psi


def measure(overrides: Sequence[str] = (), *, repeats: int = 3, vocab: int = 4096,
            tokenizer_files: int = 200, directory: Path | None = None) -> dict[str, Any]:
    """Export one checkpoint `repeats` times; medians, seconds per 1e9 parameters, ratio.

    Initialises the one-process world if needed (the caller tears it down).
    """
    workdir = Path(tempfile.mkdtemp(prefix="export_bench_", dir=directory))
    try:
        ckpt, psi_params = make_checkpoint(workdir, overrides, vocab, tokenizer_files)
        export_t, raw_t, sizes, params = [], [], [], 0
        for r in range(repeats):
            out = workdir / f"hf_{r}"
            start = time.perf_counter()
            result = export_to_hf(ckpt, out, progress=False)
            export_t.append(time.perf_counter() - start)
            params = result.num_parameters + (psi_params if result.has_psi else 0)
            sizes.append(_dir_bytes(out))
            shutil.rmtree(out)
            raw_t.append(_raw_write(workdir / "raw.bin", sizes[-1]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    med = statistics.median
    seconds, raw = med(export_t), med(raw_t)
    return {
        "disk": str(workdir.parent),
        "parameters": params,
        "export_bytes": med(sizes),
        "dtype": "float32" if not torch.cuda.is_available() else "checkpoint dtype",
        "repeats": repeats,
        "export_s": seconds,
        "raw_write_s": raw,
        "seconds_per_billion_parameters": seconds / (params / 1e9),
        "export_over_raw_throughput": raw / seconds,
        "export_times_s": export_t,
        "raw_times_s": raw_t,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=4096, help="tokenizer (and model) vocab")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    result = measure(args.overrides, repeats=args.repeats, vocab=args.vocab,
                     directory=args.dir)
    print(f"machine: {describe_machine(machine_info())}; disk: {result['disk']}")
    print(f"export of {result['parameters'] / 1e6:.1f}M parameters "
          f"({result['export_bytes'] / 1e6:.0f} MB), {args.repeats} repeats, medians:")
    print(f"  export_to_hf       {result['export_s']:8.2f} s  "
          f"({result['seconds_per_billion_parameters']:.1f} s per billion parameters)")
    print(f"  raw write, same MB {result['raw_write_s']:8.2f} s  -> export throughput / raw "
          f"{result['export_over_raw_throughput']:.2f}")
    distributed.destroy()
    return 0


if __name__ == "__main__":  # dist_checkpointing's writers re-import the main module
    sys.exit(main())
