"""Checkpoint write throughput against a raw sequential write, and the time a save blocks.

    python bench/checkpoint_throughput.py [--repeats N] [section.key=value ...]

`measure(overrides, repeats=..., directory=...)` returns the results as a dict (run_all).

One process builds the model and DeepSpeed engine of the given config (default: 8 layers,
D=512, vocab 4096, NextLat d=1; about 40M parameters, ~480 MB per checkpoint with the AdamW
moments) and, side by side in one run, repeats:

- raw: one sequential write of as many bytes as the last checkpoint took, to the same
  directory, in 8 MB blocks (no fsync, like torch.save);
- sync save: `save_checkpoint` (dist_checkpointing weights, optimizer partition, RNG,
  trainer state, checksums, marker, rename): the loop is blocked for all of it;
- async save: `save_checkpoint(..., AsyncSaves)`: the loop is blocked only until the
  background writers are forked; the rest (writing, then the marker) is measured until
  `wait()` returns;
- load: `load_checkpoint` of the asynchronous checkpoint into the same model and engine
  (weights, optimizer state, RNG).

Peak host memory: the trainer process's anonymous resident memory (RssAnon: allocations,
not the file pages a memory-mapped read maps), sampled every 5 ms while each save or load
runs, above what it held just before (the forked async writers are not counted).

Medians over repeats; ratios are checkpoint throughput over raw throughput (1.0 = as fast as
the disk streams bytes; the checksums read every file back once, so < 1 is expected).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import torch
from benchlib import describe_machine, machine_info

from nextlat_pt.config import load_config
from nextlat_pt.parallel import distributed
from nextlat_pt.train.build import build_training
from nextlat_pt.train.checkpoint import AsyncSaves, load_checkpoint, save_checkpoint

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


def _anonymous_bytes() -> int:
    """This process's anonymous resident memory (RssAnon): what it allocated, without the
    file pages a memory-mapped read brings in (page cache the kernel may drop)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return psutil.Process().memory_info().rss  # elsewhere: the whole resident set


class PeakMemory:
    """The highest anonymous resident memory of this process while the block runs, above
    what it held at its start (sampled in a thread every 5 ms)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_above = 0

    def __enter__(self) -> PeakMemory:
        self.start = _anonymous_bytes()
        self.peak = self.start
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, _anonymous_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, _anonymous_bytes())
        self.peak_above = self.peak - self.start


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(overrides: Sequence[str] = (), *, repeats: int = 5, directory: Path | None = None
            ) -> dict[str, Any]:
    """Build the model and engine, save `repeats` times each way; medians and ratios.

    Initialises the one-process world if needed (the caller tears it down).
    """
    workdir = Path(tempfile.mkdtemp(prefix="ckpt_bench_", dir=directory))
    try:
        cfg = load_config(None, [*DEFAULTS, *overrides, f"checkpoint.dir={workdir}/ckpt"])
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
        load_t, save_mem, load_mem = [], [], []
        step = 0
        for _ in range(repeats):
            step += 1
            start = time.perf_counter()
            with PeakMemory() as rss:
                ckpt = save_checkpoint(cfg, models, engine, step, {"step": step})
            sync_t.append(time.perf_counter() - start)
            save_mem.append(rss.peak_above)
            sizes.append(_dir_bytes(ckpt))
            raw_t.append(_raw_write(workdir / "raw.bin", sizes[-1]))

            step += 1
            saves = AsyncSaves()
            start = time.perf_counter()
            latest = save_checkpoint(cfg, models, engine, step, {"step": step}, saves)
            async_block.append(time.perf_counter() - start)
            saves.wait()
            async_total.append(time.perf_counter() - start)

            start = time.perf_counter()
            with PeakMemory() as rss:
                load_checkpoint(latest, cfg, models, engine)
            load_t.append(time.perf_counter() - start)
            load_mem.append(rss.peak_above)
        del engine, chunks, models
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    med = statistics.median
    nbytes = med(sizes)
    raw_bps = nbytes / med(raw_t)
    rows = []
    for name, times in (("raw sequential write", raw_t), ("sync save (loop blocked)", sync_t),
                        ("async save: loop blocked", async_block),
                        ("async save: until complete", async_total),
                        ("load (weights + optimizer)", load_t)):
        seconds = med(times)
        rows.append({"name": name, "seconds": seconds, "bytes_per_s": nbytes / seconds,
                     "vs_raw": (nbytes / seconds) / raw_bps, "times_s": times})
    return {
        "disk": str(workdir.parent),
        "parameters": params,
        "checkpoint_bytes": nbytes,
        "repeats": repeats,
        "rows": rows,
        "sync_over_raw": rows[1]["vs_raw"],
        "async_blocked_over_sync": med(async_block) / med(sync_t),
        "load_s": med(load_t),
        "peak_rss_above_save_bytes": med(save_mem),
        "peak_rss_above_load_bytes": med(load_mem),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    result = measure(args.overrides, repeats=args.repeats, directory=args.dir)
    print(f"machine: {describe_machine(machine_info())}; disk: {result['disk']}")
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"model: {result['parameters'] / 1e6:.1f}M parameters; checkpoint "
          f"{result['checkpoint_bytes'] / 1e6:.0f} MB; {args.repeats} repeats, medians")
    print(f"{'':28}{'seconds':>10}{'MB/s':>10}{'vs raw':>9}")
    for row in result["rows"]:
        print(f"{row['name']:28}{row['seconds']:>10.3f}{row['bytes_per_s'] / 1e6:>10.0f}"
              f"{row['vs_raw']:>9.2f}")
    sync_s, block_s = result["rows"][1]["seconds"], result["rows"][2]["seconds"]
    print(f"loop blocked per save: sync {sync_s:.3f} s, async {block_s:.3f} s "
          f"({result['async_blocked_over_sync']:.2f} of sync)")
    print(f"peak host memory above the start: save {result['peak_rss_above_save_bytes'] / 1e6:.0f}"
          f" MB, load {result['peak_rss_above_load_bytes'] / 1e6:.0f} MB "
          f"(checkpoint {result['checkpoint_bytes'] / 1e6:.0f} MB)")
    distributed.destroy()
    return 0


if __name__ == "__main__":  # dist_checkpointing's writers re-import the main module
    sys.exit(main())
