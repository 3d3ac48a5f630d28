"""Self-speculative decoding with ψ vs plain decoding, on a model trained with the framework.

    python bench/speculative_decoding.py [--model DIR | --train-dir DIR --train-steps N]
        [--prompts 8] [--prompt-len 128] [--new-tokens 128] [--repeats 3] [--max-k 8]
        [--thresholds 0.1 0.25 0.5] [--threads 1] [--out docs/results/speculative_decoding]

What is measured
----------------
The model: `--model` (a checkpoint, run directory or export with ψ), or else the tiny default
job (4 layers, D=256, vocab 4096, NextLat d=1) trained here for `--train-steps` steps on the
built-in corpus (`nextlat-pt train run.dir=--train-dir train.max_steps=N`).

The prompts: `--prompts` documents of the built-in corpus's VALIDATION split (files the model
never trained on), each cut to a `--prompt-len`-token window from the middle of the file.

Each decoding configuration continues every prompt by `--new-tokens` tokens, one prompt at a
time (batch 1), with our KV-cached decoder in fp32, EOS ignored: plain decoding, static
K = 1..max-k, the confidence-threshold policy for each `--thresholds` value (K ≤ max-k) and the
acceptance-adaptive policy (K starts at 2, ±1, in [1, max-k]). Both greedy decoding and
sampling at τ = 1 (no top-k/top-p) are measured.

Fairness on a shared machine: every configuration is warmed up once, then the repeats are
interleaved (each repeat runs every configuration on all prompts, the order rotated by one
per repeat). The speedup is the median over repeats of (plain time / configuration time)
within the same repeat, in CPU time of this (single-threaded) process: on a machine shared
with other jobs the wall clock mostly measures how long the scheduler kept us waiting, while
the CPU time is what the decoding costs, i.e. the wall time on an idle core. The wall-clock
speedup is reported beside it. Accepted tokens per cycle excludes the always-accepted token (so a
cycle emits 1 + accepted tokens), as in the paper.

Writes OUT.json (everything), OUT.md (the table) and OUT.png (accepted tokens/cycle and
speedup vs K) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Config:
    """One decoding configuration and its measurements."""

    name: str
    k: int | None  # the static K (0 = plain), None for adaptive
    policy_factory: object = None
    times: list[float] = field(default_factory=list)  # per repeat: wall s over all prompts
    cpu_times: list[float] = field(default_factory=list)  # per repeat: CPU s over all prompts
    cycles: int = 0
    drafted: int = 0
    accepted: int = 0
    new_tokens: int = 0
    outputs: list[list[int]] = field(default_factory=list)  # first repeat, per prompt


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a checkpoint/run dir or export with ψ")
    parser.add_argument("--train-dir", type=Path, default=REPO / "runs" / "spec_bench",
                        help="where to train when --model is not given")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--cache-dir", type=Path, default=REPO / "runs" / ".cache",
                        help="data.cache_dir for training")
    parser.add_argument("--corpus-dir", type=Path,
                        help="the built-in corpus cache the prompts come from (default: the "
                             "directory of the model's tokenizer)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-k", type=int, default=8)
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.1, 0.25, 0.5])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=REPO / "docs" / "results" / "speculative_decoding",
                        help="output path without extension (.json, .md, .png are written)")
    return parser.parse_args()


def train_model(args: argparse.Namespace) -> Path:
    """The tiny default job, trained for --train-steps (skipped when already done)."""
    from nextlat_pt.checkpointing.format import is_complete, list_checkpoints

    ckpts = [p for p in list_checkpoints(args.train_dir / "checkpoints") if is_complete(p)]
    if ckpts and ckpts[-1].name == f"step_{args.train_steps:07d}":
        print(f"using the trained model in {args.train_dir}")
        return args.train_dir
    cmd = [sys.executable, "-m", "nextlat_pt", "train", f"run.dir={args.train_dir}",
           f"train.max_steps={args.train_steps}", "logging.wandb=disabled",
           f"data.cache_dir={args.cache_dir}"]
    print("training:", " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return args.train_dir


def validation_prompts(args: argparse.Namespace, weights) -> list[list[int]]:
    """Windows from the middle of held-out (validation) files of the built-in corpus the
    model was trained on (the cache directory its tokenizer lives in)."""
    from nextlat_pt.data.tokenizer import Tokenizer

    corpus_dir = args.corpus_dir or (weights.tokenizer_path.parent
                                     if weights.tokenizer_path else None)
    if corpus_dir is None or not (corpus_dir / "valid.npy").is_file():
        raise SystemExit("no built-in corpus cache (valid.npy) found beside the model's "
                         "tokenizer; pass --corpus-dir (a runs/.cache/stdlib-* directory)")
    tokenizer = Tokenizer.load(corpus_dir / "tokenizer.model")
    if weights.tokenizer_fingerprint not in (None, tokenizer.fingerprint):
        raise SystemExit(f"{corpus_dir} has another tokenizer than the model")
    tokens = np.load(corpus_dir / "valid.npy").astype(np.int64)
    ends = np.flatnonzero(tokens == tokenizer.eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    need = args.prompt_len + args.new_tokens
    prompts = []
    for start, end in zip(starts, ends):
        if end - start >= need:
            offset = start + (end - start - need) // 2
            prompts.append(tokens[offset: offset + args.prompt_len].tolist())
        if len(prompts) == args.prompts:
            break
    if len(prompts) < args.prompts:
        raise SystemExit(f"only {len(prompts)} validation files have {need} tokens")
    return prompts


def build_configs(args: argparse.Namespace) -> list[Config]:
    from nextlat_pt.generate.policies import AcceptanceDraft, ConfidenceDraft, StaticDraft

    configs = [Config("plain", 0)]
    configs += [Config(f"K={k}", k, (lambda k=k: StaticDraft(k)))
                for k in range(1, args.max_k + 1)]
    configs += [Config(f"threshold {t:g}", None,
                       (lambda t=t: ConfidenceDraft(t, args.max_k))) for t in args.thresholds]
    configs.append(Config("acceptance", None,
                          lambda: AcceptanceDraft(min(2, args.max_k), 1, args.max_k)))
    return configs


def run_config(config: Config, target, drafter, prompts, args, sampling, seed: int):
    from nextlat_pt.generate.speculative import GenerationStats, generate

    total = GenerationStats()
    outputs = []
    cpu = 0.0
    for i, prompt in enumerate(prompts):
        policy = config.policy_factory() if config.policy_factory else None
        generator = torch.Generator().manual_seed(seed * 1000 + i)
        start = time.process_time()
        result = generate(target, [prompt], args.new_tokens, sampling,
                          drafter=drafter if policy else None, policy=policy,
                          generator=generator)
        cpu += time.process_time() - start
        total.merge(result.stats)
        outputs.append(result.tokens[0])
    return total, outputs, cpu


def measure(mode: str, sampling, configs: list[Config], target, drafter, prompts,
            args) -> dict:
    for config in configs:  # warm-up: allocator, thread pool, code paths
        run_config(config, target, drafter, prompts[:1], args, sampling, seed=999)
    for repeat in range(args.repeats):
        order = configs[repeat % len(configs):] + configs[: repeat % len(configs)]
        for config in order:
            # The same seeds for every configuration: sampled runs differ only by drafting.
            stats, outputs, cpu = run_config(config, target, drafter, prompts, args,
                                             sampling, seed=args.seed + repeat)
            config.times.append(stats.wall_s)
            config.cpu_times.append(cpu)
            config.cycles += stats.cycles
            config.drafted += stats.drafted
            config.accepted += stats.accepted
            config.new_tokens += stats.new_tokens
            if repeat == 0:
                config.outputs = outputs
        print(f"  {mode}: repeat {repeat + 1}/{args.repeats} done", flush=True)
    plain = configs[0]
    rows = []
    for config in configs:
        ratios = [p / c for p, c in zip(plain.cpu_times, config.cpu_times)]
        wall_ratios = [p / c for p, c in zip(plain.times, config.times)]
        row = {
            "mode": mode, "config": config.name, "k": config.k,
            "accepted_per_cycle": config.accepted / config.cycles,
            "tokens_per_cycle": 1 + config.accepted / config.cycles,
            "drafted_per_cycle": config.drafted / config.cycles,
            "acceptance_rate": config.accepted / config.drafted if config.drafted else None,
            "median_cpu_s": statistics.median(config.cpu_times),
            "cpu_tokens_per_s": config.new_tokens / sum(config.cpu_times),
            "speedup": statistics.median(ratios),
            "speedup_min": min(ratios), "speedup_max": max(ratios),
            "wall_tokens_per_s": config.new_tokens / sum(config.times),
            "wall_speedup": statistics.median(wall_ratios),
            "cpu_times_s": config.cpu_times, "wall_times_s": config.times,
        }
        if mode == "greedy":
            row["prompts_differing_from_plain"] = sum(
                a != b for a, b in zip(config.outputs, plain.outputs))
        rows.append(row)
    return {"mode": mode, "rows": rows}


def table(results: list[dict], args: argparse.Namespace) -> str:
    lines = ["| mode | config | accepted/cycle | tokens/cycle | drafted/cycle | acceptance | "
             "CPU tokens/s | speedup, CPU time (median [min, max]) | speedup, wall | "
             "greedy = plain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for r in result["rows"]:
            acc = "–" if r["acceptance_rate"] is None else f"{100 * r['acceptance_rate']:.0f}%"
            same = ("–" if "prompts_differing_from_plain" not in r else
                    f"{args.prompts - r['prompts_differing_from_plain']}/{args.prompts}")
            lines.append(
                f"| {r['mode']} | {r['config']} | {r['accepted_per_cycle']:.2f} | "
                f"{r['tokens_per_cycle']:.2f} | {r['drafted_per_cycle']:.2f} | {acc} | "
                f"{r['cpu_tokens_per_s']:.0f} | {r['speedup']:.2f} [{r['speedup_min']:.2f}, "
                f"{r['speedup_max']:.2f}] | {r['wall_speedup']:.2f} | {same} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"greedy": "tab:blue", "sampled τ=1": "tab:orange"}
    for result in results:
        rows = result["rows"]
        static = [r for r in rows if r["k"]]
        adaptive = [r for r in rows if r["k"] is None]
        color = colors.get(result["mode"], "k")
        for ax, key in zip(axes, ("accepted_per_cycle", "speedup")):
            ax.plot([r["k"] for r in static], [r[key] for r in static], "o-", color=color,
                    label=f"{result['mode']}: static K")
            for style, r in zip(("--", ":", "-.", (0, (8, 2, 1, 2, 1, 2)), (0, (1, 4))),
                                adaptive):
                ax.axhline(r[key], linestyle=style, color=color, alpha=0.7,
                           label=f"{result['mode']}: {r['config']}")
    axes[0].set(xlabel="draft length K", ylabel="accepted tokens / cycle",
                title="accepted drafts per verification cycle")
    axes[1].axhline(1.0, color="grey", linewidth=0.8)
    axes[1].set(xlabel="draft length K", ylabel="speedup over plain decoding",
                title="speedup in CPU time (median over repeats)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def model_info(model: Path) -> dict:
    """Step and last losses of the model, when it is one of our runs/checkpoints."""
    try:
        from nextlat_pt.convert.source import open_checkpoint
        from nextlat_pt.convert.to_hf import final_metrics

        ckpt = open_checkpoint(model)
        m = final_metrics(ckpt)
        return {"checkpoint": str(ckpt.path), "step": ckpt.state.get("step"),
                "tokens_seen": ckpt.state.get("tokens_seen"), "val_ce": m.get("val_ce"),
                "train_ce": m.get("ce"), "latent": m.get("latent"), "kl": m.get("kl"),
                "horizon": ckpt.config.nextlat.horizon}
    except Exception as err:  # an export: no trainer state to read
        return {"path": str(model), "note": f"no checkpoint info ({err})"}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from nextlat_pt.generate.sampling import SamplingParams
    from nextlat_pt.generate.weights import load_weights, target_and_drafter

    model = args.model or train_model(args)
    weights = load_weights(model)
    if weights.psi is None:
        raise SystemExit(f"{model} has no ψ: speculative decoding needs a NextLat model")
    prompts = validation_prompts(args, weights)
    target, drafter = target_and_drafter(weights)
    info = model_info(model)
    print(f"model: {weights.description}; {info}")
    results = []
    started = time.time()
    for mode, sampling in (("greedy", SamplingParams(greedy=True)),
                           ("sampled τ=1", SamplingParams(temperature=1.0))):
        results.append(measure(mode, sampling, build_configs(args), target, drafter, prompts,
                               args))
    text = table(results, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    setup = (f"{len(prompts)} validation prompts × {args.prompt_len} tokens → "
             f"{args.new_tokens} new tokens, batch 1, fp32, {args.threads} thread(s), "
             f"{args.repeats} interleaved repeats")
    record = {
        "model": info, "description": weights.description, "settings": vars(args) | {
            "model": str(model), "train_dir": str(args.train_dir),
            "cache_dir": str(args.cache_dir), "out": str(args.out),
            "corpus_dir": str(args.corpus_dir)},
        "setup": setup,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "cpu": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "duration_s": time.time() - started, "results": results,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    header = (f"# Self-speculative decoding with ψ vs plain decoding\n\n"
              f"Model: {weights.description} (val CE {info.get('val_ce')}).\n"
              f"Setup: {setup}.\nCommand: `python bench/speculative_decoding.py "
              f"{' '.join(sys.argv[1:])}`\n\n")
    args.out.with_suffix(".md").write_text(header + text + "\n")
    plot(results, args.out.with_suffix(".png"), f"{weights.description}\n{setup}")
    print(f"wrote {args.out}.json/.md/.png in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
