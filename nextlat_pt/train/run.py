"""`nextlat-pt train`: build everything from the config, train, validate, save, report.

Linear on purpose, one block per stage: where to start (`start.py`), the data
(`data_plan.py`), model + optimizer + engine (`build.py`) with the checkpoint's state loaded
into them, the run's header (`run_info.py`), the logging-rank callbacks and the all-rank
checkpointer (`checkpointer.py`), the loop (`trainer.py`), then the final or stop save.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from nextlat_pt.checkpointing.format import CHECKPOINT_TOKENIZER
from nextlat_pt.checkpointing.retention import Retention
from nextlat_pt.config import Config, check_paths, save_config, validate
from nextlat_pt.data.loader import make_train_loader
from nextlat_pt.data.tokenizer import Tokenizer
from nextlat_pt.parallel import distributed
from nextlat_pt.parallel.embedding_group import replica_max_abs_diff
from nextlat_pt.train.build import build_training
from nextlat_pt.train.callbacks import Callback, ConsoleProgress, JsonlMetrics, WandbMetrics
from nextlat_pt.train.checkpointer import Checkpointer, RunRecord, from_logging_rank
from nextlat_pt.train.data_plan import (
    DataPlan,
    data_fingerprint,
    micro_batches,
    plan_data,
    validation_batches,
)
from nextlat_pt.train.plot import plot_losses
from nextlat_pt.train.preemption import (
    PREEMPTED_EXIT_CODE,
    PREEMPTED_MARKER,
    PreemptionWatcher,
)
from nextlat_pt.train.resume import truncate_metrics as resume_metrics
from nextlat_pt.train.run_info import RunFacts, describe_run
from nextlat_pt.train.start import already_finished, find_start, on_disk_at_start, restore_start
from nextlat_pt.train.trainer import Trainer, TrainState


def _log(layout: distributed.ParallelLayout):
    def log(message: str) -> None:
        if layout.is_logging_rank:
            print(message, flush=True)

    return log


def run_training(cfg: Config) -> dict[str, Any]:
    """Train the model `cfg` describes; returns the summary (final losses, entropy, paths)."""
    validate(cfg)
    check_paths(cfg)
    # Record stop requests from the very start (loading a large checkpoint takes minutes).
    watcher = PreemptionWatcher(cfg.train.exit_duration_mins)
    layout = distributed.initialize(cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.vpp or None,
                                    seed=cfg.run.seed)
    log = _log(layout)
    device = distributed.device()
    if layout.rank == 0:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)

    # --- where to start: fresh, our own newest checkpoint, or checkpoint.load ---
    retention = Retention(cfg.checkpoint_dir, cfg.checkpoint.keep)
    point = find_start(cfg, retention, log)
    finished = already_finished(cfg, point, log)
    if finished is not None:
        watcher.restore()
        return finished
    if layout.rank == 0:
        save_config(cfg, cfg.run_dir / "config.yaml")

    # --- data (checked before anything trains: paths, seq_len, tokenizer fingerprint) ---
    plan = plan_data(cfg, layout.rank, log)
    tokenizer = plan.tokenizer
    fingerprint = data_fingerprint(plan.sources)

    # --- model, optimizer, engine; then the checkpoint's state into them ---
    chunks, engine = build_training(cfg, tokenizer.vocab_size, device)
    models = [chunk.model for chunk in chunks]
    start, wandb_id = restore_start(cfg, point, models, engine, tokenizer.fingerprint,
                                    fingerprint, log)
    # Checkpoints on disk newer than where this run starts are what a relaunch skipped (or
    # another run's): pruning never deletes them.
    retention.protect_newer_than(start.step)
    if layout.is_logging_rank:
        resume_metrics(cfg.run_dir / "metrics.jsonl", start.step)
    if layout.rank == 0:
        (cfg.run_dir / PREEMPTED_MARKER).unlink(missing_ok=True)

    loader = make_train_loader(
        plan.sources, cfg.model.seq_len, cfg.train.global_batch_size,
        cfg.train.micro_batch_size, dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=layout.dp, seed=cfg.run.seed, consumed_samples=start.consumed_samples,
        on_error=cfg.data.on_error, prefetch=cfg.data.prefetch,
        expected_fingerprint=tokenizer.fingerprint, tokenizer_path=tokenizer.model_path,
        log=log)
    facts = describe_run(cfg, layout, models, engine, tokenizer.vocab_size, plan.description,
                         device)

    # --- callbacks (logging rank) and the checkpointer (every rank) ---
    callbacks, wandb_id = _callbacks(cfg, layout, facts, start, wandb_id)
    # Rank 0 writes the trainer state, the logging rank owns the wandb run: its id (a new
    # run's included) must reach rank 0 for a resume to continue the same wandb run.
    record = RunRecord(tokenizer=_tokenizer_record(tokenizer),
                       data=_data_record(cfg, plan, fingerprint),
                       wandb_id=from_logging_rank(wandb_id))
    checkpointer = Checkpointer(cfg, models, engine, retention, record, log,
                                on_disk=on_disk_at_start(point, start))

    trainer = Trainer(
        cfg, layout, engine, chunks,
        train_batches=micro_batches(loader, device),
        valid_batches=validation_batches(plan, cfg, device),
        data_stats=loader.stats,
        device=device,
        callbacks=callbacks,
        step_hooks=[checkpointer],
    )
    trainer.state = start
    try:
        summary = trainer.fit(facts.info, stop_requested=lambda: watcher.should_stop(device))
    finally:
        loader.close()
    if summary["stopped"]:
        summary = _save_on_stop(cfg, layout, trainer, checkpointer, watcher, summary, log)
    else:
        summary = _save_at_end(cfg, layout, trainer, checkpointer, watcher, summary, models,
                               plan, log)
    watcher.restore()
    return summary


def _callbacks(cfg: Config, layout: distributed.ParallelLayout, facts: RunFacts,
               start: TrainState, wandb_id: str | None) -> tuple[list[Callback], str | None]:
    """Progress line, metrics.jsonl and wandb, on the logging rank only; also the wandb run
    id (a new run's, or the resumed one's)."""
    if not layout.is_logging_rank:
        return [], wandb_id
    callbacks: list[Callback] = [
        ConsoleProgress(cfg.train.max_steps, start_step=start.step,
                        start_tokens=start.tokens_seen, flops_per_token=facts.flops.total,
                        peak_flops=facts.peak_flops),
        JsonlMetrics(cfg.run_dir / "metrics.jsonl"),
    ]
    if cfg.logging.wandb != "disabled":
        wandb_cb = WandbMetrics(cfg.logging.wandb, cfg.logging.wandb_project, cfg.run.name,
                                cfg.run_dir, cfg.to_dict(), run_id=wandb_id)
        callbacks.append(wandb_cb)
        wandb_id = wandb_cb.run_id
    return callbacks, wandb_id


def _tokenizer_record(tokenizer: Tokenizer) -> dict[str, Any]:
    return {"path": str(Path(tokenizer.model_path).resolve()), "file": CHECKPOINT_TOKENIZER,
            "fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size}


def _data_record(cfg: Config, plan: DataPlan, fingerprint: str) -> dict[str, Any]:
    return {"sources": [dict(s, path=str(Path(s["path"]).resolve())) for s in plan.sources],
            "valid": str(plan.valid.resolve()) if plan.valid else None,
            "seq_len": cfg.model.seq_len, "fingerprint": fingerprint}


def _save_on_stop(cfg: Config, layout: distributed.ParallelLayout, trainer: Trainer,
                  checkpointer: Checkpointer, watcher: PreemptionWatcher,
                  summary: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """A stop request (SIGTERM, Ctrl-C, time budget) ended the loop: save (unless this step
    is on disk already), leave the preemption marker, and say how to resume."""
    step = trainer.state.step
    saved = step in checkpointer.on_disk
    again = " (Ctrl-C again stops without saving)" if not watcher.preempted else ""
    log(f"stopping at step {step} on {watcher.reason}"
        + ("" if saved else f": saving {checkpointer.path_of(step)}{again}"))
    path = checkpointer.ensure_saved(trainer)
    watcher.saved = True
    log(f"checkpoint {path}; exit code {watcher.exit_code} (relaunch the same command to "
        f"resume)")
    if layout.rank == 0 and watcher.preempted:
        # Launchers that hide the workers' exit code (torchrun) can test for this file.
        (cfg.run_dir / PREEMPTED_MARKER).write_text(f"{step}\n")
    if dist.is_initialized():
        dist.barrier()  # no rank exits (and gets the job torn down) before the marker
    summary.update(checkpoint=str(path), run_dir=str(cfg.run_dir), exit_code=watcher.exit_code)
    trainer.close(summary)
    _plot(cfg, layout)
    return summary


def _save_at_end(cfg: Config, layout: distributed.ParallelLayout, trainer: Trainer,
                 checkpointer: Checkpointer, watcher: PreemptionWatcher,
                 summary: dict[str, Any], models: list[torch.nn.Module], plan: DataPlan,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Training reached `train.max_steps`: check the embedding replicas, save the final
    checkpoint, plot, and report the validation CE beside the unigram entropy."""
    replica_diff = replica_max_abs_diff(
        [p for m in models for p in m.embedding_group_params()])
    if replica_diff is not None:
        summary["embedding_replica_max_abs_diff"] = replica_diff
        checkpointer.record.embedding_replica_max_abs_diff = replica_diff
        log(f"last-stage embedding copy vs first stage: max |diff| {replica_diff:.3e}")
    final = checkpointer.ensure_saved(trainer)
    watcher.saved = True
    entropy = plan.unigram_entropy
    summary.update(unigram_entropy=entropy, checkpoint=str(final), run_dir=str(cfg.run_dir))
    trainer.close(summary)
    _plot(cfg, layout)
    if layout.is_logging_rank:
        _report_validation(summary["val_ce"], entropy, log)
        log(f"run directory: {cfg.run_dir} (config.yaml, metrics.jsonl, loss.png, "
            f"checkpoints/)")
    return summary


