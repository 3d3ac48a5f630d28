"""Saving and loading checkpoints: what needs the model, the engine and megatron.

The on-disk format (step directories, the COMPLETE marker, checksums, `latest`, retention,
the layout-independent optimizer state) lives in `nextlat_pt.checkpointing`, which imports
no megatron; this module writes and reads a run's state through it:

- weights: megatron dist_checkpointing, reshardable across TP/PP (`model/`);
- optimizer: each rank's share under global parameter names (`optim/`, format 2), loaded
  into any layout; format-1 checkpoints (DeepSpeed's own partitions) load as before;
- RNG: each rank's torch and megatron-tracker streams (`rng/`), restored on the same layout.

Loading verifies the checksums and never unpickles arbitrary objects: torch files are read
with `weights_only=True` (plus an allow-list of DeepSpeed's plain state classes).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
from torch.distributed.checkpoint.api import CheckpointException as DcpCheckpointException

from nextlat_pt.checkpointing import optimizer_state
from nextlat_pt.checkpointing.dcp_metadata import check_metadata_is_plain
from nextlat_pt.checkpointing.engine_state import refresh_masters
from nextlat_pt.checkpointing.errors import CheckpointError
from nextlat_pt.checkpointing.format import (
    CHECKPOINT_TOKENIZER,
    FORMAT_VERSION,
    MARKER,
    TRAINER_STATE,
    finalize,
    format_version,
    is_complete,
    read_trainer_state,
    step_dir_name,
)
from nextlat_pt.checkpointing.retention import Retention
from nextlat_pt.config import Config, save_config
from nextlat_pt.model_from_config import compute_dtype
from nextlat_pt.parallel.engine import TrainingEngine
from nextlat_pt.parallel.local_engine import LocalEngine, wants_local_engine
from nextlat_pt.train import helper_processes


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def layout_of(cfg: Config) -> dict[str, int]:
    """The parallel layout a checkpoint was written with (optimizer/RNG files follow it)."""
    return {
        "tp": ps.get_tensor_model_parallel_world_size(),
        "pp": ps.get_pipeline_model_parallel_world_size(),
        "dp": ps.get_data_parallel_world_size(),
        "vpp": cfg.parallel.vpp,
        "zero_stage": cfg.parallel.zero_stage,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        # whose optimizer state the files hold: torch's own (one fp32 DP rank) or ZeRO's
        "optimizer": "local" if wants_local_engine(
            ps.get_data_parallel_world_size(), ps.get_pipeline_model_parallel_world_size(),
            compute_dtype(cfg) == torch.bfloat16) else "deepspeed",
    }


def _format1_optim_file(tp: int, pp: int, dp: int) -> str:
    """Where format 1 kept each rank's DeepSpeed partition (read for old checkpoints)."""
    return f"optim/tp{tp:02d}_pp{pp:02d}_dp{dp:03d}.pt"


# ---------------------------------------------------------------------------------------------
# model weights (reshardable)
# ---------------------------------------------------------------------------------------------


def model_sharded_state_dict(models: list[torch.nn.Module]) -> dict:
    """One chunk: its sharded state dict; virtual pipeline chunks: one entry per chunk.

    The tensors' keys are global (layer numbers include the stage offset), so any layout can
    load what any other layout saved."""
    if len(models) == 1:
        return models[0].sharded_state_dict()
    return {f"model{i}": m.sharded_state_dict() for i, m in enumerate(models)}


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGTERM/SIGUSR1 while checkpoint writers start, so a signal sent to every process
    of the job (a Slurm step signal, scancel) cannot reach a writer between its fork and the
    moment it ignores stop signals and unblocks them (`helper_processes.die_with_parent`).
    The signal is delivered to this process (and recorded by the preemption watcher) when
    the block ends."""
    held = {signal.SIGTERM, signal.SIGUSR1}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _full_parameters(models: list[torch.nn.Module], zero_stage: int, modify: bool):
    """ZeRO-3 keeps each parameter partitioned across DP ranks; gather them while the
    weights are read or written (with `modify`, rank 0's values are re-partitioned)."""
    if zero_stage != 3:
        yield
        return
    import deepspeed

    params = [p for m in models for p in m.parameters()]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None):
        yield


