"""The facts a run prints before its first step: sizes, FLOPs, memory, layout, data.

Read-only: it inspects what `run.py` built and returns the lines for the progress callback's
header, plus the FLOPs per token the progress line turns into MFU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nextlat_pt.config import Config, resolved_grad_accum_dtype
from nextlat_pt.flops import FlopsBreakdown, flops_per_token, parameter_counts, peak_tflops
from nextlat_pt.memory import estimate_memory
from nextlat_pt.model.gpt import count_parameters
from nextlat_pt.parallel.distributed import ParallelLayout
from nextlat_pt.parallel.engine import TrainingEngine
from nextlat_pt.parallel.local_engine import LocalEngine


@dataclass
class RunFacts:
    """`info`: the header lines (name → text); `flops`: the count per training token;
    `peak_flops`: the dense bf16 peak of all devices together (None where unknown)."""

    info: dict[str, str]
    flops: FlopsBreakdown
    peak_flops: float | None


def describe_run(cfg: Config, layout: ParallelLayout, models: list[torch.nn.Module],
                 engine: TrainingEngine, vocab_size: int, data_description: str,
                 device: torch.device) -> RunFacts:
    """What this run trains, how big it is, what it costs and how it is laid out."""
    counts = count_parameters(torch.nn.ModuleList(models))
    spec = models[0].spec
    whole = parameter_counts(spec)
    flops = flops_per_token(spec, cfg.model.seq_len, cfg.nextlat.horizon, nextlat=cfg.uses_psi,
                            with_kl=cfg.nextlat.lambda_kl > 0)
    memory = estimate_memory(spec, cfg.model.seq_len, cfg.train.micro_batch_size, layout.dp,
                             cfg.parallel.zero_stage, cfg.nextlat.horizon if cfg.uses_psi
                             else 0, cfg.train.optimizer, spec.params_dtype == torch.bfloat16,
                             kl_chunk_tokens=cfg.nextlat.kl_chunk_tokens,
                             grad_accum_dtype=resolved_grad_accum_dtype(cfg),
                             mtp_recompute_heads=cfg.nextlat.mtp_recompute_heads)
    info = {
        "run dir": str(cfg.run_dir),
        "objective": cfg.nextlat.objective + (
            f" (d={cfg.nextlat.horizon}, λ_h={cfg.nextlat.lambda_latent}, "
            f"λ_KL={cfg.nextlat.lambda_kl})" if cfg.uses_psi else "") + (
            f" ({cfg.mtp_heads} heads)" if cfg.mtp_heads > 1 else "") + (
            f" (d={cfg.jtp_steps}, λ={cfg.nextlat.jtp_lambda})" if cfg.jtp_steps else ""),
        "parameters": f"trunk {whole['trunk']:,} ({whole['trunk'] / 1e6:.1f}M), "
                      f"ψ {whole['psi']:,} ({whole['psi'] / 1e6:.1f}M)" + (
                          f", MTP heads {whole['mtp_heads']:,}" if whole["mtp_heads"] else "")
                      + (f", JTP Fetch {whole['jtp_fetch']:,}" if whole["jtp_fetch"] else "")
                      + f"; this rank: trunk {counts['trunk']:,}, ψ {counts['psi']:,}",
        "FLOPs per token": f"{flops.total / 1e9:.3f} GFLOP training (trunk matmuls "
                           f"{flops.trunk_matmul / 1e9:.3f}, attention "
                           f"{flops.attention / 1e9:.3f}, ψ {flops.psi / 1e9:.3f}, KL head "
                           f"{flops.kl_head / 1e9:.3f}" + (
                               f", MTP heads {flops.mtp_heads / 1e9:.3f}"
                               if flops.mtp_heads else "") + (
                               f", JTP Fetch {flops.jtp_fetch / 1e9:.3f}"
                               if flops.jtp_fetch else "") + "; nextlat_pt/flops.py)",
        "memory estimate per rank": memory.describe(),
        "layout": _describe_layout(cfg, layout, engine),
        "attention": models[0].attention_backend,
        "precision": "bf16 (fp32 master weights)"
                     if spec.params_dtype == torch.bfloat16 else "fp32",
        "vocab": f"{vocab_size} (padded to {models[0].padded_vocab_size})",
        "data": data_description,
    }
    return RunFacts(info, flops, _peak_flops(device, spec.params_dtype, layout.world_size))


def _describe_layout(cfg: Config, layout: ParallelLayout, engine: Any) -> str:
    return (f"world {layout.world_size}: tp {layout.tp} × pp {layout.pp} × dp {layout.dp}"
            + (f", vpp {cfg.parallel.vpp}" if cfg.parallel.vpp else "")
            + (", sequence parallel" if cfg.parallel.sp else "")
            + (f", {cfg.train.optimizer} on this rank (one fp32 DP rank: no ZeRO to shard)"
               if isinstance(engine, LocalEngine) else f", ZeRO-{cfg.parallel.zero_stage}"))


def _peak_flops(device: torch.device, dtype: torch.dtype, world_size: int) -> float | None:
    """The dense bf16 peak of all devices together, for the MFU on the progress line; None
    off CUDA, in fp32 (the peak is bf16's) or for a device the table does not know."""
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    peak = peak_tflops(torch.cuda.get_device_name(device))
    return peak * 1e12 * world_size if peak else None
