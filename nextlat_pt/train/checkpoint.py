"""Checkpoints: one directory per step, complete only once its marker exists.

    <checkpoint.dir>/step_0000150/
        model/                       megatron dist_checkpointing (reshardable across TP/PP)
        optim/tp00_pp00_dp000.pt     each rank's DeepSpeed (ZeRO-partitioned) optimizer state
        rng/rank_00000.pt            each rank's torch and megatron-tracker RNG states
        trainer_state.json           step, consumed samples, layout, tokenizer, data (absolute
                                     paths), wandb id
        config.yaml                  the resolved run config
        tokenizer.model              a copy of the run's tokenizer (the checkpoint stands alone)
        COMPLETE                     written last: the sha256 of every other file
    <checkpoint.dir>/latest          the name of the newest complete checkpoint (atomic)

Everything is written under `step_N.tmp/` and renamed when complete, so a crash mid-save
never leaves a directory that looks like a checkpoint, and `latest` only ever names complete
ones. Loading verifies the checksums and never unpickles arbitrary objects: torch files are
read with `weights_only=True` (plus an allow-list of DeepSpeed's plain state classes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
from torch.distributed.checkpoint.api import CheckpointException as DcpCheckpointException

from nextlat_pt.config import Config, save_config
from nextlat_pt.parallel.engine import TrainingEngine
from nextlat_pt.parallel.local_engine import LocalEngine, wants_local_engine
from nextlat_pt.train import helper_processes
from nextlat_pt.train.build import compute_dtype

MARKER = "COMPLETE"
LATEST = "latest"
CHECKPOINT_TOKENIZER = "tokenizer.model"  # a copy of the run's tokenizer, in every checkpoint
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason and what to do."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _optim_file(tp: int, pp: int, dp: int) -> str:
    return f"optim/tp{tp:02d}_pp{pp:02d}_dp{dp:03d}.pt"


def _my_optim_file() -> str:
    return _optim_file(ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                       ps.get_data_parallel_rank())


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


# torch.distributed.checkpoint reads its `.metadata` file with plain pickle. Before it does,
# the file is walked by an unpickler that only resolves these names, so a checkpoint can name
# nothing else (no arbitrary callables).
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.planner",
                "torch.distributed.checkpoint.filesystem")
_DCP_NAMES = {("torch", "Size"), ("torch.serialization", "_get_layout"),
              ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
              ("builtins", "slice")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = (module in _DCP_MODULES or (module, name) in _DCP_NAMES
                   or (module == "torch" and isinstance(getattr(torch, name, None),
                                                        torch.dtype)))
        if not allowed:
            raise CheckpointError(f"refusing to unpickle {module}.{name} from a checkpoint's "
                                  f"metadata; the checkpoint is not one nextlat_pt wrote")
        return super().find_class(module, name)


def check_metadata_is_plain(path: Path) -> None:
    """Raise CheckpointError if a dist_checkpointing `.metadata` pickle names anything but
    the storage-metadata classes (it is then never handed to pickle.load)."""
    with open(path, "rb") as f:
        _MetadataUnpickler(f).load()


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
    state = dict(trainer_state, format_version=FORMAT_VERSION, layout=layout_of(cfg))
    files = {tmp / _my_optim_file(): _to_cpu(engine.optimizer.state_dict()),
             tmp / "rng" / f"rank_{rank:05d}.pt": rng_state()}

    def finalize() -> None:
        if rank == 0:
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            save_config(cfg, tmp / "config.yaml")
            tokenizer = (state.get("tokenizer") or {}).get("path")
            if tokenizer and Path(tokenizer).is_file():  # checksummed with the rest
                shutil.copyfile(tokenizer, tmp / CHECKPOINT_TOKENIZER)
            # Fault injection for the kill-during-save test: a window in which everything
            # but the marker is on disk.
            time.sleep(float(os.environ.get("NEXTLAT_PT_TEST_SAVE_DELAY", "0")))
            _finalize(tmp, final, step)
            (retention or Retention(root, cfg.checkpoint.keep)).after_save(final)

    with signals_deferred(), _full_parameters(models, cfg.parallel.zero_stage, modify=False):
        request = dist_checkpointing.save(model_sharded_state_dict(models), str(tmp / "model"),
                                          async_sharded_save=async_saves is not None)
        if async_saves is not None:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest

            async_saves.queue.schedule_async_request(request)
            async_saves.queue.schedule_async_request(
                AsyncRequest(_write_files, (files,), [finalize]))
            return final
    _write_files(files)
    _barrier()
    finalize()
    _barrier()
    return final


def _finalize(tmp: Path, final: Path, step: int) -> None:
    """Marker last (with checksums), then the rename, then `latest`: each step atomic."""
    checksums = {str(p.relative_to(tmp)): _sha256(p)
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
    sizes = sum((tmp / rel).stat().st_size for rel in checksums)
    marker = {"step": step, "bytes": sizes, "sha256": checksums}
    marker_tmp = tmp / (MARKER + ".tmp")
    marker_tmp.write_text(json.dumps(marker, indent=2))
    os.replace(marker_tmp, tmp / MARKER)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = final.parent / (LATEST + ".tmp")
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, final.parent / LATEST)


class Verdicts:
    """Whether each checkpoint passed its checksums, remembered for this process.

    Hashing a 1B-class checkpoint reads tens of GB, so each directory is hashed at most once
    per run: the verdict is kept under the marker's identity (inode, size, mtime), which
    changes when a step is rewritten. Checkpoints this run wrote are good by construction
    (their checksums were just computed from the files on disk)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[int, int, int], str]] = {}

    @staticmethod
    def _identity(ckpt: Path) -> tuple[int, int, int] | None:
        try:
            st = (ckpt / MARKER).stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def record(self, ckpt: Path, problem: str) -> None:
        """Remember the verdict for `ckpt` ("" = good, else what is wrong)."""
        identity = self._identity(ckpt)
        if identity is not None:
            self._known[str(ckpt.resolve())] = (identity, problem)

    def problem(self, ckpt: Path) -> str:
        """"" if `ckpt` is a complete checkpoint that passes its checksums, else the reason
        (hashing it only if this process has no verdict for it yet)."""
        if ckpt.name.endswith(".tmp"):
            return f"skipping {ckpt}: an interrupted save (no rename)"
        if not is_complete(ckpt):
            return f"skipping {ckpt}: no {MARKER} marker (the save did not finish)"
        known = self._known.get(str(ckpt.resolve()))
        if known is not None and known[0] == self._identity(ckpt):
            return known[1]
        try:
            verify_checksums(ckpt)
            problem = ""
        except CheckpointError as err:
            problem = f"skipping {err}"
        self.record(ckpt, problem)
        return problem


