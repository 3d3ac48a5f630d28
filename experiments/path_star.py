"""NextLat vs next-token prediction on Path-Star graphs (the paper's planning result).

    python experiments/path_star.py --budget cpu|gpu|smoke [--seeds N] [--families 2,10 5,5]
                                    [--sanity] [--plan] [--out docs/results/path_star]

(The committed results: `--budget cpu --sanity --notes docs/results/path_star_notes.md`.)

1. Generates each G(D, L) family once (`nextlat-pt make-task pathstar`): training graphs and
   held-out graphs never seen in training, the loss on the path tokens only.
2. Trains NTP and NextLat (d = L − 2, λ_h = λ_KL = 1, ψ width = D_model: the paper's
   Path-Star setting) for every seed on identical budgets: the same model, data order, batch
   and steps (the token budget is identical, wall time not: ψ's rollout costs extra).
3. Scores each final checkpoint on the held-out graphs (`tasks/pathstar/evaluate.py`):
   exact match of the path sampled at temperature 1 (the paper's protocol) and greedy, and
   accuracy by position along the path.
4. `--sanity`: first the check that the pipeline can learn at all: NTP on a small family with
   the path written goal → start (Bachmann & Nagarajan: next-token training solves it).
5. Writes OUT.json (everything), OUT.md (per-seed values beside the paper's numbers, the
   command, budget and machine) and OUT.png.

Budgets: `smoke` (seconds of training: the pipeline test), `cpu` (every run here within
about 35 minutes on 2 loaded cores), `gpu` (each family's runs within one 8-minute call on an
H100/H200; `--plan` prints the estimate it was sized from). A finished run (its
path_star_metrics.json exists) is reused, so an interrupted study resumes by running the same
command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study import REPO, machine, run_records, stats, thread_env, train_once  # noqa: E402


@dataclass(frozen=True)
class Budget:
    """The size of a study: model, optimisation, data, evaluation, seeds."""

    layers: int
    hidden: int
    heads: int
    batch: int
    steps: int
    lr: float
    num_graphs: int
    test_graphs: int
    eval_graphs: int
    seeds: int
    nodes: int = 100
    sanity_family: tuple[int, int] = (2, 4)
    sanity_nodes: int = 20
    sanity_graphs: int = 100_000  # many: a small family is memorised otherwise
    sanity_steps: int = 0  # 0: `steps`
    sanity_layers: int = 0  # 0: `layers`
    sanity_lr: float = 0.0  # 0: `lr`


BUDGETS = {
    "smoke": Budget(layers=1, hidden=32, heads=2, batch=8, steps=2, lr=1e-3, num_graphs=64,
                    test_graphs=16, eval_graphs=16, seeds=1, sanity_family=(2, 3),
                    sanity_graphs=64),
    "cpu": Budget(layers=2, hidden=128, heads=4, batch=32, steps=200, lr=2e-3,
                  num_graphs=10_000, test_graphs=500, eval_graphs=300, seeds=3,
                  # the lookup plateaus at 1/D for ~17.5k steps (docs/results/path_star.md)
                  sanity_family=(2, 3), sanity_steps=20_000, sanity_layers=3,
                  sanity_lr=1e-3),
    "gpu": Budget(layers=12, hidden=384, heads=6, batch=256, steps=700, lr=5e-4,
                  num_graphs=200_000, test_graphs=20_000, eval_graphs=2_000, seeds=3),
}
FAMILIES = ((2, 10), (5, 5))
# The paper's Path-Star accuracies (%), read off its figure (±0.5 pp), 12 layers × 384,
# 200k graphs, 20k steps × 512, N = 100, 5 seeds.
PAPER = {(2, 10): {"ntp": 49.4, "nextlat": 97.1, "mtp": 66.2},
         (5, 5): {"ntp": 18.6, "nextlat": 99.8, "mtp": 21.2}}
# GPU sizing: our 1.3B step measured on one H200 before this work ran at MFU 0.285; a 12 × 384 model
# multiplies far smaller matrices, so the estimate assumes a third of that, plus a fixed cost
# per step (optimizer, launches) and per run (start-up, checkpoint, evaluation).
GPU_PEAK_TFLOPS = 989.4
GPU_ASSUMED_MFU = 0.095
GPU_STEP_OVERHEAD_S = 0.03
GPU_RUN_OVERHEAD_S = 25.0


def family_name(family: tuple[int, int]) -> str:
    """G(D,L) as a directory-safe name."""
    return f"G{family[0]}_{family[1]}"


def variants(family: tuple[int, int], hidden: int) -> dict[str, list[str]]:
    """name -> overrides: NTP and NextLat at the paper's Path-Star setting."""
    return {
        "ntp": ["nextlat.objective=ntp"],
        "nextlat": ["nextlat.objective=nextlat", f"nextlat.horizon={max(1, family[1] - 2)}",
                    "nextlat.lambda_latent=1", "nextlat.lambda_kl=1",
                    f"nextlat.psi_width={hidden}"],
    }


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", choices=sorted(BUDGETS), required=True)
    p.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: the "
                                                            "budget's)")
    p.add_argument("--steps", type=int, default=None, help="override the budget's steps")
    p.add_argument("--families", nargs="+", default=[f"{d},{n}" for d, n in FAMILIES],
                   metavar="D,L", help="graph families (default: 2,10 5,5)")
    p.add_argument("--sanity", action="store_true",
                   help="also run the reversed-path NTP check (first)")
    p.add_argument("--only-sanity", action="store_true",
                   help="run only the reversed-path NTP check (a later --sanity reuses it)")
    p.add_argument("--plan", action="store_true",
                   help="print each run's tokens and FLOPs and the GPU time estimate; train "
                        "nothing")
    p.add_argument("--out", default="docs/results/path_star",
                   help="output prefix: OUT.md, OUT.json, OUT.png")
    p.add_argument("--work", default="runs/path_star", help="task and run directories")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time")
    p.add_argument("--notes", default=None, metavar="FILE",
                   help="a markdown file appended to OUT.md (the written analysis)")
    args = p.parse_args(argv)
    args.sanity = args.sanity or args.only_sanity
    try:
        args.families = [tuple(int(x) for x in f.split(",")) for f in args.families]
        assert all(len(f) == 2 for f in args.families)
    except (ValueError, AssertionError):
        p.error(f"--families {' '.join(args.families)}: write each as D,L (e.g. 5,5)")
    base = BUDGETS[args.budget]
    args.config = Budget(**{**asdict(base), **({"steps": args.steps} if args.steps else {}),
                            **({"seeds": args.seeds} if args.seeds else {})})
    return args


