"""Score a trained checkpoint on the Manhattan task it was trained on (held-out walks)."""

from __future__ import annotations

import json
from pathlib import Path

from nextlat_pt.data.tokenizer import Tokenizer
from nextlat_pt.tasks.manhattan.build import EVAL_WALKS
from nextlat_pt.tasks.manhattan.generate import random_walks
from nextlat_pt.tasks.manhattan.graph import City
from nextlat_pt.tasks.manhattan.metrics import evaluate_model
from nextlat_pt.tasks.manhattan.vocab import TaskVocab


def evaluate_checkpoint(checkpoint: str | Path, task_dir: str | Path, *, num_walks: int = 256,
                        prompt_moves: int | None = None, sample_moves: int = 20,
                        seed: int = 0) -> dict:
    """Every task metric of a checkpoint on `num_walks` held-out walks of the task's length.

    The walks come from the task's city with a stream (`EVAL_WALKS`) that training never
    used. The prompt for trajectory sampling defaults to the first half of a walk.
    """
    from nextlat_pt.convert.source import open_checkpoint
    from nextlat_pt.eval.models import NextLatModel

    task_dir = Path(task_dir)
    settings = json.loads((task_dir / "task.json").read_text(encoding="utf-8"))["settings"]
    city = City.load(task_dir / "city.json")
    tokenizer = Tokenizer.load(task_dir / "tokenizer" / "tokenizer.model")
    vocab = TaskVocab(tokenizer, city)
    ckpt = open_checkpoint(Path(checkpoint))
    if ckpt.state["tokenizer"].get("fingerprint") != tokenizer.fingerprint:
        raise ValueError(f"{checkpoint} was not trained with the tokenizer of {task_dir}; "
                         "evaluate it against the task directory it was trained on")
    model = NextLatModel(ckpt)
    walk_len = settings["walk_len"]
    prompt = walk_len // 2 if prompt_moves is None else prompt_moves
    longest = max(walk_len + 1, prompt + 1 + sample_moves)
    if longest > model.max_positions:
        raise ValueError(f"evaluation needs {longest} positions but the model has "
                         f"{model.max_positions}; use shorter walks or prompts")
    walks = list(random_walks(city, num_walks, walk_len,
                              EVAL_WALKS.format(seed=settings["seed"]) + f":{seed}"))
    return evaluate_model(model, walks, vocab, model.vocab_size, prompt_moves=prompt,
                          sample_moves=sample_moves, seed=seed)
