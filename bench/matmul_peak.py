"""The machine's matrix-multiply throughput at the model's own GEMM shapes.

    python bench/matmul_peak.py [--repeats N] [--threads N] [--json PATH] [section.key=value ...]

A training step's matmuls are, per linear layer with weight W [out, in] and M = micro batch ×
seq_len rows: forward Y = X·Wᵀ (M×in × in×out), input gradient dX = dY·W (M×out × out×in),
weight gradient dW = dYᵀ·X (out×M × M×in), each 2·M·in·out FLOPs. The linears are the fused
QKV (D -> D + 2·g·D/n), the attention output projection (D -> D), SwiGLU's fc1 (D -> 2F) and
fc2 (F -> D), once per layer, and the LM head (D -> V padded) once. Each of these GEMMs is
timed with `torch.mm` on operands laid out as autograd hands them over (the transposes are
views, as in the real backward), in the model's parameter dtype, on the training device,
with the current torch threads: median over repeats, each sample looped for at least
`min_seconds` so short GEMMs are not dominated by the clock and Python.

Two figures:
- `peak_flops_per_s`: the fastest of these GEMMs: the matmul peak at the model's shapes, the
  denominator of "achieved training FLOP/s over peak".
- `weighted_flops_per_s`: all of one step's GEMMs (weighted by how often each runs) divided
  by their total time: what the step would achieve if everything but these GEMMs were free.
  Attention's own batched matmuls (QKᵀ, AV) are not among them (flops.py counts them).

`achieved_over_peak(flops_per_step, step_s, peak)` is the ratio the benchmark table reports.
`gemm_step` runs one step's GEMMs as a single callable, for timing beside the training steps
(bench/run_all.py: the share of a step its GEMMs alone would take).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from benchlib import describe_machine, machine_info, median_time

from nextlat_pt.model.gpt import ModelSpec, padded_vocab_size


@dataclass(frozen=True)
class Gemm:
    """One matmul of a training step: [m, k] × [k, n], run `count` times per micro-batch."""

    layer: str  # qkv, proj, fc1, fc2, head
    kind: str  # forward, input_grad, weight_grad
    m: int
    n: int
    k: int
    count: int

    @property
    def flops(self) -> float:
        """FLOPs of one call: a multiply-add is 2."""
        return 2.0 * self.m * self.n * self.k


def linear_layers(spec: ModelSpec) -> list[tuple[str, int, int, int]]:
    """(name, in features, out features, count per micro-batch) of the model's linears."""
    d, f = spec.hidden_size, spec.ffn_hidden_size
    kv = 2 * spec.num_query_groups * (d // spec.num_heads)
    vocab = padded_vocab_size(spec.vocab_size, spec.make_vocab_size_divisible_by, spec.tp)
    layers = spec.num_layers
    return [("qkv", d, d + kv, layers), ("proj", d, d, layers), ("fc1", d, 2 * f, layers),
            ("fc2", f, d, layers), ("head", d, vocab, 1)]


def gemm_shapes(spec: ModelSpec, rows: int) -> list[Gemm]:
    """The forward, input-gradient and weight-gradient GEMM of every linear, M = `rows`."""
    out = []
    for name, fan_in, fan_out, count in linear_layers(spec):
        out.append(Gemm(name, "forward", rows, fan_out, fan_in, count))
        out.append(Gemm(name, "input_grad", rows, fan_in, fan_out, count))
        out.append(Gemm(name, "weight_grad", fan_out, fan_in, rows, count))
    return out


def _operands(gemm: Gemm, device: torch.device, dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The two operands as the real step lays them out (transposes are strided views)."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    if gemm.kind == "forward":  # X [M, in] · Wᵀ, W stored [out, in]
        return rand(gemm.m, gemm.k), rand(gemm.n, gemm.k).t()
    if gemm.kind == "input_grad":  # dY [M, out] · W [out, in]
        return rand(gemm.m, gemm.k), rand(gemm.k, gemm.n)
    return rand(gemm.k, gemm.m).t(), rand(gemm.k, gemm.n)  # dYᵀ [out, M] · X [M, in]


def time_gemm(gemm: Gemm, device: torch.device, dtype: torch.dtype, repeats: int,
              min_seconds: float) -> float:
    """Median seconds of one call of the GEMM."""
    a, b = _operands(gemm, device, dtype)
    out = torch.empty(gemm.m, gemm.n, device=device, dtype=dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return median_time(lambda: torch.mm(a, b, out=out), repeats, warmup=2, sync=sync,
                       min_seconds=min_seconds)


def gemm_step(spec: ModelSpec, rows: int, micro_batches: int,
              device: torch.device) -> tuple[Callable[[], float], float]:
    """All the linears' GEMMs of one training step, as one timed callable.

    Returns (run, FLOPs per call): `run()` executes every GEMM of `gemm_shapes` as often as a
    step of `micro_batches` micro-batches does, on preallocated operands, and returns its
    wall time. Timed in the same rotation as the training steps it says how much of a step
    the linears' GEMMs alone would take at this moment on this machine.
    """
    gemms = gemm_shapes(spec, rows)
    ops = [(*_operands(g, device, spec.params_dtype),
            torch.empty(g.m, g.n, device=device, dtype=spec.params_dtype),
            g.count * micro_batches) for g in gemms]
    flops = sum(g.flops * g.count for g in gemms) * micro_batches

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            for a, b, out, calls in ops:
                for _ in range(calls):
                    torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return run, flops


def summarize(gemms: list[Gemm], seconds: list[float]) -> dict[str, Any]:
    """Per-GEMM rates, the fastest one (peak) and the count-weighted rate of the whole set."""
    rows = []
    for gemm, s in zip(gemms, seconds):
        rows.append(dict(asdict(gemm), flops=gemm.flops, seconds=s,
                         flops_per_s=gemm.flops / s))
    best = max(rows, key=lambda r: r["flops_per_s"])
    total_flops = sum(g.flops * g.count for g in gemms)
    total_time = sum(s * g.count for g, s in zip(gemms, seconds))
    return {
        "gemms": rows,
        "peak_flops_per_s": best["flops_per_s"],
        "peak_gemm": f"{best['layer']} {best['kind']} {best['m']}×{best['k']}×{best['n']}",
        "weighted_flops_per_s": total_flops / total_time,
        "gemm_flops_per_micro_batch": total_flops,
        "gemm_seconds_per_micro_batch": total_time,
    }


def achieved_over_peak(flops_per_step: float, step_s: float, peak_flops_per_s: float
                       ) -> tuple[float, float]:
    """(achieved FLOP/s, achieved / peak) of a step that does `flops_per_step` in `step_s`."""
    if step_s <= 0 or peak_flops_per_s <= 0:
        raise ValueError("step time and peak must be positive")
    achieved = flops_per_step / step_s
    return achieved, achieved / peak_flops_per_s


def measure(spec: ModelSpec, rows: int, *, repeats: int = 5, min_seconds: float = 0.05,
            device: torch.device | None = None) -> dict[str, Any]:
    """Time every GEMM of the model's training step at M = `rows` (micro batch × seq_len)."""
    device = device or (torch.device("cuda") if torch.cuda.is_available()
                        else torch.device("cpu"))
    gemms = gemm_shapes(spec, rows)
    with torch.no_grad():
        seconds = [time_gemm(g, device, spec.params_dtype, repeats, min_seconds)
                   for g in gemms]
    result = summarize(gemms, seconds)
    result.update(rows=rows, dtype=str(spec.params_dtype), device=str(device),
                  repeats=repeats, threads=torch.get_num_threads())
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides (section.key=value)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from nextlat_pt.config import ConfigError, load_config
    from nextlat_pt.train.build import model_spec

    try:
        cfg = load_config(None, args.overrides)
    except ConfigError as err:
        print(f"matmul_peak: config error: {err}", file=sys.stderr)
        return 2
    spec = model_spec(cfg, cfg.model.vocab_size or cfg.data.builtin_vocab_size)
    rows = cfg.train.micro_batch_size * cfg.model.seq_len
    result = measure(spec, rows, repeats=args.repeats)
    print(f"machine: {describe_machine(machine_info())}")
    print(f"GEMMs of one micro-batch (M = {rows}), {result['dtype']}, {args.repeats} repeats:")
    print(f"{'layer':<6} {'kind':<12} {'m':>6} {'k':>6} {'n':>6} {'×':>3} {'ms':>8} "
          f"{'GFLOP/s':>8}")
    for g in result["gemms"]:
        print(f"{g['layer']:<6} {g['kind']:<12} {g['m']:>6} {g['k']:>6} {g['n']:>6} "
              f"{g['count']:>3} {g['seconds'] * 1e3:>8.3f} {g['flops_per_s'] / 1e9:>8.1f}")
    print(f"peak {result['peak_flops_per_s'] / 1e9:.1f} GFLOP/s ({result['peak_gemm']}); "
          f"all GEMMs of a step together {result['weighted_flops_per_s'] / 1e9:.1f} GFLOP/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