def make_task(task: Path, family: tuple[int, int], nodes: int, num_graphs: int,
              test_graphs: int, reverse: bool = False) -> dict:
    """`nextlat-pt make-task pathstar ...` unless the directory holds it; its task.json."""
    if not (task / "task.json").is_file():
        cmd = [sys.executable, "-m", "nextlat_pt", "make-task", "pathstar", "--output",
               str(task), "--degree", str(family[0]), "--length", str(family[1]),
               "--nodes", str(nodes), "--num-graphs", str(num_graphs), "--test-graphs",
               str(test_graphs), "--seed", "0", *(["--reverse"] if reverse else [])]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads((task / "task.json").read_text())


def base_overrides(cfg: Budget, task: Path, seq_len: int, steps: int) -> list[str]:
    """Everything but the objective: the same for every variant of a family."""
    return [
        f"data.train=[{{path: {task / 'shards'}, weight: 1}}]", f"data.valid={task / 'shards'}",
        f"data.tokenizer={task / 'tokenizer'}", f"model.num_layers={cfg.layers}",
        f"model.hidden_size={cfg.hidden}", f"model.num_heads={cfg.heads}",
        f"model.seq_len={seq_len}", f"train.micro_batch_size={cfg.batch}",
        f"train.global_batch_size={cfg.batch}", f"train.max_steps={steps}",
        f"train.lr={cfg.lr}", "train.lr_schedule=constant",
        f"train.warmup_steps={min(100, max(1, steps // 10))}", "train.weight_decay=0.1",
        "train.grad_clip=100", f"train.eval_interval={max(1, steps // 5)}",
        "train.eval_batches=4", "logging.wandb=disabled", f"logging.interval={max(1, steps // 20)}",
        "logging.plot=false",
    ]


@dataclass(frozen=True)
class Job:
    """One training run: a family, a variant, a seed, where it lives."""

    family: tuple[int, int]
    variant: str
    seed: int
    task: Path
    run_dir: Path
    overrides: tuple[str, ...]
    steps: int
    eval_graphs: int


