"""Path-star accuracy of a model on held-out graphs.

    python -m nextlat_pt.tasks.pathstar.evaluate CHECKPOINT TASK_DIR [--graphs N] [--seed S]
                                                 [--json OUT]

- **exact match**: the share of graphs whose generated target (every node and separator) is
  the true path; sampled at temperature 1 (the paper's protocol) and greedy;
- **per-position accuracy** of the generated paths: at node position k, the share whose k-th
  node is right (position 0 is the start, copied from the prompt; position 1 is the one
  choice a next-token shortcut cannot make);
- **teacher-forced per-position accuracy**: the argmax at node position k given the true path
  before it; the "Clever Hans" signature is ~1/D at position 1 and ~100% elsewhere.

A model is anything with `logits(ids [B, T]) -> [B, T, V]`, as
`nextlat_pt.eval.models.NextLatModel`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from nextlat_pt.subcommand import ErrorParser, run_subcommand


class LogitsModel(Protocol):
    """What the metrics need from a model."""

    def logits(self, input_ids: Tensor) -> Tensor:
        """[B, T] ids -> [B, T, V] float32 logits."""


def load_test_graphs(task_dir: str | Path, limit: int | None = None) -> list[dict]:
    """The held-out graph records of a task directory (the first `limit`)."""
    path = Path(task_dir) / "test.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; point at a `nextlat-pt make-task pathstar` "
                                "output directory")
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return records[:limit] if limit else records


def encode_graphs(records: Sequence[dict], vocab) -> tuple[Tensor, Tensor]:
    """(prompts [N, P], targets [N, 2L-1]) ids; every graph of a family has the same sizes."""
    tok = vocab.tokenizer
    prompts = [tok.encode(r["prompt"]) for r in records]
    targets = [tok.encode(r["text"]) for r in records]
    if len({len(p) for p in prompts}) != 1 or len({len(t) for t in targets}) != 1:
        raise ValueError("the held-out graphs differ in size; evaluate one G(D, L) family")
    return torch.tensor(prompts), torch.tensor(targets)


@torch.no_grad()
def generate(model: LogitsModel, prompts: Tensor, steps: int, *, greedy: bool,
             generator: torch.Generator | None = None, vocab_size: int | None = None,
             batch_size: int = 256) -> Tensor:
    """[N, steps] continuations of `prompts` (full recompute per token; short sequences),
    greedy or sampled at temperature 1 over the first `vocab_size` logits."""
    out = []
    for lo in range(0, len(prompts), batch_size):
        ids = prompts[lo:lo + batch_size]
        for _ in range(steps):
            logits = model.logits(ids)[:, -1].float()
            if vocab_size is not None:
                logits = logits[:, :vocab_size]
            nxt = (logits.argmax(-1, keepdim=True) if greedy else
                   torch.multinomial(logits.softmax(-1), 1, generator=generator))
            ids = torch.cat([ids, nxt], dim=1)
        out.append(ids[:, prompts.shape[1]:])
    return torch.cat(out)


def _path_scores(generated: Tensor, targets: Tensor) -> dict:
    """Exact match and per-node-position accuracy of generated targets."""
    return {"exact_match": float((generated == targets).all(-1).float().mean()),
            "per_position": (generated[:, ::2] == targets[:, ::2]).float().mean(0).tolist()}


@torch.no_grad()
def teacher_forced(model: LogitsModel, prompts: Tensor, targets: Tensor,
                   batch_size: int = 256) -> list[float]:
    """Per node position k: the share where the argmax given the true path before k is right."""
    hits = []
    p = prompts.shape[1]
    for lo in range(0, len(prompts), batch_size):
        ids = torch.cat([prompts[lo:lo + batch_size], targets[lo:lo + batch_size]], dim=1)
        logits = model.logits(ids[:, :-1])
        pred = logits[:, p - 1:].argmax(-1)  # position p-1+j predicts target token j
        hits.append(pred[:, ::2] == targets[lo:lo + batch_size, ::2])
    return torch.cat(hits).float().mean(0).tolist()


def evaluate_model(model: LogitsModel, records: Sequence[dict], vocab, *, seed: int = 0,
                   vocab_size: int | None = None, batch_size: int = 256) -> dict:
    """Every path-star metric of `model` on `records` (held-out graphs of one family)."""
    prompts, targets = encode_graphs(records, vocab)
    gen = torch.Generator().manual_seed(seed)
    steps = targets.shape[1]
    sampled = _path_scores(generate(model, prompts, steps, greedy=False, generator=gen,
                                    vocab_size=vocab_size, batch_size=batch_size), targets)
    greedy = _path_scores(generate(model, prompts, steps, greedy=True, vocab_size=vocab_size,
                                   batch_size=batch_size), targets)
    degree = len(records[0]["edges"]) // (len(records[0]["path"]) - 1)
    return {"exact_match_sampled": sampled["exact_match"],
            "exact_match_greedy": greedy["exact_match"],
            "per_position_sampled": sampled["per_position"],
            "per_position_greedy": greedy["per_position"],
            "per_position_teacher_forced": teacher_forced(model, prompts, targets, batch_size),
            "chance_position_1": 1.0 / degree, "num_graphs": len(records), "seed": seed}


def evaluate_checkpoint(checkpoint: str | Path, task_dir: str | Path, *,
                        num_graphs: int | None = None, seed: int = 0) -> dict:
    """Every path-star metric of a checkpoint on the task's held-out graphs."""
    from nextlat_pt.convert.source import open_checkpoint
    from nextlat_pt.data.tokenizer import Tokenizer
    from nextlat_pt.eval.models import NextLatModel
    from nextlat_pt.tasks.pathstar.text import PathStarVocab

    task_dir = Path(task_dir)
    task = json.loads((task_dir / "task.json").read_text(encoding="utf-8"))
    tokenizer = Tokenizer.load(task_dir / "tokenizer" / "tokenizer.model")
    ckpt = open_checkpoint(Path(checkpoint))
    if ckpt.state["tokenizer"].get("fingerprint") != tokenizer.fingerprint:
        raise ValueError(f"{checkpoint} was not trained with the tokenizer of {task_dir}; "
                         "evaluate it against the task directory it was trained on")
    model = NextLatModel(ckpt)
    if task["seq_len"] > model.max_positions:
        raise ValueError(f"the task needs {task['seq_len']} positions but the model has "
                         f"{model.max_positions}")
    vocab = PathStarVocab(tokenizer, task["settings"]["nodes"])
    records = load_test_graphs(task_dir, num_graphs)
    return {**evaluate_model(model, records, vocab, seed=seed, vocab_size=model.vocab_size),
            "checkpoint": str(checkpoint), "task": task["settings"]}


def build_parser() -> ErrorParser:
    """The evaluation command's arguments."""
    p = ErrorParser(prog="python -m nextlat_pt.tasks.pathstar.evaluate",
                    description="Path-star accuracy of a checkpoint on its task's held-out "
                                "graphs (exact match sampled at T=1 and greedy, per position).")
    p.add_argument("checkpoint", type=Path, help="a checkpoint (step, checkpoints or run dir)")
    p.add_argument("task_dir", type=Path, help="the make-task pathstar output it trained on")
    p.add_argument("--graphs", type=int, default=None, help="score the first N held-out graphs")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled paths")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


def _run(args: argparse.Namespace) -> None:
    if args.graphs is not None and args.graphs < 1:
        raise ValueError(f"--graphs {args.graphs} must be at least 1")
    result = evaluate_checkpoint(args.checkpoint, args.task_dir, num_graphs=args.graphs,
                                 seed=args.seed)
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point; 2 with one line on bad input."""
    from nextlat_pt.quiet import silence_library_noise

    silence_library_noise()
    return run_subcommand(build_parser(), _run, argv, errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
