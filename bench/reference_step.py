"""Our training step against a plain PyTorch reference: HF `LlamaForCausalLM` + torch AdamW.

    python bench/reference_step.py [--repeats N] [--warmup W] [--d1] [--threads N]
                                   [--json PATH] [section.key=value ...]

What is compared
----------------
Ours: the framework's real step for the objective NTP (and, with `--d1`, NextLat d=1), built
and timed exactly as `bench/nextlat_overhead.py` does (`build_training`: megatron-core model,
the trainer's engine (in one process: the local engine, torch AdamW with DeepSpeed's clipping
arithmetic), megatron's forward-backward schedule).

Reference: `transformers.LlamaForCausalLM` of the identical architecture (layers, width,
heads, GQA groups, SwiGLU width, untied/tied, RoPE base, RMSNorm eps,
attn_implementation="sdpa"), holding **our initial weights** (copied through
`nextlat_pt/convert/llama_mapping.py`), trained on the same batch: zero_grad, forward,
fp32 cross-entropy of the logits against the next tokens (mean over tokens, divided by the
micro-batch count and accumulated as megatron does), backward, `clip_grad_norm_`,
`torch.optim.AdamW` (defaults: the per-tensor path on CPU, foreach on CUDA; the same lr
schedule, betas, eps and weight-decay split as ours: decay on matrices only). Same process,
same threads, interleaved round-robin with our variants (warm-up first, the order rotated each
repeat); medians. A second reference, `HF Llama + fused AdamW`, is the same with torch's
single-kernel AdamW (`fused=True`), which our framework uses: ours over it isolates the model,
the loss and the step's plumbing from the optimizer kernel.

Vocabulary: megatron pads the embedding and the LM head to a multiple of
`make_vocab_size_divisible_by`; the reference is built with the same **padded** vocabulary so
both compute the same logits (with the default vocab 4096 nothing is padded).

Honesty check: both start from the same weights, so the loss of the first step (computed
before any update) must agree to ~1e-5; `loss_max_abs_diff` also follows the losses through
every later step (the two AdamW implementations then drift only by rounding).

`ratio` = median(our step) / median(reference step); the target is <= 1.0. `paired` is the
median of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from benchlib import describe_machine, paired_ratio, quartiles
from nextlat_overhead import ExtraStep, Variant, json_ready
from nextlat_overhead import measure as measure_steps
from torch import Tensor

from nextlat_pt.config import ConfigError
from nextlat_pt.convert import llama_mapping as lm
from nextlat_pt.convert.hf_config import llama_config
from nextlat_pt.model.gpt import NextLatGPT
from nextlat_pt.model.shape import ModelShape
from nextlat_pt.parallel import distributed
from nextlat_pt.train.optim import lr_at, param_groups
from nextlat_pt.train.step import MicroBatch

REFERENCE = "HF Llama + AdamW"
REFERENCE_FUSED = "HF Llama + fused AdamW"
LOSS_TOLERANCE = 1e-5  # |first loss (ours) - first loss (reference)|: the same function


def llama_shape(model: NextLatGPT) -> ModelShape:
    """The HF shape of our model, with the padded vocabulary (the logits we compute)."""
    spec = model.spec
    if spec.tp != 1 or spec.pp != 1:
        raise ValueError("the reference comparison needs the whole model in one process "
                         "(tp = pp = 1)")
    # megatron takes an integer RoPE base: the HF model gets the base ours computes with.
    return dataclasses.replace(spec, vocab_size=model.padded_vocab_size,
                               rotary_base=float(int(spec.rotary_base)))


def hf_state_dict(model: NextLatGPT, tensors: dict[str, Tensor] | None = None
                  ) -> dict[str, Tensor]:
    """Our (TP=1) weights under HF Llama names, padded vocabulary kept.

    `tensors` (our parameter name -> tensor, e.g. the gradients) replaces the weights.
    """
    shape = llama_shape(model)
    state = tensors if tensors is not None else {
        k: v.detach() for k, v in model.state_dict().items() if isinstance(v, Tensor)}
    local = {"input_norm": "input_layernorm.weight",
             "qkv": "self_attention.linear_qkv.weight",
             "proj": "self_attention.linear_proj.weight",
             "mlp_norm": "pre_mlp_layernorm.weight",
             "fc1": "mlp.linear_fc1.weight",
             "fc2": "mlp.linear_fc2.weight"}
    out = {"model.embed_tokens.weight": state[lm.EMBEDDING],
           "model.norm.weight": state[lm.FINAL_NORM]}
    if not shape.tie_embeddings:
        out["lm_head.weight"] = state[lm.OUTPUT_LAYER]
    for i in range(shape.num_layers):
        tensors = {key: state[f"gpt.decoder.layers.{i}.{name}"] for key, name in local.items()}
        out.update(lm.megatron_layer_to_hf(i, tensors, shape.num_heads, shape.num_query_groups,
                                           shape.head_dim))
    return out


def build_hf_model(model: NextLatGPT):
    """`LlamaForCausalLM` (sdpa attention) of our model's architecture and current weights,
    on its device and in its parameter dtype."""
    from transformers import LlamaForCausalLM

    weight = model.gpt.embedding.word_embeddings.weight
    config = llama_config(llama_shape(model), str(weight.dtype).removeprefix("torch."))
    config.use_cache = False
    # HF builds its embedding with padding_idx=pad_token_id, which keeps that row's gradient
    # at zero; ours has no such row (a PAD id in the batch is trained like any token).
    config.pad_token_id = None
    hf = LlamaForCausalLM._from_config(config, attn_implementation="sdpa",
                                       dtype=weight.dtype)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    # A tied head is the embedding itself: HF reports it missing but ties it.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping to HF Llama incomplete: missing {missing}, "
                           f"unexpected {unexpected}")
    if config.tie_word_embeddings:
        hf.tie_weights()
    return hf.to(weight.device).train()


def reference_loss(hf, batch: MicroBatch) -> Tensor:
    """Mean fp32 cross-entropy of the reference's logits against the next tokens."""
    logits = hf(input_ids=batch.input_ids).logits  # [B, T, V]
    targets = batch.labels.t()  # ours are [T, B]
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