def run_job(job: Job) -> dict:
    """Train (unless done) and score one run; returns its record."""
    result = job.run_dir / "path_star_metrics.json"
    if result.is_file():
        return json.loads(result.read_text())
    wall = train_once(job.run_dir, list(job.overrides), job.seed)
    ckpt = job.run_dir / "checkpoints" / f"step_{job.steps:07d}"
    scores = job.run_dir / "scores.json"
    subprocess.run([sys.executable, "-m", "nextlat_pt.tasks.pathstar.evaluate", str(ckpt),
                    str(job.task), "--graphs", str(job.eval_graphs), "--seed", str(job.seed),
                    "--json", str(scores)], check=True, cwd=REPO, env=thread_env(),
                   stdout=subprocess.DEVNULL)
    metrics = json.loads(scores.read_text())
    record = {"family": list(job.family), "variant": job.variant, "seed": job.seed,
              "overrides": list(job.overrides), "wall_s": wall,
              **run_records(job.run_dir), **metrics}
    result.write_text(json.dumps(record) + "\n")
    print(f"[{time.strftime('%H:%M:%S')}] G{tuple(job.family)} {job.variant} seed {job.seed}: "
          f"{wall:.0f} s, exact (T=1) {metrics['exact_match_sampled']:.3f}, greedy "
          f"{metrics['exact_match_greedy']:.3f}, teacher-forced by position "
          f"{[round(x, 2) for x in metrics['per_position_teacher_forced']]}", flush=True)
    return record


def plan_jobs(args: argparse.Namespace) -> tuple[list[Job], dict]:
    """Every run of the study (tasks generated as needed) and each task's task.json."""
    cfg, work = args.config, Path(args.work)
    jobs, tasks = [], {}
    if args.sanity:
        family = cfg.sanity_family
        name = family_name(family) + "_reverse"
        task = work / f"task_{name}"
        info = make_task(task, family, cfg.sanity_nodes, cfg.sanity_graphs, cfg.test_graphs,
                         reverse=True)
        tasks[name] = info
        steps = cfg.sanity_steps or cfg.steps
        ov = (base_overrides(cfg, task, info["seq_len"], steps)
              + [f"model.num_layers={cfg.sanity_layers or cfg.layers}",
                 f"train.lr={cfg.sanity_lr or cfg.lr}"]
              + variants(family, cfg.hidden)["ntp"])
        jobs.append(Job(family, "ntp_reverse", 0, task, work / "runs" / f"{name}_ntp_s0",
                        tuple(ov), steps, cfg.eval_graphs))
    seeded = []
    for family in [] if args.only_sanity else args.families:
        name = family_name(family)
        task = work / f"task_{name}"
        info = make_task(task, family, cfg.nodes, cfg.num_graphs, cfg.test_graphs)
        tasks[name] = info
        base = base_overrides(cfg, task, info["seq_len"], cfg.steps)
        for variant, ov in variants(family, cfg.hidden).items():
            for seed in range(cfg.seeds):
                seeded.append(Job(family, variant, seed, task,
                                  work / "runs" / f"{name}_{variant}_s{seed}",
                                  tuple(base + ov), cfg.steps, cfg.eval_graphs))
    # Seed-major: a study cut short still has every family and variant for its first seeds.
    seeded.sort(key=lambda j: (j.seed, args.families.index(j.family), j.variant))
    return jobs + seeded, tasks


def gpu_estimate(cfg: Budget, family: tuple[int, int], variant: str) -> dict:
    """Tokens, FLOPs and the estimated H100/H200 seconds of one run (an estimate from the
    FLOP count, not a measurement)."""
    from nextlat_pt.config import load_config
    from nextlat_pt.flops import flops_per_token
    from nextlat_pt.tasks.pathstar.text import document_tokens, symbols
    from nextlat_pt.train.build import model_spec

    seq_len = document_tokens(*family)
    cfg_ = load_config(None, [f"model.num_layers={cfg.layers}", f"model.hidden_size="
                              f"{cfg.hidden}", f"model.num_heads={cfg.heads}",
                              f"model.seq_len={seq_len}",
                              *variants(family, cfg.hidden)[variant]])
    vocab = 261 + len(symbols(cfg.nodes))  # sentencepiece's fixed pieces + the symbols
    spec = model_spec(cfg_, vocab)
    nextlat = variant != "ntp"
    flops = flops_per_token(spec, seq_len, max(1, family[1] - 2), nextlat=nextlat).total
    tokens = cfg.steps * cfg.batch * seq_len
    step_s = cfg.batch * seq_len * flops / (GPU_ASSUMED_MFU * GPU_PEAK_TFLOPS * 1e12)
    seconds = cfg.steps * (step_s + GPU_STEP_OVERHEAD_S) + GPU_RUN_OVERHEAD_S
    return {"tokens": tokens, "flops_per_token": flops, "seconds": seconds}


