"""lm-eval-harness on a Hugging Face export, offline, with the tasks that ship with us.

Needs the optional `lm-eval[hf]` install (pinned torch: see setup.py's `eval` extra). Only
our task directory is indexed (`include_defaults=False`): indexing lm-eval's ~15k built-in
tasks costs ~25 s and is not needed. The hub is never contacted: the model is a local folder,
the data local JSONL, and HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set unless already set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.convert.to_hf import EXPORT_INFO
from nextlat_pt.data.tokenizer import EOS_ID
from nextlat_pt.eval.lm_eval_check import lm_eval_missing
from nextlat_pt.eval.tasks import TASKS, write_tasks


def run_lm_eval(hf_dir: Path, task_dir: Path, tasks: list[str] | None = None,
                limit: int | None = None, batch_size: int = 8, device: str = "cpu",
                num_questions: int = 100, sources: list[tuple[str, str]] | None = None
                ) -> dict[str, Any]:
    """Run the harness on `hf_dir`; returns lm-eval's results dict (with "results"). The
    tasks are built from `sources` ((name, text) documents), by default the built-in
    corpus's held-out files.

    For our exports a document's first token is scored after </s>: our models never saw
    <s> (documents were packed after EOS), while lm-eval's default prefix is the BOS token.
    Other folders keep lm-eval's default.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    missing = lm_eval_missing()
    if missing:
        raise ConvertError(missing)
    import lm_eval
    from lm_eval.tasks import TaskManager

    available = write_tasks(task_dir, num_questions=num_questions, sources=sources)
    tasks = list(tasks or TASKS)
    unknown = [t for t in tasks if t not in available]
    if unknown:
        raise ConvertError(f"unknown task(s) {unknown}; the shipped tasks are "
                           f"{', '.join(available)}")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    model_args = f"pretrained={hf_dir},dtype=float32"
    if (hf_dir / EXPORT_INFO).is_file():
        model_args += f",prefix_token_id={EOS_ID}"
    results = lm_eval.simple_evaluate(
        model="hf", model_args=model_args, tasks=tasks, task_manager=manager, device=device,
        batch_size=batch_size, limit=limit, log_samples=False)
    if results is None:  # lm-eval returns None on non-zero ranks only
        raise ConvertError("lm-eval returned no results")
    return results


def results_table(results: dict[str, Any]) -> str:
    """lm-eval's own markdown table of the results."""
    from lm_eval.utils import make_table

    return make_table(results)
