"""Peak memory of a training rank against the analytic estimate (`nextlat_pt/memory.py`).

    python bench/memory_peak.py [--horizons 0,1] [--steps 3] [--threads N] [--json PATH]
                                [section.key=value ...]

Each configuration (NTP = horizon 0, NextLat d) runs in a **fresh subprocess** (this script
with `--child`), so that one configuration's allocations, allocator caches and high-water
mark never leak into the next. The child imports everything, starts the one-process world,
then records its baseline, builds the variant exactly as the trainer does
(`build_training`: model, AdamW, the local or DeepSpeed engine) and runs `--steps` training
steps on a random batch (`nextlat_overhead.train_step`).

What is measured
----------------
- CPU: the process's peak resident set (VmHWM, the kernel's exact high-water mark, reset
  to the current RSS just before the build through /proc/self/clear_refs: a child inherits
  its parent's mark) minus the resident set just before the model is built (the Python interpreter,
  torch, megatron, DeepSpeed, the process group: about 0.6-0.8 GB that any training process
  has). It therefore includes everything the step allocates: weights, gradients, the
  optimizer's moments and ZeRO's flat fp32 partition, activations and autograd temporaries,
  the logits and loss buffers, DeepSpeed/megatron buffers, the batch. glibc's mmap
  threshold is pinned at 64 KiB in the child (MALLOC_MMAP_THRESHOLD_), so freed tensors go
  back to the OS and the peak follows live memory rather than the allocator's cache.
- CUDA: `torch.cuda.max_memory_allocated()` (tensors only: neither the allocator's cached
  blocks nor the CUDA context).

What the estimate includes (see nextlat_pt/memory.py): weights, gradients, AdamW's two
moments (plus the fp32 copy DeepSpeed keeps; none on the local engine), the activations our
layers save for backward counted tensor by tensor plus one layer's gradients in backward,
ψ's per rollout step, and the fp32 logits plus the KL's chunk buffers. It ignores allocator
overhead and the process's fixed buffers (about 20 MiB here, which dominate a tiny model).

ratio = measured / estimate: > 1 means the estimate is short (temporaries the formula does not
model), < 1 that it is conservative.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MARK = "MEMORY_RESULT "
HERE = Path(__file__).resolve().parent


def rss_bytes() -> int:
    """The current resident set of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset this process's resident high-water mark to its current RSS (Linux >= 4.0).

    Needed because a child inherits its parent's mark through fork + exec: started from a
    large process (run_all), ru_maxrss would begin at the parent's resident set.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The resident high-water mark (VmHWM; ru_maxrss where /proc has none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(horizon: int, steps: int, overrides: list[str], seed: int) -> dict[str, Any]:
    """Build one variant, run `steps` steps, return the measured and estimated bytes."""
    import gc

    import torch
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from nextlat_overhead import build_variant, random_batch, train_step

    from nextlat_pt.config import resolved_grad_accum_dtype
    from nextlat_pt.memory import estimate_memory
    from nextlat_pt.parallel import distributed

    distributed.initialize(1, 1, seed=seed)
    device = distributed.device()
    cuda = device.type == "cuda"
    gc.collect()
    reset = True
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        reset = reset_peak_rss()
        base = rss_bytes()
    base_peak = torch.cuda.max_memory_allocated(device) if cuda else peak_rss_bytes()

    def used(peak: bool) -> int:
        if cuda:
            return (torch.cuda.max_memory_allocated(device) if peak
                    else torch.cuda.memory_allocated(device)) - base
        return (peak_rss_bytes() if peak else rss_bytes()) - base

    name = "NTP" if horizon == 0 else f"NextLat d={horizon}"
    variant = build_variant(name, horizon, overrides, device, plain=False)
    after_build = used(peak=False)
    batches = random_batch(variant.cfg, seed, device)
    forward_backward = get_forward_backward_func()
    for _ in range(steps):
        train_step(variant, batches, forward_backward, device)
    peak = used(peak=True)

    cfg, spec = variant.cfg, variant.model.spec
    estimate = estimate_memory(
        spec, cfg.model.seq_len, cfg.train.micro_batch_size, dp=1,
        zero_stage=cfg.parallel.zero_stage, horizon=horizon if cfg.uses_psi else 0,
        optimizer=cfg.train.optimizer, bf16=spec.params_dtype == torch.bfloat16,
        kl_chunk_tokens=cfg.nextlat.kl_chunk_tokens,
        grad_accum_dtype=resolved_grad_accum_dtype(cfg))
    distributed.destroy()
    return {
        "variant": name,
        "horizon": horizon,
        "device": str(device),
        "measure": "max_memory_allocated" if cuda else "peak RSS - RSS before the build",
        "baseline_bytes": base,
        # Without a reset the high-water mark may start above the baseline (the imports', or
        # the parent's): a step peak below it cannot be seen, the measurement is then an
        # upper bound.
        "peak_reset": reset,
        "baseline_peak_above_bytes": max(base_peak - base, 0),
        "after_build_bytes": after_build,
        "peak_bytes": peak,
        "estimate_bytes": estimate.total,
        "estimate": {"weights": estimate.weights, "gradients": estimate.gradients,
                     "optimizer": estimate.optimizer, "activations": estimate.activations,
                     "logits": estimate.logits},
        "ratio": peak / estimate.total,
        "steps": steps,
        "losses": variant.losses,
    }


def run_child(horizon: int, steps: int, overrides: Sequence[str], seed: int,
              threads: int, timeout: float = 900) -> dict[str, Any]:
    """`child` in a fresh interpreter; returns its result (RuntimeError on failure)."""
    cmd = [sys.executable, str(HERE / "memory_peak.py"), "--child", "--horizons", str(horizon),
           "--steps", str(steps), "--seed", str(seed), "--threads", str(threads),
           *overrides]
    # glibc returns freed blocks above 64 KiB to the OS at once (as bench/kl_memory.py does):
    # the resident set then follows live tensors, as CUDA's allocated-bytes counter does,
    # rather than what the allocator happens to keep mapped.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"memory child for horizon {horizon} failed (exit {proc.returncode}): "
                       f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")


def measure(overrides: Sequence[str] = (), *, horizons: Sequence[int] = (0, 1),
            steps: int = 3, seed: int = 1234, threads: int = 0) -> dict[str, Any]:
    """Every horizon in its own subprocess, one after the other."""
    return {"rows": [run_child(h, steps, overrides, seed, threads) for h in horizons],
            "overrides": list(overrides)}


def print_rows(rows: list[dict[str, Any]]) -> None:
    mib = 1024 ** 2
    print(f"{'variant':<12} {'peak MiB':>9} {'estimate MiB':>12} {'ratio':>6} "
          f"{'after build MiB':>15}")
    for r in rows:
        print(f"{r['variant']:<12} {r['peak_bytes'] / mib:>9.1f} "
              f"{r['estimate_bytes'] / mib:>12.1f} {r['ratio']:>6.2f} "
              f"{r['after_build_bytes'] / mib:>15.1f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides (section.key=value)")
    parser.add_argument("--horizons", default="0,1",
                        help="comma-separated: 0 is NTP, d >= 1 NextLat d (default 0,1)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        horizons = [int(h) for h in args.horizons.split(",")]
    except ValueError:
        parser.error(f"--horizons {args.horizons!r}: expected integers like 0,1,2")
    if args.child:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        result = child(horizons[0], args.steps, args.overrides, args.seed)
        print(MARK + json.dumps(result), flush=True)
        return 0
    result = measure(args.overrides, horizons=horizons, steps=args.steps, seed=args.seed,
                     threads=args.threads)
    print_rows(result["rows"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
