"""Checkpoint write throughput against a raw sequential write, and the time a save blocks.

    python bench/checkpoint_throughput.py [--repeats N] [section.key=value ...]

One process builds the model and DeepSpeed engine of the given config (default: 8 layers,
D=512, vocab 4096, NextLat d=1; about 40M parameters, ~480 MB per checkpoint with the AdamW
moments) and, side by side in one run, repeats:

- raw: one sequential write of as many bytes as the last checkpoint took, to the same
  directory, in 8 MB blocks (no fsync, like torch.save);
- sync save: `save_checkpoint` (dist_checkpointing weights, optimizer partition, RNG,
  trainer state, checksums, marker, rename): the loop is blocked for all of it;
- async save: `save_checkpoint(..., AsyncSaves)`: the loop is blocked only until the
  background writers are forked; the rest (writing, then the marker) is measured until
  `wait()` returns.

Medians over repeats; ratios are checkpoint throughput over raw throughput (1.0 = as fast as
the disk streams bytes; the checksums read every file back once, so < 1 is expected).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from nextlat_pt.config import load_config
from nextlat_pt.parallel import distributed
from nextlat_pt.train.build import build_training
from nextlat_pt.train.checkpoint import AsyncSaves, save_checkpoint

DEFAULTS = ["model.num_layers=8", "model.hidden_size=512", "model.num_heads=8",
            "logging.wandb=disabled", "checkpoint.keep=1"]


def _raw_write(path: Path, nbytes: int) -> float:
    block = os.urandom(8 << 20)
    start = time.perf_counter()
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ckpt_bench_", dir=args.dir))
    cfg = load_config(None, [*DEFAULTS, *args.overrides, f"checkpoint.dir={workdir}/ckpt"])
    distributed.initialize(1, 1, seed=cfg.run.seed)
    device = distributed.device()
    chunks, engine = build_training(cfg, 4096, device)
    models = [c.model for c in chunks]
    params = sum(p.numel() for m in models for p in m.parameters())
    # One real step so the optimizer has its moments (the checkpoint's real size).
    seq = cfg.model.seq_len
    tokens = torch.randint(0, 4096, (cfg.train.micro_batch_size, seq + 1), device=device)
    loss, _ = engine(tokens[:, :-1], tokens[:, 1:].t().contiguous(),
                     torch.ones(seq, tokens.shape[0], device=device),
                     torch.zeros(seq, tokens.shape[0], dtype=torch.long, device=device))
    engine.backward(loss)
    engine.step()

    raw_t, sync_t, async_block, async_total, sizes = [], [], [], [], []
    step = 0
    for _ in range(args.repeats):
        step += 1
        start = time.perf_counter()
        ckpt = save_checkpoint(cfg, models, engine, step, {"step": step})
        sync_t.append(time.perf_counter() - start)
        sizes.append(_dir_bytes(ckpt))
        raw_t.append(_raw_write(workdir / "raw.bin", sizes[-1]))

        step += 1
        saves = AsyncSaves()
        start = time.perf_counter()
        save_checkpoint(cfg, models, engine, step, {"step": step}, saves)
        async_block.append(time.perf_counter() - start)
        saves.wait()
        async_total.append(time.perf_counter() - start)

    nbytes = statistics.median(sizes)
    med = statistics.median
    raw_bps = nbytes / med(raw_t)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}; disk: {workdir}")
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"model: {params / 1e6:.1f}M parameters; checkpoint {nbytes / 1e6:.0f} MB; "
          f"{args.repeats} repeats, medians")
    print(f"{'':28}{'seconds':>10}{'MB/s':>10}{'vs raw':>9}")
    rows = [("raw sequential write", med(raw_t)), ("sync save (loop blocked)", med(sync_t)),
            ("async save: loop blocked", med(async_block)),
            ("async save: until complete", med(async_total))]
    for name, seconds in rows:
        mbps = nbytes / seconds / 1e6
        print(f"{name:28}{seconds:>10.3f}{mbps:>10.0f}{(nbytes / seconds) / raw_bps:>9.2f}")
    print(f"loop blocked per save: sync {med(sync_t):.3f} s, async {med(async_block):.3f} s "
          f"({med(async_block) / med(sync_t):.2f} of sync)")
    shutil.rmtree(workdir, ignore_errors=True)
    distributed.destroy()
    return 0


if __name__ == "__main__":  # dist_checkpointing's writers re-import the main module
    sys.exit(main())