def _print_plan(args: argparse.Namespace) -> None:
    cfg = args.config
    print(f"budget {args.budget}: {cfg}")
    for family in args.families:
        total = 0.0
        for variant in variants(family, cfg.hidden):
            est = gpu_estimate(cfg, family, variant)
            total += cfg.seeds * est["seconds"]
            print(f"G{family} {variant}: {est['tokens'] / 1e6:.1f}M tokens per run, "
                  f"{est['flops_per_token'] / 1e6:.0f} MFLOP/token, est. {est['seconds']:.0f} s "
                  f"per run on an H100/H200")
        print(f"G{family}: all {2 * cfg.seeds} runs est. {total / 60:.1f} min")


def summarize(records: list[dict]) -> dict:
    """family -> variant -> metric -> mean/std/values over seeds."""
    out: dict = {}
    for r in records:
        fam = family_name(tuple(r["family"])) + ("_reverse" if "reverse" in r["variant"] else "")
        out.setdefault(fam, {}).setdefault(r["variant"], []).append(r)
    summary: dict = {}
    for fam, by_variant in out.items():
        summary[fam] = {}
        for variant, rs in by_variant.items():
            rs.sort(key=lambda r: r["seed"])
            tf = [r["per_position_teacher_forced"] for r in rs]
            summary[fam][variant] = {
                "exact_match_sampled": stats([r["exact_match_sampled"] for r in rs]),
                "exact_match_greedy": stats([r["exact_match_greedy"] for r in rs]),
                "teacher_forced_pos1": stats([t[1] for t in tf]),
                "teacher_forced_rest": stats([sum(t[2:]) / max(1, len(t) - 2) for t in tf]),
                "val_ce": stats([r["val_ce"] for r in rs if r["val_ce"] is not None]),
                "wall_s": stats([r["wall_s"] for r in rs]),
                "per_position_sampled": [sum(v) / len(v) for v in
                                         zip(*[r["per_position_sampled"] for r in rs])],
                "per_position_teacher_forced": [sum(v) / len(v) for v in zip(*tf)],
            }
    return summary


def _cell(st: dict, pct: bool = True, digits: int = 1) -> str:
    if st["mean"] is None:
        return "–"
    scale = 100 if pct else 1
    vals = ", ".join(f"{v * scale:.{digits}f}" for v in st["values"])
    if len(st["values"]) == 1:
        return vals
    return f"{st['mean'] * scale:.{digits}f} ± {st['std'] * scale:.{digits}f} ({vals})"


