"""The paper's objectives side by side under one trainer, at CPU size: NTP, NextLat d=1 and
d=2, MTP (2 heads) and JTP (d=1, i.e. 2 tokens predicted jointly), on the built-in corpus at
equal tokens, several seeds, trained with `nextlat-pt sweep`.

    python experiments/objectives.py [--budget cpu|smoke] [--seeds N] [--out PATH]

What it does:
1. Two sweeps (one grid cannot pair NextLat's horizons with the other objectives without
   duplicate runs): `--grid nextlat.objective=ntp,mtp,jtp` and, for NextLat,
   `--grid nextlat.horizon=1,2`; each with `--seeds N`, run at the same time (one torch
   thread each). Finished runs are skipped and interrupted ones resume, so a relaunch
   continues.
2. `nextlat-pt sweep --report` on each: final validation CE, mean ± std over seeds.
3. `bench/nextlat_overhead.py` on the same model: step time over NTP (paired median of
   interleaved steps) beside the FLOP ratio (nextlat_pt/flops.py).
4. Greedy self-speculative decoding on validation prompts for every NextLat and MTP run:
   tokens per cycle (1 + accepted drafts) at K = d (MTP: its n − 1 = 1 extra head) and, for
   NextLat, at K = 4 (its drafts are not limited to the training horizon).

Writes OUT.md, OUT.json and OUT.png (validation CE per objective and seed, training curves).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study import REPO, machine  # noqa: E402

BUDGETS = {
    # 4 layers × D=256 (the tiny default), T=128, 8 windows per step: 1,024 tokens per step
    "cpu": {"steps": 400, "prompts": 8, "prompt_len": 64, "new_tokens": 64, "repeats": 10},
    "smoke": {"steps": 4, "prompts": 2, "prompt_len": 16, "new_tokens": 8, "repeats": 2},
}
MODEL = ["model.seq_len=128", "train.micro_batch_size=8", "train.global_batch_size=8"]
VARIANTS = {  # name -> (sweep, grid point)
    "NTP": ("others", {"nextlat.objective": "ntp"}),
    "NextLat d=1": ("nextlat", {"nextlat.horizon": "1"}),
    "NextLat d=2": ("nextlat", {"nextlat.horizon": "2"}),
    "MTP n=2": ("others", {"nextlat.objective": "mtp"}),
    "JTP d=1": ("others", {"nextlat.objective": "jtp"}),
}
BENCH_NAMES = {"NTP": "NTP", "NextLat d=1": "NextLat d=1", "NextLat d=2": "NextLat d=2",
               "MTP n=2": "MTP n=2", "JTP d=1": "JTP d=1"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=list(BUDGETS), default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "objectives")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "objectives",
                        help="where the sweeps train (default runs/objectives)")
    return parser.parse_args()


def base_overrides(budget: dict) -> list[str]:
    steps = budget["steps"]
    return [*MODEL, f"train.max_steps={steps}", f"logging.interval={max(1, steps // 40)}",
            f"train.eval_interval={max(1, steps // 4)}", "logging.wandb=disabled",
            "logging.plot=false", "checkpoint.interval=0"]


def sweep_commands(args: argparse.Namespace, budget: dict) -> dict[str, list[str]]:
    """The two `nextlat-pt sweep` command lines (base: the tiny defaults + MODEL)."""
    base = base_overrides(budget)
    cli = [sys.executable, "-m", "nextlat_pt", "sweep", "--seeds", str(args.seeds)]
    return {
        "others": [*cli, "--out", str(args.work / "others"),
                   "--grid", "nextlat.objective=ntp,mtp,jtp", *base,
                   "nextlat.horizon=1", "nextlat.mtp_heads=2"],
        "nextlat": [*cli, "--out", str(args.work / "nextlat"),
                    "--grid", "nextlat.horizon=1,2", *base, "nextlat.objective=nextlat"],
    }


def run_sweeps(commands: dict[str, list[str]], work: Path) -> dict[str, float]:
    """Both sweeps at once, one torch thread each; their wall times."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    work.mkdir(parents=True, exist_ok=True)
    procs, started = {}, time.time()
    for name, cmd in commands.items():
        print("sweep:", " ".join(cmd), flush=True)
        log = open(work / f"{name}.log", "a")
        procs[name] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                        stderr=subprocess.STDOUT), log)
    walls = {}
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"sweep {name} failed: see {work / name}.log")
        log.close()
        walls[name] = time.time() - started
    return walls


