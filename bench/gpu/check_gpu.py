"""One short script for a lent GPU (H100/H200): the CUDA paths the CPU machines cannot run.

    python bench/gpu/check_gpu.py [--layers 4] [--micro-batch 8] [--repeats 10] [--warmup 3]
                                  [--peak-tflops T] [--sections a,b] [--json PATH]
    python bench/gpu/check_gpu.py --dry-run     # the same code on CPU, tiny sizes, bf16

The model is configs/1b.yaml (the paper's 1.3B shape: width 2048, 16 heads, SwiGLU 5504,
seq 1024, vocab 50,257 padded to 50,304, untied, ψ width 6528) at reduced depth `--layers`
(22 is the full model), bf16 with fp32 master weights through DeepSpeed ZeRO-1, on one GPU.
Every section fails soft (its error is recorded, the next one runs) and the JSON (default
bench/results/gpu_latest.json) is rewritten after each section, so a run cut short by a
time limit still leaves what it measured.

Sections
--------
1. attention: flash-attn vs PyTorch SDPA in our core-attention module on the same q, k, v
   (bf16, seq 1024, batch 4, GQA 16/4 heads): max |Δ| of the output and of dq, and the
   fwd+bwd time of each (median of repeats); the kernel SDPA dispatched to (the profiler's
   op and kernel names: cuDNN, flash, efficient or math) and the fwd+bwd time with each
   SDPA backend forced (one that refuses the inputs says why).
2. model_parity: the whole model (the chosen depth) built twice from the same seed, once with
   flash, once with SDPA attention: max |Δ| and max relative |Δ| of the bf16 logits on the same
   tokens, and the forward+backward time of each (median).
3. training: the framework's real training step (bench/nextlat_overhead.py: `build_training`,
   megatron's schedule, `engine.step()`) for NTP, NextLat d=1 and d=2, interleaved round-robin:
   median step time, tokens/s, TFLOP/s, MFU, NextLat over NTP beside the FLOP prediction.
4. reference: our NTP step interleaved (same process, round-robin) with HF
   `LlamaForCausalLM` of the identical shape and initial weights, fp32 weights under bf16
   autocast, fp32 CE, clipping, fused AdamW, eager and under `torch.compile(model)`
   (bench/reference_step.py): ours / HF-eager and ours / HF-compiled.
5. profile: our NTP step under torch.profiler, GPU time per step by kind of kernel (GEMM,
   copy/cast, elementwise, reductions, attention, optimizer, communication; the kernel
   names are classified by `KERNEL_KINDS`), so that every change shows where time went.
6. memory: peak memory of NTP and NextLat d=1 (torch.cuda.max_memory_allocated over the
   baseline, each in a fresh process, bench/memory_peak.py) over nextlat_pt/memory.py's
   estimate.
7. nccl: a world of one process with the NCCL backend, one all-reduce (sanity only).
8. psi: ψ's rollout at the 1.3B width (D 2048, H 6528, seq 1024, bf16) for d = 1, 2, 4:
   the fused first layer and the fused step under `torch.compile` over the concatenating
   module (bench/psi_rollout.py): whether compiling ψ pays on a GPU (on CPU it does not).

MFU
---
MFU = (training FLOPs per token × tokens/s) / peak dense bf16 FLOP/s of the device.
FLOPs per token are nextlat_pt/flops.py's `flops_per_token(...).total`: 6 × the matmul
weights of the trunk and the LM head (forward 2, backward 4 per weight per token), plus
causal attention 6·L·D·(T+1) (scores and values, half the square plus the diagonal), plus, for
NextLat, ψ's three matmuls over the rollout and the frozen-head KL matmuls (forward and the
input gradient only), weighted by the rollout's coverage. Elementwise work, the CE/KL
softmaxes, the optimizer and activation recomputation are not counted. `mfu_trunk` counts only
the NTP part (trunk + attention) for every objective: the language model's utilisation; `mfu`
counts NextLat's extra matmuls as useful work too. The peak comes from
nextlat_pt.flops.PEAK_BF16_TFLOPS, keyed by `torch.cuda.get_device_name()` (H100 SXM and
H200: 989.4 TFLOP/s dense bf16), or `--peak-tflops`; for an unknown device without the flag
MFU is left out (null).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nextlat_pt.flops import peak_tflops  # the device peaks (PEAK_BF16_TFLOPS)

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))  # benchlib, nextlat_overhead, memory_peak

from benchlib import config_overrides, machine_info, median_time  # noqa: E402

REPO = BENCH.parent
DEFAULT_JSON = BENCH / "results" / "gpu_latest.json"
SECTIONS = ["attention", "model_parity", "training", "reference", "profile", "memory", "nccl",
            "psi"]
HF_EAGER = "HF Llama, autocast, fused AdamW"
HF_COMPILED = "HF Llama, autocast, fused AdamW, torch.compile"
# Kernel (or, on a CPU dry run, operator) names -> the kinds of the per-step time table,
# first match wins.
KERNEL_KINDS = (
    ("communication", ("nccl", "c10d::", "gloo", "all_reduce", "allreduce")),
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("GEMM", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "aten::mm", "aten::addmm",
              "aten::bmm", "aten::baddbmm", "matmul")),
    ("copy/cast", ("copy", "memcpy", "memset", "cast", "convert", "aten::to", "aten::cat",
                   "aten::clone", "aten::contiguous", "transpose", "permute")),
    ("reduction", ("reduce", "norm", "sum", "mean", "max", "min", "logsumexp", "softmax")),
)
GPT2_VOCAB = 50257


def model_overrides(args: argparse.Namespace, flash: bool) -> list[str]:
    """The benchmark's model: 1b.yaml at `--layers`, bf16 (dry run: a tiny CPU model)."""
    if args.dry_run:
        # bf16 as on the GPU: the dtype paths (bf16 weights, fp32 master weights, autocast)
        # are what a CPU run of the GPU code can catch.
        return ["model.num_layers=2", "model.hidden_size=128", "model.num_heads=4",
                "model.seq_len=64", "model.vocab_size=512", "nextlat.psi_width=256",
                "train.micro_batch_size=2", "train.global_batch_size=2",
                "precision.dtype=bf16"]
    return [*config_overrides("1b"), f"model.num_layers={args.layers}",
            f"model.vocab_size={GPT2_VOCAB}", f"train.micro_batch_size={args.micro_batch}",
            f"train.global_batch_size={args.micro_batch}", "precision.dtype=bf16",
            f"model.attention_backend={'flash' if flash else 'sdpa'}"]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def attention_parity(device: torch.device, dtype: torch.dtype, flash: bool,
                     repeats: int) -> dict[str, Any]:
    """Our SDPA and flash core attention on the same q, k, v (GQA 16/4 heads)."""
    from megatron.core.transformer.enums import AttnMaskType

    from nextlat_pt.model.attention import FlashAttention, SDPAttention
    from nextlat_pt.model.gpt import ModelSpec, transformer_config

    spec = ModelSpec(num_layers=1, hidden_size=2048, num_heads=16, num_query_groups=4,
                     ffn_hidden_size=5504, vocab_size=512, max_position_embeddings=1024,
                     params_dtype=dtype)
    config = transformer_config(spec)
    seq, batch = (1024, 4) if device.type == "cuda" else (64, 2)
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    q = rand(seq, batch, 16, 128).requires_grad_()
    k = rand(seq, batch, 4, 128).requires_grad_()
    v = rand(seq, batch, 4, 128).requires_grad_()
    grad = rand(seq, batch, 16 * 128)
    results: dict[str, Any] = {"seq": seq, "batch": batch, "dtype": str(dtype)}
    outputs = {}
    kinds = [("sdpa", SDPAttention)] + ([("flash", FlashAttention)] if flash else [])
    for name, cls in kinds:
        module = cls(config, 1, AttnMaskType.causal, "self")
        out = module(q, k, v, None)
        out.backward(grad)
        outputs[name] = (out.detach().float(), q.grad.float().clone())
        q.grad = k.grad = v.grad = None

        def step(module=module):
            module(q, k, v, None).backward(grad)

        results[f"{name}_fwd_bwd_ms"] = 1000 * median_time(step, repeats, warmup=2, sync=_sync)
    results["sdpa_dispatched"] = sdpa_dispatch(q, k, v)
    results["sdpa_backends_fwd_bwd_ms"] = sdpa_backend_times(q, k, v, grad, repeats)
    if flash:
        results["max_abs_diff_out"] = (outputs["flash"][0] - outputs["sdpa"][0]).abs().max().item()
        results["max_abs_diff_dq"] = (outputs["flash"][1] - outputs["sdpa"][1]).abs().max().item()
        results["flash_speedup"] = results["sdpa_fwd_bwd_ms"] / results["flash_fwd_bwd_ms"]
    else:
        results["note"] = "flash-attn not importable: SDPA timed alone"
    return results


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal SDPA on our [s, b, heads, dim] layout (GQA native), as our attention calls it."""
    import torch.nn.functional as F

    q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                          enable_gqa=k.shape[1] != q.shape[1])


def sdpa_dispatch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """The kernel SDPA picked for these inputs: the profiler's `aten::_scaled_dot_product_*`
    (and, on CUDA, the kernel names of that call)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        _sdpa(q, k, v)
        _sync()
    names = [e.name for e in prof.events()]
    ops = sorted({n for n in names if n.startswith("aten::_scaled_dot_product")
                  or n.startswith("aten::_flash") or n.startswith("aten::_efficient")
                  or n.startswith("aten::_cudnn")})
    kernels = sorted({n for n in names if any(w in n.lower() for w in (
        "flash", "fmha", "cudnn", "attention", "sdpa")) and not n.startswith("aten::")})
    return ", ".join(ops + kernels[:3]) or "math (no fused kernel)"


