"""How much slower is a NextLat (or MTP, or JTP) training step than a next-token (NTP) step?
Measured vs FLOPs.

    python bench/nextlat_overhead.py [--repeats N] [--warmup W] [--d4] [--mtp N ...]
                                     [--jtp D ...] [--plain] [--threads N] [--json PATH]
                                     [section.key=value ...]

`measure(...)` returns the same results as a dict (bench/run_all.py and
bench/reference_step.py call it, the latter with extra steps timed in the same rotation).

What is measured
----------------
One process, one model config (the tiny job by default: 4 layers, D=256, T=256, micro batch
8, vocab 4096), and the framework's real training step for each variant: NTP, NextLat d=1,
NextLat d=2 (and d=4 with `--d4`), and multi-token prediction with n heads for each n of
`--mtp` (default 2; `--mtp` alone: none), and joint multi-token prediction with d steps for
each d of `--jtp` (default 1; `--jtp` alone: none). Each variant is built from a `Config` (the
defaults plus the command line's overrides plus its objective) exactly as the trainer builds it
(`nextlat_pt.train.build.build_training`: the model (weights drawn from `run.seed`, so the
same initial trunk for every variant), the model + objective module, AdamW, the engine: the
local engine for one fp32 data-parallel rank, DeepSpeed's otherwise), and every variant
trains on the same random batch of token ids (one document, no prompt mask). A timed step is
`Trainer.train_step` for PP = 1 minus data loading and logging: set the LR, megatron's
`get_forward_backward_func()` over the micro-batches with `make_forward_step(engine)` (model
forward, NTP or NextLat loss, backward), `engine.step()` (clipping + AdamW). `--plain`
replaces the engine by the bare pieces: `NextLatGPT`, `NextLatTrainModule`,
`build_optimizer`, `make_forward_step(module)`, `clip_grad_norm`, `optimizer.step()`. On
CUDA the device is synchronised before the clock is read.

Fairness on a noisy, shared machine: each variant is first warmed up (allocator, thread pool,
kernel choice), then the variants are interleaved round-robin: every repeat runs one step of
each variant, the order rotated by one each repeat, so slow phases of the machine hit all
variants alike. We report medians and inter-quartile ranges (IQR = q75 − q25) of the step
time, not means.

How to read the table
---------------------
- `median s/step`, `IQR`: the step-time distribution of the variant.
- `ratio meas.`: median(variant) / median(NTP). `paired` is the median over repeats of
  (variant step / NTP step in the same repeat): less sensitive to drift of the machine.
- `min s`, `ratio min`: the fastest step of each variant and the ratio of the minima: the
  least disturbed estimate when other jobs share the cores (on such a machine the step times
  are bimodal: quiet steps, and steps several times slower while a neighbour computes; with
  2 threads on 2 shared cores one busy core stalls both, `--threads 1` is steadier).
- `ratio FLOPs`: what `nextlat_pt.flops` predicts, total(NextLat d) / total(NTP), counting
  matmuls and attention only (see that module for what is neglected).
- `tokens/s`: trained tokens (global batch × T) per second, from the median.
- `GFLOP/s`: the variant's predicted FLOPs per step / median step time, i.e. the achieved
  matmul throughput. If NextLat's extra work ran as efficiently as the trunk, all variants
  would show the same GFLOP/s and the measured ratio would equal the FLOP ratio; a lower
  GFLOP/s for NextLat means its extra work is dominated by what the FLOP count neglects
  (elementwise work over the vocabulary in the KL, small matmuls, memory traffic).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from benchlib import describe_machine, interleave, machine_info, paired_ratio, quartiles

from nextlat_pt.config import Config, ConfigError, load_config, validate
from nextlat_pt.flops import flops_per_token, parameter_counts
from nextlat_pt.model.gpt import NextLatGPT, padded_vocab_size
from nextlat_pt.parallel import distributed
from nextlat_pt.parallel.deepspeed_engine import set_lr as set_engine_lr
from nextlat_pt.parallel.grads import clip_grad_norm
from nextlat_pt.parallel.local_engine import LocalEngine
from nextlat_pt.train.build import build_training, loss_config, model_spec
from nextlat_pt.train.optim import build_optimizer, lr_at
from nextlat_pt.train.step import MicroBatch, make_forward_step
from nextlat_pt.train.train_module import NextLatTrainModule


@dataclass
class Variant:
    """One objective on the shared model config, with its own model and optimizer."""

    name: str
    horizon: int | None  # NextLat's d; 0: NTP; None: MTP or JTP (see mtp_heads, jtp_steps)
    cfg: Config
    model: NextLatGPT
    module: NextLatTrainModule  # model + objective: what megatron's schedule drives
    engine: Any  # the trainer's engine (local or DeepSpeed), or None (--plain)
    optimizer: torch.optim.Optimizer
    forward_step: Any
    flops_per_token: float
    times: list[float] = field(default_factory=list)
    steps: int = 0
    losses: list[float] = field(default_factory=list)  # every step's loss, warm-up included
    mtp_heads: int = 1  # MTP's n (1: not MTP)
    jtp_steps: int = 0  # JTP's d (0: not JTP)

    @property
    def last_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Median training-step time of NTP vs NextLat d=1, 2 (4), side by side.")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides, e.g. model.num_layers=2 train.micro_batch_size=4")
    parser.add_argument("--repeats", type=int, default=20,
                        help="measured rounds; each runs one step of every variant (default 20)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per variant before measuring (default 2)")
    parser.add_argument("--d4", action="store_true", help="also measure NextLat d=4")
    parser.add_argument("--mtp", type=int, nargs="*", default=[2], metavar="N",
                        help="also measure multi-token prediction with N heads (default: 2; "
                             "--mtp alone: no MTP variant)")
    parser.add_argument("--jtp", type=int, nargs="*", default=[1], metavar="D",
                        help="also measure joint multi-token prediction with D steps "
                             "(default: 1; --jtp alone: no JTP variant)")
    parser.add_argument("--plain", action="store_true",
                        help="torch AdamW + clip_grad_norm instead of the DeepSpeed engine")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the random batch")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads (default: leave torch's choice)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if any(n < 2 for n in args.mtp):
        parser.error("--mtp takes head counts >= 2 (1 is NTP, measured anyway)")
    if any(d < 1 for d in args.jtp):
        parser.error("--jtp takes step counts >= 1")
    return args


def vocab_size(cfg: Config) -> int:
    """The bench's vocabulary: model.vocab_size, else the built-in tokenizer's size."""
    return cfg.model.vocab_size or cfg.data.builtin_vocab_size


def build_variant(name: str, horizon: int | None, overrides: list[str], device: torch.device,
                  plain: bool, mtp_heads: int = 1, jtp_steps: int = 0) -> Variant:
    """The variant's config, model and optimizer, built as the trainer builds them: NTP
    (horizon 0), NextLat d (horizon d), MTP (horizon None, `mtp_heads` heads) or JTP
    (horizon None, `jtp_steps` steps).

    The weights are drawn per parameter from `run.seed`, so every variant starts from the
    same trunk.
    """
    if horizon is None and jtp_steps:
        objective = ["nextlat.objective=jtp", f"nextlat.horizon={jtp_steps}"]
    elif horizon is None:
        objective = ["nextlat.objective=mtp", f"nextlat.mtp_heads={mtp_heads}"]
    elif horizon == 0:
        objective = ["nextlat.objective=ntp"]
    else:
        objective = ["nextlat.objective=nextlat", f"nextlat.horizon={horizon}"]
    cfg = load_config(None, list(overrides) + objective)
    validate(cfg, world_size=1)
    if cfg.parallel.tp * cfg.parallel.pp != 1:
        raise SystemExit("this bench runs one process: parallel.tp and parallel.pp must be 1")
    vocab = vocab_size(cfg)
    spec = model_spec(cfg, vocab)
    if plain:
        model = NextLatGPT(spec).to(device)
        module = NextLatTrainModule(model, loss_config(cfg))
        optimizer = build_optimizer(module, cfg.train)
        engine = None
        forward_step = make_forward_step(module)
    else:
        chunks, engine = build_training(cfg, vocab, device)
        module = chunks[0]
        model = module.model
        optimizer = engine.optimizer
        forward_step = make_forward_step(engine)
    module.train()
    if not horizon:  # NTP, or MTP / JTP (their heads and Fetch are in the spec)
        flops = flops_per_token(spec, cfg.model.seq_len, 0, nextlat=False)
    else:
        flops = flops_per_token(spec, cfg.model.seq_len, horizon, nextlat=True,
                                with_kl=cfg.nextlat.lambda_kl != 0.0)
    return Variant(name=name, horizon=horizon, cfg=cfg, model=model, module=module,
                   engine=engine, optimizer=optimizer, forward_step=forward_step,
                   flops_per_token=flops.total, mtp_heads=spec.mtp_heads,
                   jtp_steps=spec.jtp_steps)


def engine_name(engine: Any, cfg: Config) -> str:
    """What `build_training` chose: the local engine (one fp32 DP rank) or DeepSpeed's."""
    if isinstance(engine, LocalEngine):
        return "local engine (one fp32 DP rank, torch AdamW)"
    return f"DeepSpeed engine (ZeRO-{cfg.parallel.zero_stage})"