def _first_line(err: BaseException) -> str:
    """The gist of a loader error: torch.distributed.checkpoint wraps each rank's exception
    (with its traceback) in one whose own text only lists the ranks."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        err = inner[0] if isinstance(inner, tuple) else inner
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def load_model_weights(models: list[torch.nn.Module], ckpt: Path, zero_stage: int = 1) -> None:
    """Load weights saved with any TP/PP layout into `models` (this process's layout)."""
    if not is_complete(ckpt):
        raise CheckpointError(
            f"{ckpt} is not a complete checkpoint (no {MARKER} marker); pick another step"
        )
    check_metadata_is_plain(ckpt / "model" / ".metadata")
    helper_processes.install(results_queue=False)  # loading writes nothing: no Manager
    with signals_deferred(), _full_parameters(models, zero_stage, modify=True):
        try:
            state = dist_checkpointing.load(model_sharded_state_dict(models),
                                            str(ckpt / "model"))
        # torch.distributed.checkpoint's error derives from BaseException, not Exception;
        # megatron's messages run to many lines
        except (Exception, DcpCheckpointException) as err:
            raise CheckpointError(
                f"{ckpt}: its weights do not fit this model ({_first_line(err)}); the model "
                f"config differs from the checkpoint's, compare with `nextlat-pt ckpt "
                f"inspect {ckpt} CONFIG`") from err
        per_model = [state] if len(models) == 1 else [state[f"model{i}"]
                                                      for i in range(len(models))]
        for model, model_state in zip(models, per_model):
            missing, unexpected = model.load_state_dict(model_state, strict=False)
            missing = [k for k in missing if not k.endswith("_extra_state")]
            if missing or unexpected:
                raise CheckpointError(
                    f"{ckpt}: missing keys {missing}, unexpected keys {unexpected}")


# ---------------------------------------------------------------------------------------------
# RNG and optimizer state (per rank)
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This rank's RNG streams: torch (CPU, CUDA) and megatron's tracker (TP-region dropout)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "tracker": dict(get_cuda_rng_tracker().get_states())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _safe_load(path: Path) -> Any:
    """torch.load without arbitrary unpickling: tensors, containers, and the few plain
    DeepSpeed state classes found in its optimizer state dict."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    allowed = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------


def _write_files(files: dict[str, Any]) -> None:
    """Write {path: object} with torch.save (runs in a forked writer when saving async)."""
    # Fault injection for the kill-during-save tests: a writer still at work.
    time.sleep(float(os.environ.get("NEXTLAT_PT_TEST_WRITE_DELAY", "0")))
    for path, obj in files.items():
        torch.save(obj, path)


def _weights_then_files(write_weights: Any, files: dict[str, Any], *args: Any,
                        **kwargs: Any) -> None:
    """The async writer's work: megatron's weights write (`args` as megatron staged them),
    then the optimizer and RNG files."""
    if write_weights is not None:
        write_weights(*args, **kwargs)
    _write_files(files)


def _to_cpu(obj: Any) -> Any:
    """A CPU snapshot of a state (GPU tensors are copied; CPU tensors are kept as they are,
    which a forked async writer sees copy-on-write as of the fork)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu() if obj.is_cuda else obj.detach()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class AsyncSaves:
    """Saves that write in background processes while training continues (megatron's
    async dist_checkpointing machinery). `poll()` at step boundaries finalizes finished
    saves (marker, rename, `latest`): a checkpoint counts only once every rank's files are
    on disk. Collective: every rank calls `poll`/`wait` at the same points."""

    def __init__(self) -> None:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self.queue = AsyncCallsQueue()

    def poll(self) -> None:
        self.queue.maybe_finalize_async_calls(blocking=False)

    def wait(self) -> None:
        self.queue.maybe_finalize_async_calls(blocking=True)

    @property
    def pending(self) -> int:
        return self.queue.get_num_unfinalized_calls()


def save_checkpoint(cfg: Config, models: list[torch.nn.Module], engine: TrainingEngine, step: int,
                    trainer_state: dict[str, Any], async_saves: AsyncSaves | None = None,
                    retention: Retention | None = None) -> Path:
    """Save model, optimizer, RNG and trainer state for `step` on every rank; returns the dir
    the checkpoint will have once complete (with `async_saves`: after a later `poll`).

    Collective: every rank must call it. `retention` decides what pruning may delete (rank 0;
    default: `checkpoint.keep` with nothing protected).
    """
    helper_processes.install()  # the writers and the Manager below die with this process
    root = cfg.checkpoint_dir
    final = root / step_dir_name(step)
    tmp = root / (step_dir_name(step) + ".tmp")
    rank = _rank()
    if async_saves is not None:
        async_saves.wait()  # one save in flight at a time
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)  # leftover of an interrupted save
        for sub in ("model", "optim", "rng"):
            (tmp / sub).mkdir(parents=True)
    _barrier()
    state = dict(trainer_state, format_version=FORMAT_VERSION, layout=layout_of(cfg),
                 optimizer_state="layout-independent")
    with _full_parameters(models, cfg.parallel.zero_stage, modify=False):
        optim, fragments = optimizer_state.snapshot(models, engine, rank)
    index = optimizer_state.gather_index(fragments, rank)
    files = {tmp / optimizer_state.rank_file(rank): _to_cpu(optim),
             tmp / "rng" / f"rank_{rank:05d}.pt": rng_state()}

    def finish() -> None:
        if rank == 0:
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
            optimizer_state.write_index(tmp, index)
            save_config(cfg, tmp / "config.yaml")
            tokenizer = (state.get("tokenizer") or {}).get("path")
            if tokenizer and Path(tokenizer).is_file():  # checksummed with the rest
                shutil.copyfile(tokenizer, tmp / CHECKPOINT_TOKENIZER)
            # Fault injection for the kill-during-save test: a window in which everything
            # but the marker is on disk.
            time.sleep(float(os.environ.get("NEXTLAT_PT_TEST_SAVE_DELAY", "0")))
            finalize(tmp, final, step)
            (retention or Retention(root, cfg.checkpoint.keep)).after_save(final)

    with signals_deferred(), _full_parameters(models, cfg.parallel.zero_stage, modify=False):
        request = dist_checkpointing.save(model_sharded_state_dict(models), str(tmp / "model"),
                                          async_sharded_save=async_saves is not None)
        if async_saves is not None:
            # One background writer per rank for everything: the weights, then this rank's
            # optimizer state and RNG; the marker once every rank's writer is done.
            async_saves.queue.schedule_async_request(request._replace(
                async_fn=functools.partial(_weights_then_files, request.async_fn, files),
                finalize_fns=[*request.finalize_fns, finish]))
            return final
    _write_files(files)
    _barrier()
    finish()
    _barrier()
    return final