def sdpa_backend_times(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       grad: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Forward + backward ms with each SDPA backend forced (flash-attn's own package is timed
    by the FlashAttention module above when importable); a backend that refuses these
    inputs (or this device) records why."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out: dict[str, Any] = {}
    grad4 = grad.reshape(q.shape).permute(1, 2, 0, 3)
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                    SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):

        def step(backend=backend):
            with sdpa_kernel(backend):
                _sdpa(q, k, v).backward(grad4)

        try:
            out[backend.name.lower()] = 1000 * median_time(step, repeats, warmup=1, sync=_sync)
        except RuntimeError as err:
            out[backend.name.lower()] = f"not available: {str(err).splitlines()[0][:120]}"
        q.grad = k.grad = v.grad = None
    return out


def model_parity(overrides: list[str], backends: tuple[str, str], repeats: int
                 ) -> dict[str, Any]:
    """The whole model twice from one seed, two attention backends: logits and speed."""
    import torch.nn.functional as F

    from nextlat_pt.config import load_config
    from nextlat_pt.model.gpt import NextLatGPT
    from nextlat_pt.parallel import distributed
    from nextlat_pt.train.build import model_spec

    device = distributed.device()
    out: dict[str, Any] = {"backends": list(backends)}
    logits = {}
    tokens = None
    for backend in backends:
        cfg = load_config(None, [*overrides, f"model.attention_backend={backend}",
                                 "nextlat.objective=ntp"])
        spec = model_spec(cfg, cfg.model.vocab_size)
        model = NextLatGPT(spec).to(device)
        if tokens is None:
            gen = torch.Generator().manual_seed(0)
            tokens = torch.randint(0, spec.vocab_size, (cfg.train.micro_batch_size,
                                                        cfg.model.seq_len + 1),
                                   generator=gen).to(device)
        with torch.no_grad():
            logits[backend] = model(tokens[:, :-1]).logits.float()
        labels = tokens[:, 1:].t()

        def step(model=model, labels=labels, inputs=tokens[:, :-1]):
            lg = model(inputs).logits
            F.cross_entropy(lg.float().flatten(0, 1), labels.flatten()).backward()
            model.zero_grad(set_to_none=True)

        out[f"{backend}_fwd_bwd_ms"] = 1000 * median_time(step, repeats, warmup=2, sync=_sync)
        out["dtype"] = str(spec.params_dtype)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    a, b = (logits[name] for name in backends)
    diff = (a - b).abs()
    out["max_abs_diff_logits"] = diff.max().item()
    out["max_rel_diff_logits"] = (diff.max() / b.abs().max()).item()
    out["mean_abs_diff_logits"] = diff.mean().item()
    out["argmax_agreement"] = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    out[f"{backends[0]}_speedup_over_{backends[1]}"] = (out[f"{backends[1]}_fwd_bwd_ms"]
                                                        / out[f"{backends[0]}_fwd_bwd_ms"])
    return out


