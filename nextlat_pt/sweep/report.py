"""`nextlat-pt sweep --report DIR`: the final metrics of every grid point, mean ± std over
its seeds, as a table (printed, report.md, report.json) and the loss curves (loss_curves.png).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from nextlat_pt.sweep.plan import PlannedRun, SweepPlan, is_done, read_plan

METRICS = ("val_ce", "ce", "loss")  # the last validation CE, the last training CE and loss


def final_metrics(run: PlannedRun) -> dict[str, Any]:
    """The run's last logged value of each metric (None where absent), its last step and
    whether it finished."""
    path = Path(run.dir) / "metrics.jsonl"
    out: dict[str, Any] = {m: None for m in METRICS}
    out.update(step=0, finished=is_done(run))
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: the ones before it stand
        out["step"] = max(out["step"], int(record.get("step", 0)))
        for m in METRICS:
            if record.get(m) is not None:
                out[m] = float(record[m])
    return out


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(plan: SweepPlan) -> list[dict[str, Any]]:
    """One row per grid point: the point, how many seeds finished, mean and std of each
    metric over the seeds that logged it."""
    rows: dict[str, dict[str, Any]] = {}
    for run in plan.runs:
        key = json.dumps(run.point, sort_keys=True)
        row = rows.setdefault(key, {"point": run.point, "runs": 0, "finished": 0,
                                    "values": {m: [] for m in METRICS}})
        metrics = final_metrics(run)
        row["runs"] += 1
        row["finished"] += int(metrics["finished"])
        for m in METRICS:
            row["values"][m].append(metrics[m])
    table = []
    for row in rows.values():
        entry = {"point": row["point"], "runs": row["runs"], "finished": row["finished"]}
        for m in METRICS:
            entry[m], entry[f"{m}_std"] = _mean_std(row["values"][m])
            entry[f"{m}_per_seed"] = row["values"][m]
        table.append(entry)
    return table


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def markdown(plan: SweepPlan, table: list[dict[str, Any]]) -> str:
    keys = list(plan.grid)
    head = [*keys, "finished / runs", "val CE", "train CE", "loss"]
    lines = [f"# Sweep {plan.out}", "",
             f"Config `{plan.config or 'defaults'}` {' '.join(plan.base_overrides)}; "
             f"{plan.seeds} seed(s) per point; mean ± std over seeds (sample std).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [row["point"][k] for k in keys] + [
            f"{row['finished']} / {row['runs']}", _fmt(row["val_ce"], row["val_ce_std"]),
            _fmt(row["ce"], row["ce_std"]), _fmt(row["loss"], row["loss_std"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(plan: SweepPlan, out: Path) -> Path | None:
    """Training CE (solid) and validation CE (dots) against the step, one colour per grid
    point; None when no run has logged anything yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colours: dict[str, Any] = {}
    drawn = False
    for run in plan.runs:
        path = Path(run.dir) / "metrics.jsonl"
        if not path.is_file():
            continue
        records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in run.point.items()) or "run"
        colour = colours.setdefault(label, f"C{len(colours) % 10}")
        train = [(r["step"], r["ce"]) for r in records if r.get("ce") is not None]
        valid = [(r["step"], r["val_ce"]) for r in records if r.get("val_ce") is not None]
        if train:
            ax.plot(*zip(*train), color=colour, alpha=0.7,
                    label=label if run.seed == plan.runs[0].seed else None)
            drawn = True
        if valid:
            ax.plot(*zip(*valid), "o", color=colour, markersize=3)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("CE (nats/token): training —, validation •")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def report(sweep_dir: str) -> str:
    """Write report.md, report.json and loss_curves.png into the sweep directory; returns the
    markdown table."""
    plan = read_plan(sweep_dir)
    table = summarize(plan)
    text = markdown(plan, table)
    out = Path(plan.out)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps({"grid": plan.grid, "seeds": plan.seeds,
                                                 "rows": table}, indent=1) + "\n")
    plot_curves(plan, out / "loss_curves.png")
    return text