# ---------------------------------------------------------------------------------------------
# find and load
# ---------------------------------------------------------------------------------------------


@dataclass
class Restored:
    """What `load_checkpoint` restored, and what starts fresh (with the reason)."""

    trainer_state: dict[str, Any]
    optimizer: bool
    rng: bool
    notes: list[str]


def load_checkpoint(ckpt: Path, cfg: Config, models: list[torch.nn.Module], engine: TrainingEngine,
                    weights_only: bool = False) -> Restored:
    """Restore `ckpt` into this run. Weights always (resharded to this layout); the
    optimizer state into any layout (format 2; format 1: only into its own layout); RNG only
    into the layout it was written with. Collective."""
    state = read_trainer_state(ckpt)
    load_model_weights(models, ckpt, cfg.parallel.zero_stage)
    notes: list[str] = []
    same_layout = state.get("layout") == layout_of(cfg)
    change = f"{_fmt_layout(state.get('layout'))} -> {_fmt_layout(layout_of(cfg))}"
    optimizer = rng = False
    if (state.get("layout") or {}).get("converted_from_hf"):
        notes.append("a checkpoint converted from Hugging Face: weights only; optimizer and "
                     "RNG start fresh")
    elif weights_only:
        notes.append("weights only (checkpoint.load_weights_only): optimizer, RNG and data "
                     "position start fresh")
    elif format_version(state) >= 2:
        optimizer_state.load(ckpt, models, engine, gathered=lambda: _full_parameters(
            models, cfg.parallel.zero_stage, modify=False))
        optimizer = True
        if same_layout:
            set_rng_state(_safe_load(ckpt / "rng" / f"rank_{_rank():05d}.pt"))
            rng = True
        else:
            notes.append(
                f"layout changed ({change}): weights, fp32 master weights, optimizer moments "
                f"and step resharded, data position kept; the random streams (dropout) start "
                f"fresh: they cannot map across a layout change")
    elif not same_layout:
        notes.append(
            f"layout changed ({change}): weights resharded; the optimizer state (AdamW "
            f"moments) and RNG streams start fresh (a format-1 checkpoint: its optimizer "
            f"state is its layout's own); the data position carries over")
    else:
        _load_format1_optimizer(ckpt, engine)
        set_rng_state(_safe_load(ckpt / "rng" / f"rank_{_rank():05d}.pt"))
        optimizer = rng = True
    if not optimizer:
        # DeepSpeed's fp32 masters still hold the weights it started with: without this its
        # first step would overwrite the loaded weights with them.
        refresh_masters(engine)
    return Restored(trainer_state=state, optimizer=optimizer, rng=rng, notes=notes)


def _fmt_layout(layout: dict[str, int] | None) -> str:
    if not layout:
        return "unknown"
    return (f"tp={layout.get('tp')} pp={layout.get('pp')} dp={layout.get('dp')} "
            f"vpp={layout.get('vpp')} zero={layout.get('zero_stage')} "
            f"optimizer={layout.get('optimizer', 'deepspeed')}")


def _load_format1_optimizer(ckpt: Path, engine: TrainingEngine) -> None:
    """A format-1 checkpoint on its own layout: DeepSpeed's ZeRO optimizer restores its
    partition from all DP ranks' files of this (tp, pp) position."""
    tp, pp = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    files = [ckpt / _format1_optim_file(tp, pp, dp)
             for dp in range(ps.get_data_parallel_world_size())]
    if isinstance(engine, LocalEngine):  # one DP rank: torch's own optimizer state
        engine.optimizer.load_state_dict(_safe_load(files[0]))
        return
    engine.optimizer.load_state_dict([_safe_load(f) for f in files],
                                     load_optimizer_states=True)