def training(overrides: list[str], repeats: int, warmup: int, peak: float | None
             ) -> dict[str, Any]:
    """NTP, NextLat d=1, d=2 through the trainer's step: tokens/s, TFLOP/s, MFU, ratios."""
    from nextlat_overhead import json_ready
    from nextlat_overhead import measure as measure_steps

    result = json_ready(measure_steps(overrides, horizons=(0, 1, 2), repeats=repeats,
                                      warmup=warmup))
    ntp_flops = result["rows"][0]["flops_per_token"]
    for row in result["rows"]:
        tps = row["tokens_per_s"]
        row["tflops_per_s"] = row["flops_per_token"] * tps / 1e12
        row["mfu"] = row["flops_per_token"] * tps / (peak * 1e12) if peak else None
        row["mfu_trunk"] = ntp_flops * tps / (peak * 1e12) if peak else None
    result["peak_tflops"] = peak
    if torch.cuda.is_available():
        result["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 1024 ** 3
    return result


def reference(overrides: list[str], repeats: int, warmup: int) -> dict[str, Any]:
    """Our NTP step interleaved with HF `LlamaForCausalLM` of the same shape and initial
    weights (fp32 weights under bf16 autocast, fused AdamW), eager and under torch.compile:
    ours / HF-eager and ours / HF-compiled (medians, and the medians of per-repeat ratios)."""
    from benchlib import paired_ratio
    from nextlat_overhead import json_ready
    from nextlat_overhead import measure as measure_steps
    from reference_step import autocast_reference_factory

    result = json_ready(measure_steps(
        overrides, horizons=(0,), repeats=repeats, warmup=warmup,
        extra=[autocast_reference_factory(HF_EAGER, compiled=False),
               autocast_reference_factory(HF_COMPILED, compiled=True)]))
    ours = result["rows"][0]
    out: dict[str, Any] = {"ours_median_s": ours["median_s"], "ratios": {}}
    for name, times in result["extra_times"].items():
        median = sorted(times)[len(times) // 2]
        out["ratios"][name] = {"reference_median_s": median,
                               "ours_over_reference": ours["median_s"] / median,
                               "paired": paired_ratio(ours["times_s"], times)}
    return out


def kernel_kind(name: str) -> str:
    """The kind of a GPU kernel (or CPU operator) for the per-step table (KERNEL_KINDS)."""
    low = name.lower()
    for kind, needles in KERNEL_KINDS:
        if any(n in low for n in needles):
            return kind
    return "elementwise/other"


def profile_kinds(overrides: list[str], steps: int = 2) -> dict[str, Any]:
    """Our NTP step under torch.profiler: time per step by kind of kernel (GPU kernels on
    CUDA; on a CPU dry run, the self time of the operators, named the same way)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from nextlat_overhead import build_variant, random_batch, train_step
    from torch.profiler import ProfilerActivity, profile

    from nextlat_pt.parallel import distributed

    device = distributed.device()
    variant = build_variant("NTP", 0, overrides, device, plain=False)
    batches = random_batch(variant.cfg, 1234, device)
    forward_backward = get_forward_backward_func()
    for _ in range(2):  # warm-up: allocator, compilation
        train_step(variant, batches, forward_backward, device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            train_step(variant, batches, forward_backward, device)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us <= 0 or (not cuda and not event.key.startswith("aten::")):
            continue
        kind = kernel_kind(event.key)
        totals[kind] = totals.get(kind, 0.0) + us / 1000 / steps
    total = sum(totals.values())
    rows = [{"kind": k, "ms_per_step": v, "share": v / total if total else 0.0}
            for k, v in sorted(totals.items(), key=lambda kv: -kv[1])]
    return {"device_time": "gpu kernels" if cuda else "cpu operator self time",
            "ms_per_step_total": total, "rows": rows, "steps": steps}


def memory(overrides: list[str]) -> dict[str, Any]:
    """Peak memory of NTP and NextLat d=1 over the estimate, each in a fresh process."""
    import memory_peak

    return memory_peak.measure(overrides, horizons=(0, 1), steps=2)


def psi_rollout(overrides: list[str], micro_batch: int, repeats: int, warmup: int,
                dry_run: bool) -> dict[str, Any]:
    """ψ's rollout: fused and fused+compile over concatenating (bench/psi_rollout.py)."""
    import psi_rollout as bench_psi

    from nextlat_pt.config import load_config

    cfg = load_config(None, overrides)
    cuda = torch.cuda.is_available()
    return bench_psi.measure(
        seq=cfg.model.seq_len, batch=micro_batch, hidden=cfg.model.hidden_size,
        width=cfg.psi_width, horizons=(1, 2) if dry_run else (1, 2, 4), repeats=repeats,
        warmup=max(warmup, 2), compile=True, device="cuda" if cuda else "cpu",
        dtype=torch.bfloat16)


def nccl_check() -> dict[str, Any]:
    """One all-reduce in the world of one (NCCL on CUDA)."""
    import torch.distributed as dist

    if not torch.cuda.is_available():
        return {"nccl": "skipped (no CUDA)"}
    value = torch.ones(4, device="cuda")
    dist.all_reduce(value)
    return {"nccl_all_reduce_ok": bool(torch.all(value == 1).item()),
            "backend": dist.get_backend()}


def run_section(report: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]],
                path: Path) -> None:
    """Run one section fail-soft, record its result or error, rewrite the JSON."""
    print(f"[{name}] running ...", flush=True)
    start = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as err:  # noqa: BLE001 - a failed section must not stop the others
        traceback.print_exc()
        report[name] = {"error": f"{type(err).__name__}: {err}"}
    report.setdefault("section_seconds", {})[name] = time.perf_counter() - start
    print(f"[{name}] {'FAILED' if 'error' in report[name] else 'done'} in "
          f"{report['section_seconds'][name]:.0f} s: "
          f"{json.dumps(report[name], default=str)[:600]}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The headline figures, one per line."""
    lines = []
    train = report.get("training", {})
    for row in train.get("rows", []):
        mfu = f"{row['mfu']:.3f}" if row.get("mfu") is not None else "n/a"
        lines.append(f"{row['variant']:<12} {row['median_s'] * 1e3:8.1f} ms/step "
                     f"{row['tokens_per_s']:>10,.0f} tokens/s {row['tflops_per_s']:7.1f} "
                     f"TFLOP/s  MFU {mfu}  /NTP paired {row['ratio_paired']:.3f} "
                     f"(FLOPs {row['ratio_flops']:.3f})")
    for name, r in report.get("reference", {}).get("ratios", {}).items():
        lines.append(f"our NTP step / {name}: {r['ours_over_reference']:.3f} "
                     f"(paired {r['paired']:.3f}; {r['reference_median_s'] * 1e3:.1f} ms)")
    prof = report.get("profile", {})
    for row in prof.get("rows", []):
        lines.append(f"profile ({prof['device_time']}): {row['kind']:<18} "
                     f"{row['ms_per_step']:8.1f} ms/step  {row['share']:6.1%}")
    att = report.get("attention", {})
    if "sdpa_dispatched" in att:
        lines.append(f"attention: SDPA dispatched to {att['sdpa_dispatched']}; fwd+bwd ms "
                     + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} n/a"
                                 for k, v in att["sdpa_backends_fwd_bwd_ms"].items()))
    if "max_abs_diff_out" in att:
        lines.append(f"attention flash vs sdpa: max|Δout| {att['max_abs_diff_out']:.2e}, "
                     f"max|Δdq| {att['max_abs_diff_dq']:.2e}, flash {att['flash_speedup']:.2f}×")
    par = report.get("model_parity", {})
    if "max_abs_diff_logits" in par:
        lines.append(f"model {'/'.join(par['backends'])}: max|Δlogits| "
                     f"{par['max_abs_diff_logits']:.3e} (rel {par['max_rel_diff_logits']:.2e}),"
                     f" argmax agreement {par['argmax_agreement']:.4f}")
    for row in report.get("memory", {}).get("rows", []):
        lines.append(f"memory {row['variant']}: {row['peak_bytes'] / 1024 ** 3:.2f} GiB "
                     f"measured / {row['estimate_bytes'] / 1024 ** 3:.2f} GiB estimated = "
                     f"{row['ratio']:.2f}")
    psi = report.get("psi", {})
    for row in psi.get("rows", []):
        lines.append(f"ψ rollout d={row['horizon']}: fused/concat {row['ratio_paired']:.3f}, "
                     f"compiled/concat {row.get('ratio_paired_fused_compile', float('nan')):.3f}"
                     f" (max|Δ| {row['max_abs_diff']:.1e})")
    for name in SECTIONS:
        if "error" in report.get(name, {}):
            lines.append(f"{name}: FAILED: {report[name]['error']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4,
                        help="depth of the 1.3B shape (default 4; 22 = the full model)")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak (default: nextlat_pt.flops."
                             "PEAK_BF16_TFLOPS)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--dry-run", "--cpu-smoke", dest="dry_run", action="store_true",
                        help="CPU, tiny sizes: exercise every code path in seconds")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from "
                     f"{', '.join(SECTIONS)}")
    if args.layers < 1 or args.micro_batch < 1 or args.repeats < 1:
        parser.error("--layers, --micro-batch and --repeats must be >= 1")

    from nextlat_pt.model.attention import flash_attn_importable
    from nextlat_pt.parallel import distributed

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("check_gpu: no CUDA device; run with --dry-run to exercise the code on CPU",
              file=sys.stderr)
        return 2
    distributed.initialize(1, 1, seed=1234)
    device = distributed.device()
    flash = cuda and flash_attn_importable()
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = peak_tflops(name, args.peak_tflops) if cuda else None
    overrides = model_overrides(args, flash)
    report: dict[str, Any] = {
        "device": name, "machine": machine_info(), "flash_attn": flash,
        "peak_bf16_tflops": peak, "layers": args.layers, "dry_run": args.dry_run,
        "overrides": overrides, "command": " ".join([sys.executable, *sys.argv]),
    }
    if cuda and peak is None:
        report["mfu_note"] = (f"no peak known for {name!r}: pass --peak-tflops for MFU")
    # Parity pairs: flash vs sdpa where flash runs; on CPU sdpa vs megatron's local attention
    # (the same code path, another kernel pair).
    pair = ("flash", "sdpa") if flash else ("sdpa", "local")
    runs = {
        "attention": lambda: attention_parity(device, torch.bfloat16, flash, args.repeats),
        "model_parity": lambda: model_parity(overrides, pair, args.repeats),
        "training": lambda: training(overrides, args.repeats, args.warmup, peak),
        "reference": lambda: reference(overrides, args.repeats, args.warmup),
        "profile": lambda: profile_kinds(overrides),
        "memory": lambda: memory(overrides),
        "nccl": nccl_check,
        "psi": lambda: psi_rollout(overrides, args.micro_batch, args.repeats, args.warmup,
                                   args.dry_run),
    }
    for section in sections:
        run_section(report, section, runs[section], args.json)
    print("\n" + "\n".join(summary_lines(report)))
    print(f"wrote {args.json}")
    distributed.destroy()
    return 1 if any("error" in report.get(s, {}) for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