def random_batch(cfg: Config, seed: int, device: torch.device) -> list[MicroBatch]:
    """One global batch of random token windows (T+1 tokens each), one document."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size(cfg), (cfg.train.global_batch_size, cfg.model.seq_len + 1),
                           generator=gen)
    micro = cfg.train.micro_batch_size
    return [
        MicroBatch.from_sample({"tokens": chunk, "doc_ids": torch.zeros_like(chunk)}, device)
        for chunk in tokens.split(micro)
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(variant: Variant, batches: list[MicroBatch], forward_backward,
               device: torch.device) -> float:
    """One optimizer step as `Trainer.train_step` takes it (PP = 1); returns its wall time.

    Engine path: lr -> schedule (micro-batches through the engine) -> engine.step() (clip +
    AdamW + zero the grads). Plain path: lr, zero_grad, schedule, clip_grad_norm, AdamW.
    """
    cfg = variant.cfg.train
    lr = lr_at(variant.steps + 1, cfg)
    gc.collect()
    _sync(device)
    start = time.perf_counter()
    if variant.engine is not None:
        set_engine_lr(variant.engine, lr)
    else:
        for group in variant.optimizer.param_groups:
            group["lr"] = lr
        variant.optimizer.zero_grad(set_to_none=True)
    records = forward_backward(
        forward_step_func=variant.forward_step,
        data_iterator=iter(batches),
        model=[variant.module],
        num_microbatches=len(batches),
        seq_length=variant.cfg.model.seq_len,
        micro_batch_size=cfg.micro_batch_size,
        forward_only=False,
    )
    if variant.engine is not None:
        variant.engine.step()
    else:
        clip_grad_norm([p for p in variant.module.parameters() if p.requires_grad],
                       cfg.grad_clip)
        variant.optimizer.step()
    _sync(device)
    elapsed = time.perf_counter() - start
    variant.steps += 1
    variant.losses.append(float(torch.stack([r["loss"].float() for r in records]).mean()))
    return elapsed


def summarize(variants: list[Variant], tokens_per_step: int) -> list[dict[str, Any]]:
    """One row per variant: step-time distribution and ratios over the first (NTP)."""
    base = variants[0]
    base_median = statistics.median(base.times)
    rows = []
    for v in variants:
        q25, median, q75 = quartiles(v.times)
        paired = paired_ratio(v.times, base.times)
        rows.append({
            "variant": v.name,
            "horizon": v.horizon,
            "mtp_heads": v.mtp_heads,
            "jtp_steps": v.jtp_steps,
            "median_s": median,
            "iqr_s": q75 - q25,
            "min_s": min(v.times),
            "ratio_min": min(v.times) / min(base.times),
            "ratio_measured": median / base_median,
            "ratio_paired": paired,
            "ratio_flops": v.flops_per_token / base.flops_per_token,
            "tokens_per_s": tokens_per_step / median,
            "gflops_per_s": v.flops_per_token * tokens_per_step / median / 1e9,
            "flops_per_token": v.flops_per_token,
            "times_s": v.times,
            "losses": v.losses,
            "final_loss": v.last_loss,
        })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'variant':<12} {'median s/step':>13} {'IQR s':>7} {'ratio meas.':>11} "
              f"{'paired':>6} {'min s':>6} {'ratio min':>9} {'ratio FLOPs':>11} "
              f"{'tokens/s':>8} {'GFLOP/s':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['variant']:<12} {r['median_s']:>13.4f} {r['iqr_s']:>7.4f} "
              f"{r['ratio_measured']:>11.3f} {r['ratio_paired']:>6.3f} {r['min_s']:>6.3f} "
              f"{r['ratio_min']:>9.3f} {r['ratio_flops']:>11.3f} {r['tokens_per_s']:>8.0f} "
              f"{r['gflops_per_s']:>7.1f}")


# An extra step timed in the same rotation as the variants (e.g. the HF reference):
# built from the variants and the batch before any of them trains, it returns its name and
# a callable that runs one step and returns its wall time.
ExtraStep = Callable[[list[Variant], list[MicroBatch]], tuple[str, Callable[[], float]]]


def measure(overrides: Sequence[str] = (), *, horizons: Sequence[int] = (0, 1, 2),
            mtp: Sequence[int] = (), jtp: Sequence[int] = (), repeats: int = 20,
            warmup: int = 2, plain: bool = False, seed: int = 1234,
            extra: Sequence[ExtraStep] = ()) -> dict[str, Any]:
    """Build the variants (NTP first, then NextLat for each horizon, then MTP for each head
    count in `mtp`, then JTP for each step count in `jtp`), interleave their training steps,
    return the results.

    Raises ConfigError on a bad override. Initialises the one-process world if needed (the
    caller tears it down). `extra` steps run in the same rotation; their times are under
    `extra_times`.
    """
    if not horizons or horizons[0] != 0:
        raise ValueError("horizons must start with 0 (NTP, the baseline of every ratio)")
    distributed.initialize(1, 1, seed=seed)
    from megatron.core.pipeline_parallel import get_forward_backward_func

    device = distributed.device()
    variants = [build_variant("NTP" if d == 0 else f"NextLat d={d}", d, list(overrides),
                              device, plain) for d in horizons]
    variants += [build_variant(f"MTP n={n}", None, list(overrides), device, plain, n)
                 for n in mtp]
    variants += [build_variant(f"JTP d={d}", None, list(overrides), device, plain,
                               jtp_steps=d) for d in jtp]
    cfg = variants[0].cfg
    batches = random_batch(cfg, seed, device)
    tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_len
    forward_backward = get_forward_backward_func()
    steps = {v.name: partial(train_step, v, batches, forward_backward, device)
             for v in variants}
    extra_names = []
    for make in extra:  # built before any variant steps: they see the initial weights
        name, step = make(variants, batches)
        if name in steps:
            raise ValueError(f"extra step name {name!r} is already taken")
        steps[name] = step
        extra_names.append(name)

    started = time.perf_counter()
    times = interleave(steps, repeats, warmup)
    elapsed = time.perf_counter() - started
    for v in variants:
        v.times = times[v.name]

    spec = next((v for v in reversed(variants) if v.horizon), variants[0]).model.spec
    counts = parameter_counts(spec)
    m = cfg.model
    return {
        "machine": machine_info(),
        "config": cfg.to_dict(),
        "model": {
            "num_layers": m.num_layers, "hidden_size": m.hidden_size, "num_heads": m.num_heads,
            "num_query_groups": cfg.num_query_groups, "ffn_hidden_size": cfg.ffn_hidden_size,
            "vocab_size": spec.vocab_size,
            "padded_vocab_size": padded_vocab_size(spec.vocab_size,
                                                   spec.make_vocab_size_divisible_by, spec.tp),
            "seq_len": m.seq_len, "psi_width": spec.psi_width,
            "trunk_parameters": counts["trunk"], "psi_parameters": counts["psi"],
            "attention_backend": variants[0].model.attention_backend,
            "params_dtype": str(spec.params_dtype),
        },
        "device": str(device),
        "step_path": ("torch AdamW + clip_grad_norm (--plain)" if plain
                      else f"{engine_name(variants[0].engine, cfg)}, as Trainer.train_step"),
        "micro_batches": len(batches),
        "tokens_per_step": tokens_per_step,
        "warmup": warmup,
        "repeats": repeats,
        "elapsed_s": elapsed,
        "rows": summarize(variants, tokens_per_step),
        "extra_times": {name: times[name] for name in extra_names},
        "_variants": variants,  # live objects for callers in this process; not JSON
    }


def json_ready(result: dict[str, Any]) -> dict[str, Any]:
    """The result without its live objects (keys starting with '_')."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    horizons = [0, 1, 2] + ([4] if args.d4 else [])
    print(f"command: {command}", flush=True)
    try:
        result = measure(args.overrides, horizons=horizons, mtp=args.mtp, jtp=args.jtp,
                         repeats=args.repeats,
                         warmup=args.warmup, plain=args.plain, seed=args.seed)
    except ConfigError as err:
        print(f"nextlat_overhead: config error: {err}", file=sys.stderr)
        distributed.destroy()
        return 2
    cfg = result["_variants"][0].cfg
    m, info = result["model"], result["machine"]
    print(f"machine: {describe_machine(info)}")
    print(f"model: {m['num_layers']} layers, D={m['hidden_size']}, {m['num_heads']} heads "
          f"({m['num_query_groups']} kv groups), F={m['ffn_hidden_size']}, vocab "
          f"{m['vocab_size']} (padded {m['padded_vocab_size']}), T={m['seq_len']}, ψ width "
          f"{m['psi_width']}; trunk {m['trunk_parameters']:,} params, ψ "
          f"{m['psi_parameters']:,}; attention {m['attention_backend']}; device "
          f"{result['device']}")
    print(f"step: global batch {cfg.train.global_batch_size} × T {m['seq_len']} = "
          f"{result['tokens_per_step']} tokens, {result['micro_batches']} micro-batch(es) of "
          f"{cfg.train.micro_batch_size}; warmup {args.warmup} steps/variant, "
          f"{args.repeats} interleaved repeats; step path: {result['step_path']}; params "
          f"{m['params_dtype']}")
    if cfg.train.recompute_activations:
        print("note: train.recompute_activations adds a forward of the layers that the FLOP "
              "ratio does not count (it predicts model FLOPs)")
    rows = result["rows"]
    print()
    print_table(rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n({result['elapsed_s']:.0f} s of stepping, load average now {load:.2f}; losses "
          "after the last step: "
          + ", ".join(f"{r['variant']} {r['final_loss']:.3f}" for r in rows) + ")")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(json_ready(result), command=command), f, indent=2)
        print(f"wrote {args.json}")
    distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
