"""NextLat vs next-token prediction on the Manhattan world-modelling task, at CPU scale.

    python experiments/world_model.py [--seeds 3] [--steps 500] [--investigate]
                                      [--out docs/results/world_model]

(The committed results: `--investigate --notes docs/results/world_model_notes.md`.)

1. Generates the task once (`nextlat-pt make-task manhattan`) under --work.
2. Trains every variant (NTP, NextLat d=1, NextLat d=4, plus --investigate's and any
   --variant) for every seed with
   the same model, data order, batch and steps: the token budget is identical, wall time not
   (ψ's rollout costs extra). Runs go --parallel at a time, one torch thread each.
3. Scores each final checkpoint on held-out walks (`tasks/manhattan/metrics.py`).
4. Writes OUT.json (everything, per run), OUT.md (mean ± std over seeds, per-seed values, the
   command, config and machine) and OUT.png (bars with error bars, and CE curves).

A finished run (its task_metrics.json exists) is not trained again, so an interrupted study
resumes by running the same command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study import REPO, machine, run_records, stats, thread_env, train_once  # noqa: E402

MAIN_VARIANTS = {
    "ntp": ["nextlat.objective=ntp"],
    "nextlat_d1": ["nextlat.objective=nextlat", "nextlat.horizon=1"],
    "nextlat_d4": ["nextlat.objective=nextlat", "nextlat.horizon=4"],
}
# What moves the comparison: training length, the loss weights, ψ's width.
# name -> (overrides, seeds); the longer runs get a second seed to judge their small gaps.
INVESTIGATION = {
    "ntp_1500steps": (["nextlat.objective=ntp", "train.max_steps=1500"], 2),
    "nextlat_d1_1500steps": (["nextlat.objective=nextlat", "nextlat.horizon=1",
                              "train.max_steps=1500"], 1),
    "nextlat_d4_1500steps": (["nextlat.objective=nextlat", "nextlat.horizon=4",
                              "train.max_steps=1500"], 2),
    "nextlat_d1_lh10": (["nextlat.objective=nextlat", "nextlat.horizon=1",
                         "nextlat.lambda_latent=10"], 1),
    "nextlat_d1_kl0": (["nextlat.objective=nextlat", "nextlat.horizon=1",
                        "nextlat.lambda_kl=0"], 1),
    "nextlat_d1_lam0.1": (["nextlat.objective=nextlat", "nextlat.horizon=1",
                           "nextlat.lambda_latent=0.1", "nextlat.lambda_kl=0.1"], 2),
    "nextlat_d4_lam0.1": (["nextlat.objective=nextlat", "nextlat.horizon=4",
                           "nextlat.lambda_latent=0.1", "nextlat.lambda_kl=0.1"], 1),
    "nextlat_d1_psi2x": (["nextlat.objective=nextlat", "nextlat.horizon=1",
                          "nextlat.proj_factor=2"], 1),
}
# (key, label, higher is better) for the tables and bars; the first ones are the headline.
METRICS = [
    ("next_token_legal", "next-token legal", True),
    ("valid_trajectory_5", "valid trajectories, 5 moves", True),
    ("valid_trajectory_10", "valid trajectories, 10 moves", True),
    ("valid_trajectory", "valid trajectories, 20 moves", True),
    ("legal_mass", "legal prob. mass", True),
    ("top1_accuracy", "top-1 acc.", True),
    ("top1_ceiling", "top-1 ceiling (oracle)", True),
    ("move_ce", "move CE (nats)", False),
    ("oracle_move_ce", "move CE of the oracle", False),
    ("probe_node", "probe: intersection", True),
    ("probe_x", "probe: x", True),
    ("probe_y", "probe: y", True),
    ("effective_rank", "effective rank", False),
    ("val_ce", "valid CE (nats)", False),
    ("wall_s", "train wall time (s)", False),
]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds per main variant")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps per run")
    p.add_argument("--out", default="docs/results/world_model",
                   help="output prefix: OUT.md, OUT.json, OUT.png")
    p.add_argument("--work", default="runs/world_model", help="task and run directories")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time")
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--walk-len", type=int, default=50)
    p.add_argument("--num-walks", type=int, default=30_000)
    p.add_argument("--task-seed", type=int, default=0)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-walks", type=int, default=256)
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V,KEY=V",
                   help="an extra (investigation) variant trained with --extra-seeds seeds")
    p.add_argument("--investigate", action="store_true",
                   help="add the investigation variants (INVESTIGATION, 1-2 seeds each)")
    p.add_argument("--extra-seeds", type=int, default=1, help="seeds of each --variant")
    p.add_argument("--notes", default=None, metavar="FILE",
                   help="a markdown file appended to OUT.md (the written analysis)")
    p.add_argument("--reeval", action="store_true",
                   help="score finished runs again (after a change to the metrics)")
    p.add_argument("--only-extra", action="store_true",
                   help="train only the --variant runs (the main ones are read if present)")
    return p.parse_args(argv)


def _variants(args: argparse.Namespace) -> dict[str, tuple[list[str], list[int]]]:
    """name -> (overrides, seeds)."""
    out = {name: (ov, list(range(args.seeds))) for name, ov in MAIN_VARIANTS.items()}
    if args.investigate:
        out.update({name: (ov, list(range(seeds)))
                    for name, (ov, seeds) in INVESTIGATION.items()})
    for spec in args.variant:
        name, _, rest = spec.partition(":")
        if not name or not rest or "=" not in rest:
            sys.exit(f"world_model.py: error: --variant {spec!r} must be NAME:key=value,...")
        out[name] = (rest.split(","), list(range(args.extra_seeds)))
    return out


def _make_task(args: argparse.Namespace, task: Path) -> None:
    if (task / "task.json").is_file():
        return
    cmd = [sys.executable, "-m", "nextlat_pt", "make-task", "manhattan", "--output", str(task),
           "--grid", str(args.grid), "--walk-len", str(args.walk_len),
           "--num-walks", str(args.num_walks), "--seq-len", str(args.seq_len),
           "--seed", str(args.task_seed)]
    subprocess.run(cmd, check=True, cwd=REPO)


def _base_overrides(args: argparse.Namespace, task: Path) -> list[str]:
    return [
        f"data.train=[{{path: {task / 'shards'}, weight: 1}}]", f"data.valid={task / 'shards'}",
        f"data.tokenizer={task / 'tokenizer'}", f"model.num_layers={args.layers}",
        f"model.hidden_size={args.hidden}", f"model.num_heads={args.heads}",
        f"model.seq_len={args.seq_len}", f"train.micro_batch_size={args.batch}",
        f"train.global_batch_size={args.batch}", f"train.max_steps={args.steps}",
        f"train.lr={args.lr}", f"train.min_lr={args.lr / 10}", "train.eval_interval=100",
        "train.eval_batches=4", "logging.wandb=disabled", "logging.interval=10",
        "logging.plot=false",
    ]


def _run_one(args: argparse.Namespace, task: Path, name: str, overrides: list[str],
             seed: int) -> dict:
    """Train (unless done) and score one run; returns its record."""
    run_dir = Path(args.work) / "runs" / f"{name}_s{seed}"
    result_file = run_dir / "task_metrics.json"
    if result_file.is_file() and not args.reeval:
        return json.loads(result_file.read_text())
    # A finished training (wall_s.json) is only (re)scored, keeping its wall time.
    wall = train_once(run_dir, [*_base_overrides(args, task), *overrides], seed)
    steps = int(next((o.split("=", 1)[1] for o in overrides
                      if o.startswith("train.max_steps=")), args.steps))
    ckpt = run_dir / "checkpoints" / f"step_{steps:07d}"
    code = ("import json,sys,torch; torch.set_num_threads(1); "
            "from nextlat_pt.tasks.manhattan.evaluate import evaluate_checkpoint; "
            "r=evaluate_checkpoint(sys.argv[1], sys.argv[2], num_walks=int(sys.argv[3])); "
            "print(json.dumps(r))")
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt), str(task),
                           str(args.eval_walks)], check=True, cwd=REPO, env=thread_env(),
                          capture_output=True, text=True)
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    record = {"variant": name, "seed": seed, "overrides": overrides, "wall_s": wall,
              **run_records(run_dir), **metrics}
    result_file.write_text(json.dumps(record) + "\n")
    print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed}: {wall:.0f} s, "
          f"legal {metrics['next_token_legal']:.4f}, valid traj "
          f"{metrics['valid_trajectory']:.3f}, probe {metrics['probe_node']:.3f}", flush=True)
    return record


def _summary(records: list[dict]) -> dict[str, dict[str, dict]]:
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["variant"], []).append(r)
    out: dict[str, dict[str, dict]] = {}
    for name, rs in by.items():
        rs.sort(key=lambda r: r["seed"])
        out[name] = {}
        for key, _, _ in METRICS:
            out[name][key] = stats([r[key] for r in rs if r.get(key) is not None])
    return out


def _fmt(key: str, x: float) -> str:
    if key == "wall_s":
        return f"{x:.0f}"
    if key in ("effective_rank",):
        return f"{x:.1f}"
    return f"{x:.4f}" if key in ("val_ce", "next_token_legal", "legal_mass", "move_ce",
                                 "oracle_move_ce") else f"{x:.3f}"


def _table(summary: dict, names: list[str]) -> list[str]:
    """Mean ± std over seeds (just the value for one seed), one column per variant."""
    head = [f"{n} (n={len(summary[n]['val_ce']['values'])})" for n in names]
    lines = ["| metric | " + " | ".join(head) + " |", "|---|" + "---|" * len(names)]
    for key, label, _ in METRICS:
        cells = []
        for n in names:
            st = summary[n][key]
            if st["mean"] is None:
                cells.append("–")
            elif len(st["values"]) > 1:
                cells.append(f"{_fmt(key, st['mean'])} ± {_fmt(key, st['std'])}")
            else:
                cells.append(_fmt(key, st["mean"]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _per_seed(summary: dict, names: list[str]) -> list[str]:
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label, _ in METRICS:
        lines.append(f"| {label} | " + " | ".join(
            ", ".join(_fmt(key, v) for v in summary[n][key]["values"]) for n in names) + " |")
    return lines


def _markdown(args: argparse.Namespace, summary: dict, variants: dict, task_info: dict,
              total_s: float, command: str, records: list[dict]) -> str:
    main = [n for n in summary if n in MAIN_VARIANTS]
    extra = [n for n in summary if n not in MAIN_VARIANTS]
    train_s = sum(r["wall_s"] for r in records)
    lines = ["# NextLat vs NTP on the Manhattan world-modelling task (CPU scale)", "",
             f"Regenerate: `{command}`", "",
             f"This invocation took {total_s / 60:.1f} min; the {len(records)} runs' training "
             f"wall times add up to {train_s / 60:.1f} min ({args.parallel} at a time; "
             "finished runs are reused, not retrained).", "",
             "## Main comparison", "",
             "Mean ± std over seeds (n = seeds). Higher is better except effective rank (the "
             "paper reads lower as more compressed), CE and wall time.", "",
             *_table(summary, main), "", "Per-seed values (seed 0, 1, ...):", "",
             *_per_seed(summary, main)]
    if extra:
        lines += ["", "## Investigation", "",
                  "Each variant changes only what its overrides say; the main variants (500 "
                  "steps) are repeated for reference. Overrides: "
                  + "; ".join(f"`{n}`: {' '.join(variants[n][0])}" for n in extra) + ".", "",
                  *_table(summary, main + extra), "", "Per-seed values:", "",
                  *_per_seed(summary, extra)]
    s = task_info["settings"]
    lines += [
        "", "## Set-up", "",
        f"- Task: {s['grid']}×{s['grid']} city (seed {s['seed']}; street segments tried "
        f"removed {s['remove_fraction']}, one-way {s['oneway_fraction']}, kept strongly "
        f"connected; out-degree histogram {task_info['degree_histogram']}), "
        f"{s['num_walks']} random walks of {s['walk_len']} moves, packed into windows of "
        f"{s['seq_len']} tokens; {task_info['splits']['train']['samples']} training windows.",
        f"- Model: {args.layers} layers, D={args.hidden}, {args.heads} heads, seq {args.seq_len}; "
        f"batch {args.batch} windows, {args.steps} steps "
        f"({args.steps * args.batch * args.seq_len / 1e6:.2f}M tokens), AdamW lr {args.lr} "
        f"cosine to {args.lr / 10}, 20 warm-up steps; identical for the main variants "
        "(investigation runs change only what their overrides say).",
        "- Variants (overrides): " + "; ".join(f"`{n}`: {' '.join(variants[n][0])}"
                                                for n in main) + ".",
        f"- Evaluation: {args.eval_walks} held-out walks (a walk stream training never used) of "
        f"the same length. Next-token metrics cover every position that predicts a move. "
        "`top1_ceiling` is the mean of 1/out-degree (a random walk's next move is uniform over "
        "the legal ones), so top-1 accuracy cannot exceed it in expectation. Valid trajectories: "
        "prompt = "
        "start + first half of the walk, then 20 moves sampled at temperature 1; a trajectory "
        "counts when every sampled move (of the first 5, 10 or all 20) is legal. Probes: "
        "softmax regression on the frozen final hidden state of every position, 80/20 split "
        "by walk.",
        f"- Machine: {machine(args.parallel)}.",
    ]
    return "\n".join(lines) + "\n"


def _plot(summary: dict, records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [m for m in METRICS if m[0] not in ("wall_s", "top1_ceiling", "oracle_move_ce")]
    names = list(summary)
    fig, axes = plt.subplots(2, 7, figsize=(28, 7.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label, _) in zip(axes.flat, keys):
        means = [summary[n][key]["mean"] or 0.0 for n in names]
        stds = [summary[n][key]["std"] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4,
               color=[colors[i % len(colors)] for i in range(len(names))])
        for i, n in enumerate(names):
            vals = summary[n][key]["values"]
            ax.scatter([i] * len(vals), vals, color="k", s=8, zorder=3)
        lo = min(min(summary[n][key]["values"] or [0]) for n in names)
        hi = max(max(summary[n][key]["values"] or [1]) for n in names)
        pad = (hi - lo) * 0.5 or 0.01
        ax.set_ylim(max(0.0, lo - pad), hi + pad)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
    ax = axes.flat[len(keys)]
    for i, n in enumerate(names):
        for r in records:
            if r["variant"] == n and r["curve"]:
                steps, ce = zip(*r["curve"])
                ax.plot(steps, ce, "o-", ms=3, color=colors[i % len(colors)], alpha=0.7,
                        label=n if r["seed"] == 0 else None)
    ax.set_title("validation CE vs step", fontsize=10)
    ax.legend(fontsize=7)
    for extra in list(axes.flat)[len(keys) + 1:]:
        extra.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the study (resumably) and write the results files."""
    args = _args(argv)
    command = "python experiments/world_model.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    work = Path(args.work)
    task = work / "task"
    t0 = time.time()
    _make_task(args, task)
    variants = _variants(args)
    jobs = [(n, ov, s) for n, (ov, seeds) in variants.items() for s in seeds
            if not (args.only_extra and n in MAIN_VARIANTS
                    and not (work / "runs" / f"{n}_s{s}" / "task_metrics.json").is_file())]
    # Seed-major order: a study cut short still has every variant for its first seeds.
    jobs.sort(key=lambda j: (j[2], list(variants).index(j[0])))
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        records = list(pool.map(lambda j: _run_one(args, task, *j), jobs))
    total = time.time() - t0
    summary = _summary(records)
    variants = {n: v for n, v in variants.items() if n in summary}
    task_info = json.loads((task / "task.json").read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = _markdown(args, summary, variants, task_info, total, command, records)
    if args.notes:
        md += "\n" + Path(args.notes).read_text()
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "total_wall_s": total, "args": vars(args), "task": task_info,
         "summary": summary, "runs": records}, indent=1) + "\n")
    _plot(summary, records, out.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
