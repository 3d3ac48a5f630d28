"""One short script for a lent GPU (H100/H200): the CUDA paths the CPU machines cannot run.

    python bench/gpu/check_gpu.py [--layers 4] [--steps 10] [--json out.json]
    python bench/gpu/check_gpu.py --cpu-smoke          # the same code on CPU, tiny sizes

1. flash-attn vs PyTorch SDPA: outputs and gradients of our core-attention module on the
   same inputs (bf16), max |diff|, and the kernel time of each (median of repeats).
2. NCCL: a world of one process with the NCCL backend, one all-reduce.
3. Training steps of the paper's 1.3B shape (22 layers, width 2048, 16 heads, seq 1024,
   vocab 50304) with reduced depth (`--layers`), bf16 with fp32 master weights through
   DeepSpeed ZeRO-1, flash-attn: tokens/s, achieved TFLOP/s and MFU, for NTP, NextLat d=1 and
   d=2 (step-time ratios over NTP beside the FLOP prediction).

MFU = (training FLOPs per token from nextlat_pt/flops.py × tokens/s) / peak dense bf16
FLOP/s of the device (989e12 for H100 SXM, 989e12 for H200; override with --peak-tflops).
The FLOP count includes the LM head, causal attention (half the square) and, for NextLat,
ψ and the frozen-head KL matmuls (see flops.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def _time(fn, repeats: int, sync) -> float:
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def attention_parity(device: torch.device, dtype: torch.dtype, flash: bool) -> dict:
    """Our SDPA and flash core attention on the same q, k, v (GQA 16/4 heads)."""
    from megatron.core.transformer.enums import AttnMaskType

    from nextlat_pt.model.attention import FlashAttention, SDPAttention
    from nextlat_pt.model.gpt import ModelSpec, transformer_config

    spec = ModelSpec(num_layers=1, hidden_size=2048, num_heads=16, num_query_groups=4,
                     ffn_hidden_size=5504, vocab_size=512, max_position_embeddings=1024)
    config = transformer_config(spec)
    seq, batch = (1024, 4) if device.type == "cuda" else (64, 2)
    q = torch.randn(seq, batch, 16, 128, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(seq, batch, 4, 128, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(seq, batch, 4, 128, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(seq, batch, 16 * 128, device=device, dtype=dtype)
    results = {}
    outputs = {}
    kinds = [("sdpa", SDPAttention)] + ([("flash", FlashAttention)] if flash else [])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for name, cls in kinds:
        module = cls(config, 1, AttnMaskType.causal, "self")
        out = module(q, k, v, None)
        out.backward(grad)
        outputs[name] = (out.detach().float(), q.grad.float().clone())
        q.grad = k.grad = v.grad = None

        def step(module=module):
            module(q, k, v, None).backward(grad)

        results[f"{name}_fwd_bwd_ms"] = 1000 * _time(step, 10, sync)
    if flash:
        results["max_abs_diff_out"] = (outputs["flash"][0] - outputs["sdpa"][0]).abs().max().item()
        results["max_abs_diff_dq"] = (outputs["flash"][1] - outputs["sdpa"][1]).abs().max().item()
    return results


def nccl_check() -> dict:
    import torch.distributed as dist

    if not torch.cuda.is_available():
        return {"nccl": "skipped (no CUDA)"}
    value = torch.ones(4, device="cuda")
    dist.all_reduce(value)
    return {"nccl_all_reduce_ok": bool(torch.all(value == 1).item()),
            "backend": dist.get_backend()}


def training_steps(layers: int, steps: int, peak_tflops: float, cpu_smoke: bool) -> dict:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nextlat_pt.config import load_config
    from nextlat_pt.flops import flops_per_token
    from nextlat_pt.parallel import distributed
    from nextlat_pt.train.build import build_training
    from nextlat_pt.train.step import MicroBatch, make_forward_step

    if cpu_smoke:
        shape = ["model.num_layers=2", "model.hidden_size=128", "model.num_heads=4",
                 "model.seq_len=64", "train.micro_batch_size=2", "train.global_batch_size=2"]
        vocab = 512
    else:
        shape = [f"model.num_layers={layers}", "model.hidden_size=2048", "model.num_heads=16",
                 "model.seq_len=1024", "train.micro_batch_size=8",
                 "train.global_batch_size=8", "nextlat.psi_width=6528",
                 "precision.dtype=bf16"]
        vocab = 50304
    device = distributed.device()
    out = {}
    times = {}
    for name, extra in (("ntp", ["nextlat.objective=ntp"]), ("nextlat_d1", []),
                        ("nextlat_d2", ["nextlat.horizon=2"])):
        cfg = load_config(None, [*shape, *extra, "logging.wandb=disabled"])
        chunks, engine = build_training(cfg, vocab, device)
        seq, mbs = cfg.model.seq_len, cfg.train.micro_batch_size
        tokens = torch.randint(0, vocab, (mbs, seq + 1), device=device)
        batch = [MicroBatch.from_sample({"tokens": tokens, "doc_ids": torch.zeros_like(tokens)},
                                        device)]
        schedule = get_forward_backward_func()
        step_fn = make_forward_step(engine)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def step(batch=batch, schedule=schedule, step_fn=step_fn, engine=engine,
                 chunks=chunks, seq=seq, mbs=mbs):
            schedule(forward_step_func=step_fn, data_iterator=iter(batch), model=chunks,
                     num_microbatches=1, seq_length=seq, micro_batch_size=mbs,
                     forward_only=False)
            engine.step()

        seconds = _time(step, steps, sync)
        spec = chunks[0].model.spec
        flops = flops_per_token(spec, seq, cfg.nextlat.horizon, nextlat=name != "ntp").total
        tps = mbs * seq / seconds
        times[name] = seconds
        out[name] = {"step_s": seconds, "tokens_per_s": tps,
                     "tflops": flops * tps / 1e12,
                     "mfu": flops * tps / (peak_tflops * 1e12) if not cpu_smoke else None,
                     "flops_per_token": flops,
                     "attention": chunks[0].model.attention_backend}
        del chunks, engine
        if device.type == "cuda":
            out[name]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 1024 ** 3
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    for name in ("nextlat_d1", "nextlat_d2"):
        out[name]["step_ratio_vs_ntp"] = times[name] / times["ntp"]
        out[name]["flop_ratio_vs_ntp"] = (out[name]["flops_per_token"]
                                          / out["ntp"]["flops_per_token"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from nextlat_pt.model.attention import flash_attn_importable
    from nextlat_pt.parallel import distributed

    distributed.initialize(1, 1, seed=1234)
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("no CUDA device: run with --cpu-smoke to exercise the code on CPU", file=sys.stderr)
        return 2
    device = distributed.device()
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu",
              "torch": torch.__version__, "flash_attn": flash_attn_importable()}
    report["attention"] = attention_parity(device, torch.bfloat16 if cuda else torch.float32,
                                           flash=cuda and report["flash_attn"])
    report["nccl"] = nccl_check()
    report["training"] = training_steps(args.layers, args.steps, args.peak_tflops,
                                        args.cpu_smoke)
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