def _markdown(args: argparse.Namespace, summary: dict, tasks: dict, total_s: float,
              command: str, records: list[dict]) -> str:
    cfg = args.config
    lines = [f"# NextLat vs NTP on Path-Star graphs ({args.budget} budget)", "",
             f"Regenerate: `{command}`", "",
             f"This invocation took {total_s / 60:.1f} min; the {len(records)} runs' training "
             f"wall times add up to {sum(r['wall_s'] for r in records) / 60:.1f} min "
             f"({args.parallel} at a time; finished runs are reused, not retrained).", "",
             "## Results", "",
             "Accuracy in % on held-out graphs (never seen in training): mean ± std over seeds "
             "(the per-seed values in brackets). *Exact (T=1)*: the whole path sampled at "
             "temperature 1, the paper's protocol; *greedy*: argmax decoding; *teacher-forced "
             "pos. 1*: the argmax at the first node after the start given the true prefix "
             "(chance is 1/D: the next-token shortcut fails here); *pos. ≥ 2*: the same at "
             "the later nodes (the shortcut solves these).", "",
             "| family | objective | exact (T=1) | greedy | teacher-forced pos. 1 | "
             "teacher-forced pos. ≥ 2 | valid CE (path) | paper, exact |",
             "|---|---|---|---|---|---|---|---|"]
    for fam, by_variant in summary.items():
        for variant, s in by_variant.items():
            key = tuple(int(x) for x in fam.removeprefix("G").split("_")[:2])
            paper = PAPER.get(key, {}).get(variant.removesuffix("_reverse"))
            paper = "–" if paper is None or "reverse" in fam else f"{paper}"
            lines.append(f"| G({key[0]},{key[1]}){' reversed' if 'reverse' in fam else ''} | "
                         f"{variant} | {_cell(s['exact_match_sampled'])} | "
                         f"{_cell(s['exact_match_greedy'])} | "
                         f"{_cell(s['teacher_forced_pos1'])} | "
                         f"{_cell(s['teacher_forced_rest'])} | "
                         f"{_cell(s['val_ce'], pct=False, digits=3)} | {paper} |")
    lines += ["", "Teacher-forced accuracy by node position along the path (position 0 is "
              "the start, copied from the prompt), mean over seeds:", "",
              "| family | objective | by position |", "|---|---|---|"]
    for fam, by_variant in summary.items():
        for variant, s in by_variant.items():
            lines.append(f"| {fam} | {variant} | " + " ".join(
                f"{100 * v:.0f}" for v in s["per_position_teacher_forced"]) + " |")
    steps_note = (f"; the reversed-path check {cfg.sanity_layers or cfg.layers} layers, "
                  f"{cfg.sanity_steps or cfg.steps} steps on "
                  f"G{cfg.sanity_family} over {cfg.sanity_nodes} labels, {cfg.sanity_graphs} "
                  "training graphs" if args.sanity else "")
    lines += [
        "", "## Set-up", "",
        f"- Budget `{args.budget}`: {cfg.layers} layers × {cfg.hidden}, {cfg.heads} heads; "
        f"batch {cfg.batch} graphs, {cfg.steps} steps{steps_note}; AdamW lr {cfg.lr} "
        "constant after a linear warm-up, β = (0.9, 0.95), weight decay 0.1, clip 100; "
        f"{cfg.num_graphs} training graphs and {cfg.test_graphs} held-out ones per family over "
        f"N = {cfg.nodes} labels; scored on the first {cfg.eval_graphs} held-out graphs; "
        f"{cfg.seeds} seed(s) per objective.",
        "- Identical budgets: NTP and NextLat see the same graphs in the same order, with the "
        "same model, batch and steps. NextLat: d = L − 2, λ_h = λ_KL = 1, ψ width = the "
        "model width (the paper's Path-Star setting).",
        "- Tasks: " + "; ".join(
            f"{name}: {t['splits']['train']['documents']} training graphs "
            f"({t['splits']['train']['samples']} windows of {t['seq_len'] + 1} tokens: one "
            "graph each; the last graph of a split fills no whole window), "
            f"{t['splits']['valid']['documents']} held-out" for name, t in tasks.items()) + ".",
        f"- Machine: {machine(args.parallel)}.",
    ]
    return "\n".join(lines) + "\n"


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = list(summary)
    fig, axes = plt.subplots(1, 1 + len(fams), figsize=(5 * (1 + len(fams)), 4))
    ax = axes[0]
    x = 0
    ticks, labels = [], []
    for fam in fams:
        for variant, s in summary[fam].items():
            st = s["exact_match_sampled"]
            ax.bar(x, 100 * st["mean"], yerr=100 * st["std"], capsize=3,
                   color="C1" if variant.startswith("nextlat") else "C0")
            ax.scatter([x] * len(st["values"]), [100 * v for v in st["values"]], color="k", s=8,
                       zorder=3)
            key = tuple(int(v) for v in fam.removeprefix("G").split("_")[:2])
            paper = PAPER.get(key, {}).get(variant)
            if paper is not None and "reverse" not in fam:
                ax.scatter([x], [paper], marker="_", s=300, color="r", zorder=4)
            ticks.append(x)
            labels.append(f"{fam}\n{variant}")
            x += 1
        x += 0.5
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_ylabel("exact match, sampled T=1 (%)")
    ax.set_title("held-out accuracy (red: the paper)", fontsize=10)
    for ax, fam in zip(axes[1:], fams):
        for variant, s in summary[fam].items():
            color = "C1" if variant.startswith("nextlat") else "C0"
            tf = [100 * v for v in s["per_position_teacher_forced"]]
            smp = [100 * v for v in s["per_position_sampled"]]
            ax.plot(range(len(tf)), tf, "o-", color=color, label=f"{variant} teacher-forced")
            ax.plot(range(len(smp)), smp, "s--", color=color, alpha=0.6,
                    label=f"{variant} sampled")
        ax.set_xlabel("node position on the path")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{fam}: accuracy by position", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the study (resumably) and write the results files."""
    args = _args(argv)
    command = "python experiments/path_star.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if args.plan:
        _print_plan(args)
        return 0
    t0 = time.time()
    jobs, tasks = plan_jobs(args)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        records = list(pool.map(run_job, jobs))
    total = time.time() - t0
    summary = summarize(records)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = _markdown(args, summary, tasks, total, command, records)
    if args.notes:
        md += "\n" + Path(args.notes).read_text()
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "budget": args.budget, "config": asdict(args.config),
         "total_wall_s": total, "tasks": tasks, "paper": {family_name(k): v
                                                          for k, v in PAPER.items()},
         "summary": summary, "runs": records}, indent=1) + "\n")
    _plot(summary, out.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