class ReferenceStep:
    """The plain PyTorch training step on the HF model, with our lr schedule and clipping.

    `fused_adamw` gives it torch's single-kernel AdamW, which our framework uses: the
    comparison then isolates the model, the loss and the step's plumbing.
    """

    def __init__(self, hf, variant: Variant, batches: list[MicroBatch],
                 fused_adamw: bool = False, autocast: torch.dtype | None = None,
                 compiled: bool = False) -> None:
        train = variant.cfg.train
        self.hf, self.train, self.batches = hf, train, batches
        self.device = batches[0].input_ids.device
        # What a plain GPU user writes: fp32 weights, bf16 autocast, `torch.compile(model)`.
        self.forward_model = torch.compile(hf) if compiled else hf
        self.autocast = autocast
        self.optimizer = torch.optim.AdamW(param_groups(hf, train.weight_decay), lr=train.lr,
                                           betas=(train.beta1, train.beta2), eps=train.adam_eps,
                                           fused=True if fused_adamw else None)
        self.params = [p for p in hf.parameters() if p.requires_grad]
        self.steps = 0
        self.losses: list[float] = []

    def __call__(self) -> float:
        """One optimizer step over the batch's micro-batches; returns its wall time."""
        lr = lr_at(self.steps + 1, self.train)
        gc.collect()  # as in the variants' step: no collection inside the timed region
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for batch in self.batches:
            with torch.autocast(self.device.type, dtype=self.autocast,
                                enabled=self.autocast is not None):
                loss = reference_loss(self.forward_model, batch)
            (loss / len(self.batches)).backward()
            losses.append(loss.detach())
        if self.train.grad_clip > 0:  # as DeepSpeed: 0 turns clipping off
            torch.nn.utils.clip_grad_norm_(self.params, self.train.grad_clip)
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.steps += 1
        self.losses.append(float(torch.stack(losses).mean()))
        return elapsed


def reference_factory(holder: dict[str, ReferenceStep], fused_adamw: bool = False
                      ) -> Callable[[list[Variant], list[MicroBatch]],
                                    tuple[str, Callable[[], float]]]:
    """An `extra` step for `nextlat_overhead.measure`: the reference, built from the NTP
    variant's initial weights; the live object is left in `holder['step']`."""

    def make(variants: list[Variant], batches: list[MicroBatch]
             ) -> tuple[str, Callable[[], float]]:
        ntp = next(v for v in variants if v.horizon == 0)
        step = ReferenceStep(build_hf_model(ntp.model), ntp, batches, fused_adamw)
        holder["step"] = step
        return (REFERENCE_FUSED if fused_adamw else REFERENCE), step

    return make


def autocast_reference_factory(name: str, compiled: bool
                                ) -> Callable[[list[Variant], list[MicroBatch]],
                                              tuple[str, Callable[[], float]]]:
    """An `extra` step: HF Llama of our NTP model's shape and initial weights in fp32 under
    bf16 autocast, fused AdamW, eager or `torch.compile`d: the reference a GPU user writes
    in a dozen lines (bench/gpu/check_gpu.py)."""

    def make(variants: list[Variant], batches: list[MicroBatch]
             ) -> tuple[str, Callable[[], float]]:
        ntp = next(v for v in variants if v.horizon == 0)
        hf = build_hf_model(ntp.model).float()
        return name, ReferenceStep(hf, ntp, batches, fused_adamw=True,
                                   autocast=torch.bfloat16, compiled=compiled)

    return make