def _report_validation(val_ce: float, entropy: float | None,
                       log: Callable[[str], None]) -> None:
    if math.isnan(val_ce):
        log("no validation data: no final validation CE")
    elif entropy is None:
        log(f"final validation CE {val_ce:.4f} nats/token (ppl {math.exp(min(val_ce, 50)):.1f})")
    else:
        log(f"final validation CE {val_ce:.4f} nats/token (ppl {math.exp(min(val_ce, 50)):.1f})"
            f" vs unigram entropy {entropy:.4f} nats/token: {entropy - val_ce:+.4f} below")


def _plot(cfg: Config, layout: distributed.ParallelLayout) -> None:
    """loss.png from metrics.jsonl (the logging rank), on every orderly exit."""
    metrics = cfg.run_dir / "metrics.jsonl"
    if layout.is_logging_rank and cfg.logging.plot and metrics.is_file():
        plot_losses(metrics, cfg.run_dir / "loss.png", title=cfg.run.name)


def main(cfg: Config) -> int:
    """Entry for the CLI: run, then tear the process groups down. Exit code 0 when training
    finished (or had nothing to do), PREEMPTED_EXIT_CODE (75) when a stop request or the
    time budget ended it early, INTERRUPTED_EXIT_CODE (130) after Ctrl-C; both with a
    checkpoint to resume from."""
    try:
        summary = run_training(cfg)
    finally:
        distributed.destroy()
        sys.stdout.flush()
    return summary.get("exit_code", PREEMPTED_EXIT_CODE) if summary.get("stopped") else 0

