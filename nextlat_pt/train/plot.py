"""loss.png from metrics.jsonl: the loss terms against the step."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """All records of a metrics.jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_losses(metrics_path: Path, out_path: Path, title: str = "") -> Path:
    """Plot loss, ce, latent and kl (training) and val_ce (validation) over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_ce" in r]
    fig, (ax_tok, ax_aux) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "ce"):
        points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        if points:
            ax_tok.plot(*zip(*points), label=key)
    if evals:
        ax_tok.plot([r["step"] for r in evals], [r["val_ce"] for r in evals], "o-", label="val ce")
    ax_tok.set_xlabel("step")
    ax_tok.set_ylabel("nats / token")
    ax_tok.legend()
    ax_tok.grid(alpha=0.3)
    for key in ("latent", "kl"):
        points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        if points:
            ax_aux.plot(*zip(*points), label=key)
    ax_aux.set_xlabel("step")
    ax_aux.set_title("NextLat auxiliary terms")
    ax_aux.grid(alpha=0.3)
    if ax_aux.get_legend_handles_labels()[0]:
        ax_aux.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