def compare(rows: list[dict[str, Any]], ref_times: list[float], ref_losses: list[float],
            tokens_per_step: int) -> dict[str, Any]:
    """Our variants over the reference, plus the loss agreement of NTP with it."""
    q25, median, q75 = quartiles(ref_times)
    out: dict[str, Any] = {
        "reference": {"median_s": median, "iqr_s": q75 - q25, "min_s": min(ref_times),
                      "tokens_per_s": tokens_per_step / median, "times_s": ref_times,
                      "losses": ref_losses},
        "ratios": [],
    }
    for row in rows:
        out["ratios"].append({
            "variant": row["variant"],
            "horizon": row["horizon"],
            "ratio": row["median_s"] / median,
            "ratio_paired": paired_ratio(row["times_s"], ref_times),
            "ratio_min": row["min_s"] / min(ref_times),
        })
    ntp = next(r for r in rows if r["horizon"] == 0)
    n = min(len(ntp["losses"]), len(ref_losses))
    diffs = [abs(a - b) for a, b in zip(ntp["losses"][:n], ref_losses[:n])]
    out["equivalence"] = {
        "first_loss_ours": ntp["losses"][0],
        "first_loss_reference": ref_losses[0],
        "first_loss_abs_diff": diffs[0],
        "loss_max_abs_diff": max(diffs),
        "steps_compared": n,
        "tolerance": LOSS_TOLERANCE,
        "same_function": diffs[0] <= LOSS_TOLERANCE,
    }
    return out


def measure(overrides: Sequence[str] = (), *, horizons: Sequence[int] = (0,),
            mtp: Sequence[int] = (), jtp: Sequence[int] = (), repeats: int = 20,
            warmup: int = 2, seed: int = 1234,
            extra: Sequence[ExtraStep] = ()) -> dict[str, Any]:
    """Our variants (`horizons`, NTP first; MTP with each head count of `mtp`, JTP with each
    step count of `jtp`) and the
    reference, interleaved in one run.

    Returns nextlat_overhead's result plus `reference` (HF + default AdamW, see `compare`)
    and `reference_fused_adamw` (HF + torch's fused AdamW, as ours); `extra` steps join the
    same rotation (their times under `extra_times`).
    """
    plain: dict[str, ReferenceStep] = {}
    fused: dict[str, ReferenceStep] = {}
    result = measure_steps(overrides, horizons=horizons, mtp=mtp, jtp=jtp, repeats=repeats,
                           warmup=warmup, seed=seed,
                           extra=[reference_factory(plain),
                                  reference_factory(fused, fused_adamw=True), *extra])
    result["reference"] = compare(result["rows"], result["extra_times"][REFERENCE],
                                  plain["step"].losses, result["tokens_per_step"])
    result["reference_fused_adamw"] = compare(
        result["rows"], result["extra_times"][REFERENCE_FUSED], fused["step"].losses,
        result["tokens_per_step"])
    return result


def print_comparison(result: dict[str, Any]) -> None:
    """Each reference's step and each of ours over it."""
    print(f"{'step':<24} {'median s':>9} {'IQR s':>7} {'tokens/s':>9} {'ours/ref':>8} "
          f"{'paired':>7}")
    for name, key in ((REFERENCE, "reference"), (REFERENCE_FUSED, "reference_fused_adamw")):
        ref = result[key]
        r = ref["reference"]
        print(f"{name:<24} {r['median_s']:>9.4f} {r['iqr_s']:>7.4f} "
              f"{r['tokens_per_s']:>9.0f} {'':>8} {'':>7}")
        for row, ratio in zip(result["rows"], ref["ratios"]):
            print(f"{'  ours, ' + row['variant']:<24} {row['median_s']:>9.4f} "
                  f"{row['iqr_s']:>7.4f} {row['tokens_per_s']:>9.0f} {ratio['ratio']:>8.3f} "
                  f"{ratio['ratio_paired']:>7.3f}")
    eq = result["reference"]["equivalence"]
    print(f"\nfirst loss: ours {eq['first_loss_ours']:.6f}, reference "
          f"{eq['first_loss_reference']:.6f}, |diff| {eq['first_loss_abs_diff']:.2e} "
          f"({'same function' if eq['same_function'] else 'NOT THE SAME FUNCTION'}); max "
          f"|diff| over {eq['steps_compared']} steps {eq['loss_max_abs_diff']:.2e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides (section.key=value)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--d1", action="store_true", help="also time NextLat d=1")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    print(f"command: {command}", flush=True)
    try:
        result = measure(args.overrides, horizons=(0, 1) if args.d1 else (0,),
                         repeats=args.repeats, warmup=args.warmup, seed=args.seed)
    except ConfigError as err:
        print(f"reference_step: config error: {err}", file=sys.stderr)
        distributed.destroy()
        return 2
    m = result["model"]
    print(f"machine: {describe_machine(result['machine'])}")
    print(f"model: {m['num_layers']} layers, D={m['hidden_size']}, {m['num_heads']} heads "
          f"({m['num_query_groups']} kv groups), F={m['ffn_hidden_size']}, vocab "
          f"{m['vocab_size']} (both padded to {m['padded_vocab_size']}), T={m['seq_len']}; "
          f"{result['tokens_per_step']} tokens/step; {result['repeats']} interleaved repeats "
          f"after {result['warmup']} warm-up steps; ours: {result['step_path']}\n")
    print_comparison(result)
    print(f"our NTP step / reference: {result['reference']['ratios'][0]['ratio_paired']:.3f} "
          f"(paired; target <= 1.0); / the fused-AdamW reference: "
          f"{result['reference_fused_adamw']['ratios'][0]['ratio_paired']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(json_ready(result), command=command), f, indent=2)
        print(f"wrote {args.json}")
    distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