def step_of(ckpt: Path) -> int | None:
    """The step a `step_N` (or `step_N.tmp`) directory name holds, None for other names."""
    digits = ckpt.name.removeprefix("step_").removesuffix(".tmp")
    return int(digits) if ckpt.name.startswith("step_") and digits.isdigit() else None


class Retention:
    """Which checkpoints pruning may delete (`checkpoint.keep`), decided on rank 0.

    - Only checkpoints that pass verification (marker and checksums) count toward `keep`:
      corrupt ones never push a good one out.
    - Never deleted: the checkpoint just written, anything with a higher step, the one
      `latest` names, and `protected` (what was on disk, newer than the step this run started
      from, when it started: a run that skipped broken checkpoints leaves them for a human).
    - Checksums are verified only for checkpoints pruning is about to rely on (newest first,
      until `keep` good ones are found), and at most once per run (`Verdicts`).
    """

    def __init__(self, root: Path, keep: int, verdicts: Verdicts | None = None) -> None:
        self.root = root
        self.keep = keep
        self.verdicts = verdicts or Verdicts()
        self.protected: set[str] = set()

    def protect_newer_than(self, step: int) -> None:
        """Protect every checkpoint on disk now whose step is above `step` (not interrupted
        saves: a `.tmp` directory can never be used)."""
        self.protected |= {p.name for p in list_checkpoints(self.root)
                           if (step_of(p) or 0) > step and not p.name.endswith(".tmp")}

    def after_save(self, written: Path) -> list[Path]:
        """Record `written` as good (this run wrote it) and prune; returns what was deleted."""
        self.verdicts.record(written, "")
        self.protected.discard(written.name)
        return self.prune(written)

    def prune(self, newest: Path | None = None) -> list[Path]:
        """Delete checkpoints beyond the newest `keep` good ones (see the class doc)."""
        if self.keep <= 0:
            return []
        ceiling = step_of(newest) if newest is not None else None
        latest = read_latest(self.root)
        spared = set(self.protected) | {latest} | ({newest.name} if newest else set())
        good = 0
        deleted = []
        for ckpt in reversed(list_checkpoints(self.root)):  # newest step first
            step = step_of(ckpt)
            if step is None or (ceiling is not None and step > ceiling):
                continue
            if good < self.keep:
                # Still filling `keep`: only a verified checkpoint counts; others are left.
                if not ckpt.name.endswith(".tmp") and not self.verdicts.problem(ckpt):
                    good += 1
                continue
            if ckpt.name in spared:
                continue
            shutil.rmtree(ckpt, ignore_errors=True)  # older than `keep` good checkpoints
            deleted.append(ckpt)
        return deleted


def prune(root: Path, keep: int) -> list[Path]:
    """Keep the newest `keep` verified checkpoints under `root` (0 keeps all); see
    `Retention` for what is never deleted. Returns the deleted directories."""
    return Retention(root, keep).prune()