def sweep_rows(sweep_dir: Path) -> list[dict]:
    """`nextlat-pt sweep --report DIR`'s rows (it writes report.json)."""
    subprocess.run([sys.executable, "-m", "nextlat_pt", "sweep", "--report", str(sweep_dir)],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads((sweep_dir / "report.json").read_text())["rows"]


def run_dirs(sweep_dir: Path, point: dict[str, str]) -> list[Path]:
    """The run directories of one grid point, in seed order."""
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    return [Path(r["dir"]) for r in plan["runs"] if r["point"] == point]


def bench(budget: dict, out_json: Path) -> dict[str, dict]:
    """Step time over NTP and the FLOP ratio of every variant, on the sweeps' model."""
    cmd = [sys.executable, str(REPO / "bench" / "nextlat_overhead.py"), "--repeats",
           str(budget["repeats"]), "--mtp", "2", "--jtp", "1", "--json", str(out_json),
           *MODEL]
    print("bench:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    rows = json.loads(out_json.read_text())["rows"]
    return {r["variant"]: r for r in rows}


def tokens_per_cycle(run_dir: Path, draft_lens: list[int], budget: dict) -> dict[int, float]:
    """Greedy self-speculative decoding of the run's final model on validation prompts:
    tokens emitted per target pass, at each static draft length K."""
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from speculative_decoding import validation_prompts

    from nextlat_pt.generate.policies import StaticDraft
    from nextlat_pt.generate.sampling import SamplingParams
    from nextlat_pt.generate.speculative import GenerationStats, generate
    from nextlat_pt.generate.weights import load_weights, target_and_drafter

    torch.set_num_threads(2)
    weights = load_weights(run_dir)
    prompts = None
    # the built-in corpus cache the run trained on (the checkpoint keeps only the tokenizer)
    for corpus in sorted((REPO / "runs" / ".cache").glob("stdlib-*")):
        try:
            prompts = validation_prompts(SimpleNamespace(
                corpus_dir=corpus, prompt_len=budget["prompt_len"],
                new_tokens=budget["new_tokens"], prompts=budget["prompts"]), weights)
            break
        except SystemExit:
            continue  # another tokenizer's cache
    if prompts is None:
        raise SystemExit(f"no built-in corpus cache under runs/.cache matches {run_dir}")
    target, drafter = target_and_drafter(weights)
    out = {}
    for k in draft_lens:
        total = GenerationStats()
        for prompt in prompts:
            result = generate(target, [prompt], budget["new_tokens"],
                              SamplingParams(greedy=True), drafter=drafter,
                              policy=StaticDraft(k))
            total.merge(result.stats)
        out[k] = total.tokens_per_cycle
    return out


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    names = list(results["variants"])
    for i, name in enumerate(names):
        v = results["variants"][name]
        left.plot([i] * len(v["val_ce_per_seed"]), v["val_ce_per_seed"], "o", color=f"C{i}")
        left.errorbar(i + 0.15, v["val_ce"], yerr=v["val_ce_std"] or 0, fmt="s",
                      color=f"C{i}", capsize=3)
        for j, curve in enumerate(v["train_curves"]):
            if curve:
                right.plot(*zip(*curve), color=f"C{i}", alpha=0.6,
                           label=name if j == 0 else None)
    left.set_xticks(range(len(names)), names, rotation=20)
    left.set_ylabel("final validation CE (nats/token)")
    left.set_title("per seed (•) and mean ± std (■)")
    right.set_xlabel("step")
    right.set_ylabel("training next-token CE")
    right.set_title("training curves, every seed")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train_curve(run_dir: Path) -> list[tuple[int, float]]:
    path = run_dir / "metrics.jsonl"
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [(r["step"], r["ce"]) for r in records if r.get("ce") is not None]


def main() -> None:
    args = parse_args()
    budget = BUDGETS[args.budget]
    commands = sweep_commands(args, budget)
    walls = run_sweeps(commands, args.work)
    sweeps = {name: args.work / name for name in commands}
    rows = {name: sweep_rows(path) for name, path in sweeps.items()}
    steps = bench(budget, args.work / "bench.json")
    variants = {}
    for name, (sweep, point) in VARIANTS.items():
        row = next(r for r in rows[sweep] if r["point"] == point)
        dirs = run_dirs(sweeps[sweep], point)
        bench_row = steps[BENCH_NAMES[name]]
        entry = {"sweep": str(sweeps[sweep]), "point": point, "finished": row["finished"],
                 "runs": row["runs"], "val_ce": row["val_ce"], "val_ce_std": row["val_ce_std"],
                 "val_ce_per_seed": row["val_ce_per_seed"],
                 "step_over_ntp": bench_row["ratio_paired"],
                 "step_over_ntp_medians": bench_row["ratio_measured"],
                 "flops_over_ntp": bench_row["ratio_flops"],
                 "train_curves": [train_curve(d) for d in dirs]}
        if name.startswith(("NextLat", "MTP")):
            ks = [1] if name.startswith("MTP") else sorted({int(name[-1]), 4})
            per_seed = [tokens_per_cycle(d, ks, budget) for d in dirs]
            entry["tokens_per_cycle"] = {k: [s[k] for s in per_seed] for k in ks}
        variants[name] = entry
        print(f"{name}: val CE {_mean_std(row['val_ce_per_seed'])}", flush=True)
    results = {"budget": args.budget, "seeds": args.seeds, "base_overrides":
               base_overrides(budget), "commands": {k: " ".join(v) for k, v in
                                                    commands.items()},
               "sweep_wall_s": walls, "machine": machine(2), "variants": variants,
               "bench_command": f"python bench/nextlat_overhead.py --repeats "
                                f"{budget['repeats']} --mtp 2 --jtp 1 {' '.join(MODEL)}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def _display(command: str) -> str:
    """A command line as a reader types it: `python`, paths relative to the repository."""
    return command.replace(sys.executable, "python").replace(str(REPO) + "/", "")


def markdown(results: dict) -> str:
    seeds = results["seeds"]
    lines = [
        "# NTP, NextLat, MTP and JTP under one trainer (CPU size)", "",
        f"Machine: {results['machine']}.", "",
        "Reproduce: `python experiments/objectives.py --budget "
        f"{results['budget']} --seeds {seeds}` (it runs these two sweeps at the same time, "
        "then `--report` on each, the bench, and the decoding):", "",
        *[f"    {_display(cmd)}" for cmd in results["commands"].values()], "",
        f"Every run: the tiny default model (4 layers, D = 256, 4 heads, vocab 4096) on the "
        f"built-in corpus, `{' '.join(results['base_overrides'])}`: the same tokens for every "
        f"objective (steps × 8 windows × 128 tokens), seeds 1234 .. {1233 + seeds}. "
        "MTP's second head and JTP's Fetch are extra parameters on top of the same trunk "
        "(as the paper's comparisons). Validation CE is the next-token CE on the held-out "
        "files (for MTP head 1's, for JTP the h_t term's: the quantity NTP trains).", "",
        "| objective | val CE (mean ± std over seeds) | per seed | step time / NTP | "
        "FLOPs / NTP | greedy tokens per cycle |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in results["variants"].items():
        per_seed = ", ".join(f"{x:.4f}" for x in v["val_ce_per_seed"] if x is not None)
        spec = "—"
        if "tokens_per_cycle" in v:
            spec = "; ".join(f"K={k}: {_mean_std(vals)}"
                             for k, vals in v["tokens_per_cycle"].items())
        lines.append(f"| {name} | {_mean_std([x for x in v['val_ce_per_seed'] if x is not None])}"
                     f" | {per_seed} | {v['step_over_ntp']:.2f} | {v['flops_over_ntp']:.2f} | "
                     f"{spec} |")
    lines += [
        "", "Step time / NTP: the paired median ratio of interleaved training steps "
        f"(`{results['bench_command']}`, same machine, right after the sweeps); FLOPs / NTP "
        "from nextlat_pt/flops.py. Tokens per cycle: greedy self-speculative decoding of "
        "each seed's final model on validation prompts, static draft length K (plain "
        "decoding emits 1 token per cycle; MTP's 2 heads draft at most 1 token, NextLat's ψ "
        "any number).", "",
        "![validation CE and training curves](objectives.png)", "",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
