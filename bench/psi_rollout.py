"""ψ's rollout, forward + backward: the fused first layer against the concatenating one.

    python bench/psi_rollout.py [--seq 256] [--batch 8] [--hidden 256] [--horizons 1,2,4]
                                [--repeats 15] [--threads N] [--json PATH]

What is compared
----------------
One `LatentDynamics` (ψ at the default width H = 128·round(2D/128)) rolled out d steps from a
random h over random next-token embeddings, as the NextLat loss does (ĥ_{t+i} = ψ(ĥ_{t+i-1},
E(x_{t+i})), teacher-forced), then a backward from the sum of the last step:

- `fused`: the framework's path (`psi.rollout_step`): the E(x) half of the first layer and
  Σ E(x)² computed once for the sequence; per step only W1_h·(g_h ⊙ h·r) + r·P_e;
- `concatenating`: the textbook module on the same weights: per step
  fc1(RMSNorm([ĥ ; E(x)])) with the [T, B, 2D] concatenation, as ψ was computed before.

Both run interleaved round-robin in one process (warm-up first, order rotated each repeat);
the time is the process's CPU time per call (the machines are shared: wall time under load
is not the work done), medians over repeats. The outputs of the two are checked to agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from benchlib import describe_machine, interleave, machine_info, paired_ratio


def _concatenating_step(psi, hidden, next_embedding):
    """ψ as the module formula reads: concatenate, normalise, three layers."""
    x = psi.norm(torch.cat([hidden, next_embedding], dim=-1))
    x, _ = psi.fc1(x)
    x, _ = psi.fc2(F.gelu(x))
    delta, _ = psi.fc3(F.gelu(x))
    return hidden + delta


def measure(seq: int = 256, batch: int = 8, hidden: int = 256,
            horizons: tuple[int, ...] = (1, 2, 4), repeats: int = 15, warmup: int = 2,
            threads: int = 0) -> dict[str, Any]:
    """Per horizon: CPU seconds per rollout (fwd + bwd) of both variants and their ratio."""
    from nextlat_pt.convert.world import single_process_world
    from nextlat_pt.model.gpt import ModelSpec, transformer_config
    from nextlat_pt.model.psi import LatentDynamics, psi_width, rollout_step

    if threads:
        torch.set_num_threads(threads)
    spec = ModelSpec(num_layers=1, hidden_size=hidden, num_heads=max(1, hidden // 64),
                     num_query_groups=max(1, hidden // 64), ffn_hidden_size=4 * hidden,
                     vocab_size=128, max_position_embeddings=seq)
    rows = []
    with single_process_world(1234):
        torch.manual_seed(0)
        psi = LatentDynamics(transformer_config(spec), psi_width(hidden, 1.0))
        gen = torch.Generator().manual_seed(1)
        h = torch.randn(seq, batch, hidden, generator=gen).requires_grad_()
        e = torch.randn(seq, batch, hidden, generator=gen).requires_grad_()

        def rollout(fused: bool, d: int) -> torch.Tensor:
            step = rollout_step(psi, e) if fused else (
                lambda state, i: _concatenating_step(psi, state, e[i:]))
            state = h
            for i in range(1, d + 1):
                state = step(state[:-1], i)
            return state

        def timed(fused: bool, d: int):
            def run() -> float:
                start = time.process_time()
                rollout(fused, d).sum().backward()
                elapsed = time.process_time() - start
                psi.zero_grad(set_to_none=True)
                h.grad = e.grad = None
                return elapsed
            return run

        for d in horizons:
            with torch.no_grad():
                diff = (rollout(True, d) - rollout(False, d)).abs().max().item()
            times = interleave({"fused": timed(True, d), "concatenating": timed(False, d)},
                               repeats, warmup)
            fused, concat = times["fused"], times["concatenating"]
            rows.append({
                "horizon": d,
                "fused_median_s": statistics.median(fused),
                "concatenating_median_s": statistics.median(concat),
                "ratio": statistics.median(fused) / statistics.median(concat),
                "ratio_paired": paired_ratio(fused, concat),
                "max_abs_diff": diff,
                "fused_times_s": fused,
                "concatenating_times_s": concat,
            })
    return {"machine": machine_info(), "seq": seq, "batch": batch, "hidden": hidden,
            "psi_width": psi_width(hidden, 1.0), "repeats": repeats, "warmup": warmup,
            "clock": "process CPU time", "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--horizons", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    horizons = tuple(int(x) for x in args.horizons.split(","))
    result = measure(seq=args.seq, batch=args.batch, hidden=args.hidden, horizons=horizons,
                     repeats=args.repeats, threads=args.threads)
    print(f"machine: {describe_machine(result['machine'])}")
    print(f"ψ: D={result['hidden']}, H={result['psi_width']}, T={result['seq']}, "
          f"B={result['batch']}; {result['repeats']} interleaved repeats, process CPU time\n")
    print(f"{'d':>2} {'fused s':>9} {'concat s':>9} {'fused/concat':>12} {'paired':>7} "
          f"{'max |Δ|':>9}")
    for r in result["rows"]:
        print(f"{r['horizon']:>2} {r['fused_median_s']:>9.4f} "
              f"{r['concatenating_median_s']:>9.4f} {r['ratio']:>12.3f} "
              f"{r['ratio_paired']:>7.3f} {r['max_abs_diff']:>9.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