# ---------------------------------------------------------------------------------------------
# find and load
# ---------------------------------------------------------------------------------------------


def is_complete(ckpt: Path) -> bool:
    """A checkpoint counts only with its marker (checksums are verified on load)."""
    return (ckpt / MARKER).is_file() and not ckpt.name.endswith(".tmp")


def verify_checksums(ckpt: Path) -> None:
    """Raise CheckpointError naming the first file whose sha256 differs from the marker's."""
    try:
        record = json.loads((ckpt / MARKER).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {ckpt}: unreadable {MARKER} marker ({err})") from err
    for rel, expected in record["sha256"].items():
        path = ckpt / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt}: {rel} is missing")
        if _sha256(path) != expected:
            raise CheckpointError(f"checkpoint {ckpt}: {rel} fails its checksum")


def list_checkpoints(root: Path) -> list[Path]:
    """Every step directory under `root` (complete or not), oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir())


def read_latest(root: Path) -> str:
    """The directory name `latest` holds ("" when there is none or it is unreadable)."""
    try:
        return (root / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def find_latest_valid(root: Path, warn: Callable[[str], None],
                      verdicts: Verdicts | None = None) -> Path | None:
    """The newest checkpoint that is complete and passes its checksums; warns about each
    newer one that is skipped, naming it, and about a `latest` that names anything else."""
    verdicts = verdicts or Verdicts()
    found = None
    for ckpt in reversed(list_checkpoints(root)):
        problem = verdicts.problem(ckpt)
        if not problem:
            found = ckpt
            break
        warn(problem)
    latest = read_latest(root)
    if (root / LATEST).exists() and (found is None or latest != found.name):
        # A corrupt `latest` target was already named above; report only a garbage or
        # dangling pointer, which nothing else would mention.
        if not latest or step_of(root / latest) is None:
            warn(f"{root / LATEST} holds {latest[:40]!r}, not a checkpoint name; ignoring it")
        elif not (root / latest).is_dir():
            warn(f"{root / LATEST} names {latest}, which does not exist; ignoring it")
    return found


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "trainer_state.json").read_text())


@dataclass
class Restored:
    """What `load_checkpoint` restored, and what starts fresh (with the reason)."""

    trainer_state: dict[str, Any]
    optimizer: bool
    rng: bool
    notes: list[str]


def load_checkpoint(ckpt: Path, cfg: Config, models: list[torch.nn.Module], engine: TrainingEngine,
                    weights_only: bool = False) -> Restored:
    """Restore `ckpt` into this run. Weights always (resharded to this layout); optimizer
    and RNG only when the layout is the one they were written with."""
    state = read_trainer_state(ckpt)
    load_model_weights(models, ckpt, cfg.parallel.zero_stage)
    notes: list[str] = []
    same_layout = state.get("layout") == layout_of(cfg)
    optimizer = rng = False
    if (state.get("layout") or {}).get("converted_from_hf"):
        notes.append("a checkpoint converted from Hugging Face: weights only; optimizer and "
                     "RNG start fresh")
    elif weights_only:
        notes.append("weights only (checkpoint.load_weights_only): optimizer, RNG and data "
                     "position start fresh")
    elif not same_layout:
        notes.append(
            f"layout changed ({_fmt_layout(state.get('layout'))} -> "
            f"{_fmt_layout(layout_of(cfg))}): weights resharded; the optimizer state "
            f"(AdamW moments) and RNG streams start fresh; the data position carries over")
    else:
        _load_optimizer(ckpt, engine)
        set_rng_state(_safe_load(ckpt / "rng" / f"rank_{_rank():05d}.pt"))
        optimizer = rng = True
    return Restored(trainer_state=state, optimizer=optimizer, rng=rng, notes=notes)


def _fmt_layout(layout: dict[str, int] | None) -> str:
    if not layout:
        return "unknown"
    return (f"tp={layout.get('tp')} pp={layout.get('pp')} dp={layout.get('dp')} "
            f"vpp={layout.get('vpp')} zero={layout.get('zero_stage')} "
            f"optimizer={layout.get('optimizer', 'deepspeed')}")


def _load_optimizer(ckpt: Path, engine: TrainingEngine) -> None:
    """DeepSpeed's ZeRO optimizer restores its partition from all DP ranks' files of this
    (tp, pp) position (it may re-slice partitions across ranks)."""
    tp, pp = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    files = [ckpt / _optim_file(tp, pp, dp) for dp in range(ps.get_data_parallel_world_size())]
    if isinstance(engine, LocalEngine):  # one DP rank: torch's own optimizer state
        engine.optimizer.load_state_dict(_safe_load(files[0]))
        return
    engine.optimizer.load_state_dict([_safe_load(f) for f in files],
                                     load_optimizer_states=True)
