"""ψ's rollout, forward + backward: the fused first layer against the concatenating one.

    python bench/psi_rollout.py [--seq 256] [--batch 8] [--hidden 256] [--width H]
                                [--horizons 1,2,4] [--repeats 15] [--threads N]
                                [--compile] [--json PATH]

What is compared
----------------
One `LatentDynamics` (ψ at width H, by default 128·round(2D/128)) rolled out d steps from a
random h over random next-token embeddings, as the NextLat loss does (ĥ_{t+i} = ψ(ĥ_{t+i-1},
E(x_{t+i})), teacher-forced), then a backward from the sum of the last step:

- `fused`: the framework's path for d > 1 (`psi.rollout_step`): the E(x) half of the first
  layer and Σ E(x)² computed once for the sequence; per step only W1_h·(g_h ⊙ h·r) + r·P_e
  (timed at d = 1 too, which is why the framework keeps the concatenating form there);
- `concatenating`: the module's own forward (what d = 1 runs): per step
  fc1(RMSNorm([ĥ ; E(x)])) with the [T, B, 2D] concatenation;
- `fused+compile` (with `--compile`): the fused step under `torch.compile` (the warm-up
  pays the compilation). On these CPUs it did not pay: the same time as eager after ~1 min
  of compiling, so the framework runs ψ eagerly; `bench/gpu/check_gpu.py` measures it on a
  GPU.

All run interleaved round-robin in one process (warm-up first, order rotated each repeat),
medians over repeats. On CPU the time is the process's CPU time per call (the machines are
shared: wall time under load is not the work done); on CUDA, wall time between device
synchronisations (`measure(device=..., dtype=torch.bfloat16)`). The outputs are checked to
agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch
from benchlib import describe_machine, interleave, machine_info, paired_ratio


def measure(seq: int = 256, batch: int = 8, hidden: int = 256, width: int | None = None,
            horizons: tuple[int, ...] = (1, 2, 4), repeats: int = 15, warmup: int = 2,
            threads: int = 0, compile: bool = False, device: str = "cpu",
            dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Per horizon: seconds per rollout (fwd + bwd) of each variant and the ratios to
    `concatenating`."""
    from nextlat_pt.convert.world import single_process_world
    from nextlat_pt.model.gpt import ModelSpec, transformer_config
    from nextlat_pt.model.psi import LatentDynamics, rollout_step
    from nextlat_pt.model.shape import psi_width

    if threads:
        torch.set_num_threads(threads)
    width = width or psi_width(hidden, 1.0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    spec = ModelSpec(num_layers=1, hidden_size=hidden, num_heads=max(1, hidden // 64),
                     num_query_groups=max(1, hidden // 64), ffn_hidden_size=4 * hidden,
                     vocab_size=128, max_position_embeddings=seq, params_dtype=dtype)
    rows = []
    with single_process_world(1234):
        torch.manual_seed(0)
        psi = LatentDynamics(transformer_config(spec), width).to(dev)
        gen = torch.Generator().manual_seed(1)
        h = torch.randn(seq, batch, hidden, generator=gen).to(dev, dtype).requires_grad_()
        e = torch.randn(seq, batch, hidden, generator=gen).to(dev, dtype).requires_grad_()
        compiled_step = torch.compile(psi.step) if compile else None

        def rollout(variant: str, d: int) -> torch.Tensor:
            if variant == "concatenating":
                step = lambda state, i: psi(state, e[i:])  # noqa: E731 - the module's forward
            elif variant == "fused":
                step = rollout_step(psi, e, horizon=2)  # the shared-embedding path at any d
            else:  # fused+compile: the same split, the step compiled
                inputs = psi.embed(e[1:])
                step = lambda state, i: compiled_step(state, inputs.sliced(i - 1))  # noqa: E731
            state = h
            for i in range(1, d + 1):
                state = step(state[:-1], i)
            return state

        def clock() -> float:
            if cuda:
                torch.cuda.synchronize(dev)
                return time.perf_counter()
            return time.process_time()

        def timed(variant: str, d: int):
            def run() -> float:
                start = clock()
                rollout(variant, d).float().sum().backward()
                elapsed = clock() - start
                psi.zero_grad(set_to_none=True)
                h.grad = e.grad = None
                return elapsed
            return run

        variants = ["fused", "concatenating"] + (["fused+compile"] if compile else [])
        for d in horizons:
            with torch.no_grad():
                reference = rollout("concatenating", d)
                diff = max((rollout(v, d) - reference).abs().max().item()
                           for v in variants if v != "concatenating")
            times = interleave({v: timed(v, d) for v in variants}, repeats, warmup)
            concat = times["concatenating"]
            row: dict[str, Any] = {"horizon": d, "max_abs_diff": diff,
                                   "concatenating_median_s": statistics.median(concat),
                                   "concatenating_times_s": concat}
            for v in variants:
                if v == "concatenating":
                    continue
                key = v.replace("+", "_")
                row[f"{key}_median_s"] = statistics.median(times[v])
                row[f"{key}_times_s"] = times[v]
                row["ratio" if v == "fused" else f"ratio_{key}"] = (
                    statistics.median(times[v]) / statistics.median(concat))
                row["ratio_paired" if v == "fused" else f"ratio_paired_{key}"] = (
                    paired_ratio(times[v], concat))
            rows.append(row)
    return {"machine": machine_info(), "seq": seq, "batch": batch, "hidden": hidden,
            "psi_width": width, "dtype": str(dtype), "device": str(dev),
            "repeats": repeats, "warmup": warmup,
            "clock": "wall time, synchronised" if cuda else "process CPU time", "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--width", type=int, default=None, help="ψ width (default 2D rule)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the fused step under torch.compile")
    parser.add_argument("--horizons", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    horizons = tuple(int(x) for x in args.horizons.split(","))
    result = measure(seq=args.seq, batch=args.batch, hidden=args.hidden, width=args.width,
                     horizons=horizons, repeats=args.repeats, threads=args.threads,
                     compile=args.compile)
    print(f"machine: {describe_machine(result['machine'])}")
    print(f"ψ: D={result['hidden']}, H={result['psi_width']}, T={result['seq']}, "
          f"B={result['batch']}; {result['repeats']} interleaved repeats, {result['clock']}\n")
    print(f"{'d':>2} {'fused s':>9} {'concat s':>9} {'fused/concat':>12} {'paired':>7} "
          f"{'max |Δ|':>9}")
    for r in result["rows"]:
        compiled = (f"  compiled/concat {r['ratio_paired_fused_compile']:.3f}"
                    if "ratio_paired_fused_compile" in r else "")
        print(f"{r['horizon']:>2} {r['fused_median_s']:>9.4f} "
              f"{r['concatenating_median_s']:>9.4f} {r['ratio']:>12.3f} "
              f"{r['ratio_paired']:>7.3f} {r['max_abs_diff']:>9.1e}{compiled}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
