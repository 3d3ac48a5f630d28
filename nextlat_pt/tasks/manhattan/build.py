"""`make-task manhattan`: a city, its walks as text, the task tokenizer and prepared shards.

Output directory:
    city.json         the hidden graph (what the metrics check moves against)
    task.json         the settings and counts
    walks.txt         one training walk per line
    tokenizer/        tokenizer.model: one piece per intersection and per direction
    shards/           `prepare-data` output: train/ and valid/ webdataset shards
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from nextlat_pt.tasks.manhattan.generate import random_walks, write_walks
from nextlat_pt.tasks.manhattan.graph import City, generate_city
from nextlat_pt.tasks.manhattan.vocab import train_task_tokenizer

# Walk streams are seeded by name so training and held-out walks never share a stream.
TRAIN_WALKS = "train-walks:{seed}"
EVAL_WALKS = "eval-walks:{seed}"


@dataclass(frozen=True)
class TaskSettings:
    """Everything the task's bytes depend on."""

    grid: int = 10
    num_walks: int = 50_000
    walk_len: int = 100
    seq_len: int = 128
    seed: int = 0
    remove_fraction: float = 0.25
    oneway_fraction: float = 0.35
    valid_fraction: float = 0.02

    def check(self) -> None:
        """ValueError naming the first bad setting."""
        if self.grid < 2:
            raise ValueError(f"--grid {self.grid}: a city needs at least 2x2 intersections")
        if self.num_walks < 1 or self.walk_len < 1 or self.seq_len < 2:
            raise ValueError("--num-walks, --walk-len must be >= 1 and --seq-len >= 2")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"--valid-fraction {self.valid_fraction} must be in [0, 1)")


def make_manhattan(output: str | Path, settings: TaskSettings,
                   log: Callable[[str], None] = print) -> dict:
    """Write the task into `output` (see the module docstring); returns task.json's content."""
    from nextlat_pt.data.prepare import prepare_data

    settings.check()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    city = generate_city(settings.grid, seed=settings.seed,
                         remove_fraction=settings.remove_fraction,
                         oneway_fraction=settings.oneway_fraction)
    city.save(out / "city.json")
    walks_path = out / "walks.txt"
    write_walks(walks_path, random_walks(city, settings.num_walks, settings.walk_len,
                                         TRAIN_WALKS.format(seed=settings.seed)))
    sample = walks_path.read_text(encoding="utf-8").splitlines()[:2000]
    tok_path = train_task_tokenizer(city, sample, out / "tokenizer")
    log(f"city {settings.grid}x{settings.grid} (seed {settings.seed}), "
        f"{settings.num_walks} walks of {settings.walk_len} moves -> {walks_path}; "
        f"tokenizer {tok_path}")
    summary = prepare_data([walks_path], tok_path.parent, settings.seq_len, out / "shards",
                           txt_split="line", valid_fraction=settings.valid_fraction,
                           seed=settings.seed, workers=1, progress=False, log=log)
    info = {"task": "manhattan", "settings": asdict(settings),
            "splits": {k: {"samples": v["samples"], "documents": v["documents"],
                           "tokens": v["tokens"]} for k, v in summary.splits.items()},
            "degree_histogram": _degrees(city)}
    (out / "task.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info


def _degrees(city: City) -> dict[str, int]:
    hist: dict[str, int] = {}
    for table in city.moves:
        hist[str(len(table))] = hist.get(str(len(table)), 0) + 1
    return dict(sorted(hist.items()))
