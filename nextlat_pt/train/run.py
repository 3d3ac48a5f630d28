"""`nextlat-pt train`: build everything from the config, train, validate, save, report.

Linear on purpose: validation of the config, process groups, data, model, optimizer,
callbacks, the loop, the final checkpoint and plot, the summary.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from nextlat_pt.checkpointing.format import CHECKPOINT_TOKENIZER, read_trainer_state, step_dir_name
from nextlat_pt.checkpointing.retention import Retention
from nextlat_pt.config import Config, check_paths, save_config, validate
from nextlat_pt.data.builtin_corpus import prepare_builtin_shards
from nextlat_pt.data.dataset import open_dataset, resolve_dataset_dir
from nextlat_pt.data.errors import DataError
from nextlat_pt.data.loader import TrainLoader, make_train_loader, make_valid_batches
from nextlat_pt.data.tokenizer import Tokenizer
from nextlat_pt.flops import flops_per_token, parameter_counts, peak_tflops
from nextlat_pt.memory import estimate_memory
from nextlat_pt.model.gpt import count_parameters
from nextlat_pt.parallel import distributed
from nextlat_pt.parallel.embedding_group import replica_max_abs_diff
from nextlat_pt.parallel.local_engine import LocalEngine
from nextlat_pt.train.build import build_training
from nextlat_pt.train.callbacks import Callback, ConsoleProgress, JsonlMetrics, WandbMetrics
from nextlat_pt.train.checkpoint import AsyncSaves, save_checkpoint
from nextlat_pt.train.plot import plot_losses
from nextlat_pt.train.preemption import (
    PREEMPTED_EXIT_CODE,
    PREEMPTED_MARKER,
    PreemptionWatcher,
)
from nextlat_pt.train.resume import choose_checkpoint, restore, schedule_changes
from nextlat_pt.train.resume import truncate_metrics as resume_metrics
from nextlat_pt.train.step import MicroBatch
from nextlat_pt.train.trainer import Trainer, TrainState

# Held-out share of the built-in corpus's files (~30k tokens: enough for the eval batches).
VALID_FRACTION = 0.02


def _log(layout: distributed.ParallelLayout):
    def log(message: str) -> None:
        if layout.is_logging_rank:
            print(message, flush=True)

    return log


@dataclass
class DataPlan:
    """What the run trains and validates on, and with which tokenizer."""

    tokenizer: Tokenizer
    sources: list[dict[str, Any]]
    valid: Path | None
    description: str
    unigram_entropy: float | None = None  # the built-in corpus's, for the final report


def _tokenizer_for(cfg: Config) -> Tokenizer:
    """`data.tokenizer` (a .model or a directory holding tokenizer.model), else the copy
    that prepare-data stored with the first training dataset."""
    if cfg.data.tokenizer:
        path = Path(cfg.data.tokenizer)
        return Tokenizer.load(path / "tokenizer.model" if path.is_dir() else path)
    stored = open_dataset(cfg.data.train[0]["path"], "train").tokenizer_path
    if stored is None or not Path(stored).is_file():
        raise DataError(f"{cfg.data.train[0]['path']} has no stored tokenizer; set "
                        f"data.tokenizer to the one it was prepared with")
    return Tokenizer.load(stored)


def _plan_data(cfg: Config, layout: distributed.ParallelLayout) -> DataPlan:
    """Prepared datasets from `data.train`, or the built-in corpus packed into the same
    shard format (rank 0 builds the cache, the others wait and read it)."""
    log = _log(layout)
    if cfg.data.train:
        tokenizer = _tokenizer_for(cfg)
        valid = Path(cfg.data.valid) if cfg.data.valid else None
        if valid is None:
            try:  # the valid split of the first dataset, if it was prepared with one
                open_dataset(cfg.data.train[0]["path"], "valid").close()
                valid = Path(cfg.data.train[0]["path"])
            except DataError:
                log("note: no validation data (set data.valid or prepare-data "
                    "--valid-fraction); validation is skipped")
        names = ", ".join(f"{s['path']} ×{s['weight']:g}" for s in cfg.data.train)
        return DataPlan(tokenizer, cfg.data.train, valid, f"prepared datasets: {names}")

    def build(quiet: bool):
        return prepare_builtin_shards(cfg.cache_dir, cfg.data.builtin_vocab_size,
                                      cfg.model.seq_len, log=(lambda _: None) if quiet else log,
                                      valid_fraction=VALID_FRACTION)

    builtin = build(quiet=False) if layout.rank == 0 else None
    if dist.is_initialized():
        dist.barrier()
    if builtin is None:
        builtin = build(quiet=True)
    return DataPlan(
        builtin.tokenizer, [{"path": str(builtin.train_dir), "weight": 1.0}], builtin.valid_dir,
        f"built-in corpus: {builtin.num_files} files, {builtin.train_tokens:,} train tokens, "
        f"{builtin.valid_tokens:,} validation tokens", builtin.unigram_entropy)


def data_fingerprint(sources: list[dict[str, Any]]) -> str:
    """sha256 over the training datasets' index files and weights: what the run reads."""
    digest = hashlib.sha256()
    for source in sources:
        index = resolve_dataset_dir(source["path"], "train") / "index.json"
        digest.update(index.read_bytes())
        digest.update(f"{source['weight']!r}".encode())
    return digest.hexdigest()


def _micro_batches(loader: TrainLoader, device: torch.device) -> Iterator[list[MicroBatch]]:
    for group in loader:
        yield [MicroBatch.from_sample(sample, device) for sample in group]


def _validation(plan: DataPlan, cfg: Config, device: torch.device):
    """A fixed set of validation micro-batches (the first windows of the held-out split)."""
    if plan.valid is None:
        return lambda: []
    batches = [MicroBatch.from_sample(b, device) for b in make_valid_batches(
        plan.valid, cfg.model.seq_len, cfg.train.micro_batch_size, cfg.train.eval_batches,
        expected_fingerprint=plan.tokenizer.fingerprint)]
    return lambda: batches


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
    run_dir = cfg.run_dir
    if layout.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)

    # --- where to start: fresh, our own newest checkpoint, or checkpoint.load ---
    retention = Retention(cfg.checkpoint_dir, cfg.checkpoint.keep)
    chosen = choose_checkpoint(cfg, warn=lambda m: log(f"warning: {m}"),
                               verdicts=retention.verdicts)
    ckpt, resumed = chosen.path, chosen.resume
    if chosen.none_usable and ckpt is None:
        log(f"no usable checkpoint in {cfg.checkpoint_dir}: starting from step 0")
    if resumed:
        done = read_trainer_state(ckpt)["step"]
        if done >= cfg.train.max_steps:
            log(f"{run_dir} is already at step {done} ({ckpt.name}), train.max_steps="
                f"{cfg.train.max_steps}: nothing to do; raise train.max_steps to train on")
            watcher.restore()
            return {"final_step": done, "stopped": False, "nothing_to_do": True,
                    "val_ce": float("nan"), "checkpoint": str(ckpt), "run_dir": str(run_dir)}
        changes = schedule_changes(cfg, ckpt, done)
        if changes:
            log(f"note: {changes}")
    if layout.rank == 0:
        save_config(cfg, run_dir / "config.yaml")

    # --- data (checked before anything trains: paths, seq_len, tokenizer fingerprint) ---
    plan = _plan_data(cfg, layout)
    tokenizer = plan.tokenizer
    valid_batches = _validation(plan, cfg, device)

    # --- model, optimizer, engine ---
    chunks, engine = build_training(cfg, tokenizer.vocab_size, device)
    models = [chunk.model for chunk in chunks]

    start = TrainState()
    wandb_id = None
    if ckpt is not None:
        restored = restore(cfg, ckpt, resumed, models, engine, tokenizer.fingerprint)
        saved = restored.trainer_state
        if resumed or not cfg.checkpoint.load_weights_only:
            start = TrainState(step=saved["step"], consumed_samples=saved["consumed_samples"],
                               tokens_seen=saved["tokens_seen"])
        wandb_id = saved.get("wandb_id") if resumed else None
        log(f"{'resuming' if resumed else 'starting'} from {ckpt} (step {saved['step']}, "
            f"optimizer {'restored' if restored.optimizer else 'fresh'}, "
            f"RNG {'restored' if restored.rng else 'fresh'})")
        for note in restored.notes:
            log(f"note: {note}")
        saved_data = (saved.get("data") or {}).get("fingerprint")
        if saved_data and saved_data != data_fingerprint(plan.sources):
            log(f"warning: the training data differs from the data of {ckpt} (another "
                f"data.train or re-prepared shards); the sample order continues by position "
                f"over the new data")
    # Checkpoints on disk newer than where this run starts are what a relaunch skipped (or
    # another run's): pruning never deletes them.
    retention.protect_newer_than(start.step)
    if layout.is_logging_rank:
        resume_metrics(run_dir / "metrics.jsonl", start.step)
    if layout.rank == 0:
        (run_dir / PREEMPTED_MARKER).unlink(missing_ok=True)

    loader = make_train_loader(
        plan.sources, cfg.model.seq_len, cfg.train.global_batch_size,
        cfg.train.micro_batch_size, dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=layout.dp, seed=cfg.run.seed, consumed_samples=start.consumed_samples,
        on_error=cfg.data.on_error, prefetch=cfg.data.prefetch,
        expected_fingerprint=tokenizer.fingerprint, tokenizer_path=tokenizer.model_path,
        log=log)
    counts = count_parameters(torch.nn.ModuleList(models))
    spec = models[0].spec
    whole = parameter_counts(spec)
    flops = flops_per_token(spec, cfg.model.seq_len, cfg.nextlat.horizon, nextlat=cfg.uses_psi,
                            with_kl=cfg.nextlat.lambda_kl > 0)
    memory = estimate_memory(spec, cfg.model.seq_len, cfg.train.micro_batch_size, layout.dp,
                             cfg.parallel.zero_stage, cfg.nextlat.horizon if cfg.uses_psi
                             else 0, cfg.train.optimizer, spec.params_dtype == torch.bfloat16,
                             kl_chunk_tokens=cfg.nextlat.kl_chunk_tokens)
    info = {
        "run dir": str(run_dir),
        "objective": cfg.nextlat.objective + (
            f" (d={cfg.nextlat.horizon}, λ_h={cfg.nextlat.lambda_latent}, "
            f"λ_KL={cfg.nextlat.lambda_kl})" if cfg.uses_psi else ""),
        "parameters": f"trunk {whole['trunk']:,} ({whole['trunk'] / 1e6:.1f}M), "
                      f"ψ {whole['psi']:,} ({whole['psi'] / 1e6:.1f}M); this rank: trunk "
                      f"{counts['trunk']:,}, ψ {counts['psi']:,}",
        "FLOPs per token": f"{flops.total / 1e9:.3f} GFLOP training (trunk matmuls "
                           f"{flops.trunk_matmul / 1e9:.3f}, attention "
                           f"{flops.attention / 1e9:.3f}, ψ {flops.psi / 1e9:.3f}, KL head "
                           f"{flops.kl_head / 1e9:.3f}; nextlat_pt/flops.py)",
        "memory estimate per rank": memory.describe(),
        "layout": (f"world {layout.world_size}: tp {layout.tp} × pp {layout.pp} × "
                   f"dp {layout.dp}" + (f", vpp {cfg.parallel.vpp}" if cfg.parallel.vpp else "")
                   + (", sequence parallel" if cfg.parallel.sp else "")
                   + (", AdamW on this rank (one fp32 DP rank: no ZeRO to shard)"
                      if isinstance(engine, LocalEngine) else f", ZeRO-{cfg.parallel.zero_stage}")),
        "attention": models[0].attention_backend,
        "precision": "bf16 (fp32 master weights)"
                     if models[0].spec.params_dtype == torch.bfloat16 else "fp32",
        "vocab": f"{tokenizer.vocab_size} (padded to {models[0].padded_vocab_size})",
        "data": plan.description,
    }

    # --- callbacks (the logging rank only) ---
    callbacks: list[Callback] = []
    if layout.is_logging_rank:
        callbacks.append(ConsoleProgress(
            cfg.train.max_steps, start_step=start.step, start_tokens=start.tokens_seen,
            flops_per_token=flops.total,
            peak_flops=_peak_flops(device, spec.params_dtype, layout.world_size)))
        callbacks.append(JsonlMetrics(run_dir / "metrics.jsonl"))
        if cfg.logging.wandb != "disabled":
            wandb_cb = WandbMetrics(cfg.logging.wandb, cfg.logging.wandb_project,
                                    cfg.run.name, run_dir, cfg.to_dict(), run_id=wandb_id)
            wandb_id = wandb_cb.run_id
            callbacks.append(wandb_cb)

    replica_diff = None

    def from_logging_rank(value: Any) -> Any:
        """The losses live on the last rank; rank 0 writes the trainer state."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=dist.get_world_size() - 1)
        return box[0]

    def trainer_state(trainer: Trainer) -> dict[str, Any]:
        return {
            "step": trainer.state.step,
            "consumed_samples": trainer.state.consumed_samples,
            "tokens_seen": trainer.state.tokens_seen,
            # Absolute paths, and a copy of the tokenizer in the checkpoint itself: `generate`,
            # `convert` and `eval` run from other directories (a Slurm job, a later session).
            "tokenizer": {"path": str(Path(tokenizer.model_path).resolve()),
                          "file": CHECKPOINT_TOKENIZER, "fingerprint": tokenizer.fingerprint,
                          "vocab_size": tokenizer.vocab_size},
            "data": {"sources": [dict(s, path=str(Path(s["path"]).resolve()))
                                 for s in plan.sources],
                     "valid": str(plan.valid.resolve()) if plan.valid else None,
                     "seq_len": cfg.model.seq_len, "fingerprint": data_fingerprint(plan.sources)},
            "wandb_id": wandb_id,
            "last_metrics": from_logging_rank(trainer.state.last_metrics),
            "embedding_replica_max_abs_diff": replica_diff,
        }

    saved_steps: set[int] = {start.step} if ckpt is not None and resumed else set()
    async_saves = AsyncSaves() if cfg.checkpoint.async_save else None

    def checkpoint(trainer: Trainer, wait: bool = False) -> Path:
        started = time.perf_counter()
        path = save_checkpoint(cfg, models, engine, trainer.state.step, trainer_state(trainer),
                               async_saves, retention)
        saved_steps.add(trainer.state.step)
        if wait and async_saves is not None:
            async_saves.wait()
        took = time.perf_counter() - started
        if async_saves is None or wait:
            log(f"saved step {trainer.state.step} in {took:.1f} s: {path}")
        else:
            log(f"saving step {trainer.state.step} in the background (training paused "
                f"{took:.1f} s): {path}")
        return path

    def periodic_checkpoint(trainer: Trainer) -> None:
        interval = cfg.checkpoint.interval
        step = trainer.state.step
        if async_saves is not None:
            async_saves.poll()  # finalize background saves that have finished everywhere
        if interval and step % interval == 0 and step != cfg.train.max_steps:
            checkpoint(trainer)

    trainer = Trainer(
        cfg, layout, engine, chunks,
        train_batches=_micro_batches(loader, device),
        valid_batches=valid_batches,
        data_stats=loader.stats,
        device=device,
        callbacks=callbacks,
        on_step_end=periodic_checkpoint,
    )
    trainer.state = start
    try:
        summary = trainer.fit(info, stop_requested=lambda: watcher.should_stop(device))
    finally:
        loader.close()
    if summary["stopped"]:
        step = trainer.state.step
        saved = step in saved_steps
        again = " (Ctrl-C again stops without saving)" if not watcher.preempted else ""
        log(f"stopping at step {step} on {watcher.reason}"
            + ("" if saved else f": saving {cfg.checkpoint_dir / step_dir_name(step)}{again}"))
        path = (cfg.checkpoint_dir / step_dir_name(step) if saved
                else checkpoint(trainer, wait=True))
        if async_saves is not None:
            async_saves.wait()
        watcher.saved = True
        log(f"checkpoint {path}; exit code {watcher.exit_code} (relaunch the same command to "
            f"resume)")
        if layout.rank == 0 and watcher.preempted:
            # Launchers that hide the workers' exit code (torchrun) can test for this file.
            (run_dir / PREEMPTED_MARKER).write_text(f"{step}\n")
        if dist.is_initialized():
            dist.barrier()  # no rank exits (and gets the job torn down) before the marker
        summary.update(checkpoint=str(path), run_dir=str(run_dir),
                       exit_code=watcher.exit_code)
        trainer.close(summary)
        _plot(cfg, layout)
        watcher.restore()
        return summary

    replica_diff = replica_max_abs_diff(
        [p for m in models for p in m.embedding_group_params()])
    if replica_diff is not None:
        summary["embedding_replica_max_abs_diff"] = replica_diff
        log(f"last-stage embedding copy vs first stage: max |diff| {replica_diff:.3e}")
    final = (checkpoint(trainer, wait=True) if trainer.state.step not in saved_steps
             else cfg.checkpoint_dir / step_dir_name(trainer.state.step))
    if async_saves is not None:
        async_saves.wait()
    watcher.saved = True
    entropy = plan.unigram_entropy
    summary.update(unigram_entropy=entropy, checkpoint=str(final), run_dir=str(run_dir))
    trainer.close(summary)
    _plot(cfg, layout)
    if layout.is_logging_rank:
        val_ce = summary["val_ce"]
        if math.isnan(val_ce):
            log("no validation data: no final validation CE")
        elif entropy is None:
            log(f"final validation CE {val_ce:.4f} nats/token "
                f"(ppl {math.exp(min(val_ce, 50)):.1f})")
        else:
            log(f"final validation CE {val_ce:.4f} nats/token "
                f"(ppl {math.exp(min(val_ce, 50)):.1f}) vs unigram entropy {entropy:.4f} "
                f"nats/token: {entropy - val_ce:+.4f} below")
        log(f"run directory: {run_dir} (config.yaml, metrics.jsonl, loss.png, checkpoints/)")
    watcher.restore()
    return summary


def _peak_flops(device: torch.device, dtype: torch.dtype, world_size: int) -> float | None:
    """The dense bf16 peak of all devices together, for the MFU on the progress line; None
    off CUDA, in fp32 (the peak is bf16's) or for a device the table does not know."""
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    peak = peak_tflops(torch.cuda.get_device_name(device))
    return peak * 1e12 * world_size if peak else None


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

