"""Layout-independent optimizer state: saved where it is held, loaded into any layout.

Each rank writes `optim/rank_NNNNN.pt` with what its optimizer holds: per fragment of a
parameter (global name, full shape, box, flat range; see boxes.py) each moment, the step,
and the fp32 master weights where the weights are not them (bf16; in fp32 the saved
weights are the masters, bit for bit, and loading takes the masters from them). No rank
gathers anything; the tensors are views of the engine's own storage (one flat ZeRO
partition is written once). Rank 0 writes `optim/index.json`: which file holds which
fragments.

Loading, every rank reads the index, checks that it has every fragment of every parameter
it holds (names, shapes, complete boxes), opens only the files that hold an intersecting
fragment (memory-mapped: only the bytes it copies are read), checks them, agrees with the
other ranks that nothing is wrong, and only then writes into the engine. A bad checkpoint
gets one line naming the parameter or the file, and nothing is half-loaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from math import prod
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nextlat_pt.checkpointing.boxes import Box, Fragment, boxes_tile, fill_fragment, ranges_cover
from nextlat_pt.checkpointing.engine_state import (
    HeldState,
    held_states,
    read_step,
    refresh_masters,
    write_step,
)
from nextlat_pt.checkpointing.errors import CheckpointError
from nextlat_pt.checkpointing.placements import Placement, parameter_placements

OPTIM_DIR = "optim"
INDEX = "index.json"
MASTER = "master"


def rank_file(rank: int) -> str:
    """This rank's optimizer file, relative to the step directory."""
    return f"{OPTIM_DIR}/rank_{rank:05d}.pt"


def _fragments(placements: list[Placement], held: HeldState
               ) -> list[tuple[Fragment, int, int]]:
    """The fragments this rank holds of one parameter, each with its flat range in the
    parameter (to slice the held views with)."""
    out = []
    for pl in placements:
        lo, hi = max(pl.start, held.start), min(pl.stop, held.stop)
        if lo < hi:
            frag = Fragment(pl.key, pl.shape, pl.box, lo - pl.start, hi - pl.start)
            out.append((frag, lo - held.start, hi - held.start))
    return out


def _local_fragments(models: list[torch.nn.Module], engine: Any, create: bool
                     ) -> list[tuple[str, Fragment, HeldState, int, int]]:
    """(local parameter name, fragment, held state, range in the held views) for all."""
    held = held_states(engine, create=create)
    out = []
    for name, param, placements in parameter_placements(models):
        state = held.get(id(param))
        if state is None:
            continue
        out += [(name, frag, state, lo, hi) for frag, lo, hi in _fragments(placements, state)]
    return out


def snapshot(models: list[torch.nn.Module], engine: Any, rank: int
             ) -> tuple[dict[str, Any], list[dict]]:
    """This rank's optimizer file content (views, nothing copied) and its fragment list.

    With ZeRO-3 the parameters must be gathered around this call (placements.py)."""
    # An optimizer that has not stepped yet gets its (zero) state as its first step would
    # create it, so every checkpoint holds every moment.
    entries = _local_fragments(models, engine, create=True)
    names = sorted({k for _, _, state, _, _ in entries for k in state.moments})
    if any(state.param.dtype != torch.float32 for _, _, state, _, _ in entries):
        names.insert(0, MASTER)  # bf16 weights: the fp32 masters are more than the weights
    fragments = [frag.to_json() for _, frag, _, _, _ in entries]
    tensors: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    steps = []
    for _, _, state, lo, hi in entries:
        if MASTER in tensors:
            tensors[MASTER].append(state.master[lo:hi].detach())
        for k in names[1 if MASTER in tensors else 0:]:
            # Muon's matrices keep a momentum and no Adam moments, the rest the reverse
            # (train.optimizer=muon): a moment a parameter does not have is None.
            moment = state.moments.get(k)
            tensors[k].append(None if moment is None else moment[lo:hi].detach())
        steps.append(read_step(state))
    content = {"fragments": fragments, "steps": steps, "tensors": tensors, "rank": rank}
    return content, fragments


def gather_index(fragments: list[dict], rank: int) -> dict[str, Any] | None:
    """Every rank's fragment list, on rank 0 (None elsewhere). Collective."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return {"files": {rank_file(rank): fragments}}
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (rank, fragments))
    if rank != 0:
        return None
    return {"files": {rank_file(r): frags for r, frags in sorted(everyone)}}


def write_index(step_dir: Path, index: dict[str, Any]) -> None:
    """optim/index.json (rank 0)."""
    (step_dir / OPTIM_DIR / INDEX).write_text(json.dumps(index))


# ---------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------


def _read_index(ckpt: Path) -> dict[str, list[tuple[str, int, Fragment]]]:
    """key -> (file, position in the file, fragment) for every saved fragment."""
    path = ckpt / OPTIM_DIR / INDEX
    try:
        index = json.loads(path.read_text())
        by_key: dict[str, list[tuple[str, int, Fragment]]] = {}
        for file, fragments in index["files"].items():
            for i, data in enumerate(fragments):
                frag = Fragment.from_json(data)
                by_key.setdefault(frag.key, []).append((file, i, frag))
    except FileNotFoundError as err:
        raise CheckpointError(f"{ckpt}: {OPTIM_DIR}/{INDEX} is missing; the optimizer "
                              f"state cannot be found") from err
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise CheckpointError(f"{ckpt}: {OPTIM_DIR}/{INDEX} is unreadable ({err})") from err
    return by_key


def _check_saved(ckpt: Path, key: str, shape: tuple[int, ...],
                 saved: list[tuple[str, int, Fragment]], local_name: str) -> None:
    """The saved fragments of one parameter fit the model's and cover it completely."""
    if not saved:
        raise CheckpointError(f"{ckpt}: no optimizer state for parameter {key} (this "
                              f"model's {local_name}); the checkpoint holds another model")
    if saved[0][2].shape != shape:
        raise CheckpointError(f"{ckpt}: the optimizer state of {key} has shape "
                              f"{saved[0][2].shape}, the model's is {shape}")
    boxes: dict[Box, list[tuple[int, int]]] = {}
    for _, _, frag in saved:
        boxes.setdefault(frag.box, []).append((frag.start, frag.stop))
    if not boxes_tile(shape, list(boxes)) or not all(
            ranges_cover(ranges, box.numel) for box, ranges in boxes.items()):
        files = sorted({file for file, _, _ in saved})
        raise CheckpointError(f"{ckpt}: the optimizer state of {key} is incomplete (a shard "
                              f"is missing from {', '.join(files)}); use another checkpoint")


def _open_file(ckpt: Path, file: str, expected: int) -> dict[str, Any]:
    """One rank's optimizer file, memory-mapped, checked against the index."""
    path = ckpt / file
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: optimizer shard {file} is missing")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        count = len(content["fragments"])
        tensors = content["tensors"]
        ok = count == expected and all(len(v) == count for v in tensors.values()) and all(
            t is None or t.numel() == Fragment.from_json(f).numel
            for values in tensors.values() for f, t in zip(content["fragments"], values))
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as err:
        raise CheckpointError(f"{ckpt}: optimizer shard {file} is unreadable (truncated or "
                              f"not a checkpoint file: {str(err).splitlines()[0][:120]})"
                              ) from err
    if not ok:
        raise CheckpointError(f"{ckpt}: optimizer shard {file} does not match "
                              f"{OPTIM_DIR}/{INDEX}")
    return content


def _saved(content: dict[str, Any], kind: str, position: int) -> torch.Tensor | None:
    """The saved `kind` of the fragment at `position` of a file; None where it has none."""
    values = content["tensors"].get(kind)
    return None if values is None else values[position]


def _agree(error: str) -> None:
    """Raise the first rank's error on every rank (no rank writes while another failed)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, error)
        error = next((e for e in everyone if e), "")
    if error:
        raise CheckpointError(error)


def load(ckpt: Path, models: list[torch.nn.Module], engine: Any,
         gathered: Callable[[], Any] | None = None) -> list[HeldState]:
    """Map the checkpoint's optimizer state into this rank's engine. Collective.

    `gathered`: a context manager factory holding ZeRO-3 parameters gathered while their
    placements are computed. Returns the states written (for checks)."""
    error = ""
    plan: list[tuple[str, Fragment, HeldState, int, int, list]] = []
    files: dict[str, dict[str, Any]] = {}
    try:
        by_key = _read_index(ckpt)
        if gathered is not None:
            with gathered():
                entries = _local_fragments(models, engine, create=True)
        else:
            entries = _local_fragments(models, engine, create=True)
        counts: dict[str, int] = {}
        for saved in by_key.values():
            for file, _, _ in saved:
                counts[file] = counts.get(file, 0) + 1
        for name, frag, state, lo, hi in entries:
            saved = by_key.get(frag.key, [])
            _check_saved(ckpt, frag.key, frag.shape, saved, name)
            sources = [(file, i, s) for file, i, s in saved if s.box.intersect(frag.box)
                       is not None]
            for file, _, _ in sources:
                if file not in files:
                    files[file] = _open_file(ckpt, file, counts[file])
            plan.append((name, frag, state, lo, hi, sources))
        for _name, frag, state, _, _, sources in plan:
            for file, i, _ in sources:
                missing = [k for k in state.moments if _saved(files[file], k, i) is None]
                if missing:
                    raise CheckpointError(
                        f"{ckpt}: optimizer shard {file} has no {missing[0]} for {frag.key}; "
                        f"it was saved with another optimizer (train.optimizer)")
    except CheckpointError as err:
        error = str(err)
    _agree(error)
    with_masters = bool(files) and all(MASTER in f["tensors"] for f in files.values())
    with torch.no_grad():  # the masters are leaves that require grad (DeepSpeed's partitions)
        for _name, frag, state, lo, hi, sources in plan:
            kinds = [(MASTER, state.master)] if with_masters else []
            for kind, view in [*kinds, *state.moments.items()]:
                values = [(s, _saved(files[file], kind, i)) for file, i, s in sources
                          if _saved(files[file], kind, i) is not None]
                if values:
                    fill_fragment(frag, values, view[lo:hi])
            write_step(state, files[sources[0][0]]["steps"][sources[0][1]])
    if not with_masters:  # an fp32 run's masters are its weights, loaded already
        refresh_masters(engine)
    return [state for _, _, state, _, _, _ in plan]


def read_full_state(ckpt: Path) -> dict[str, dict[str, Any]]:
    """Every parameter's whole optimizer state, assembled from all files: {global name:
    {"master": tensor, <moment>: tensor, ..., "step": int}}. For tests and offline tools
    (it holds the whole state in memory; training never calls it)."""
    by_key = _read_index(ckpt)
    counts: dict[str, int] = {}
    for saved in by_key.values():
        for file, _, _ in saved:
            counts[file] = counts.get(file, 0) + 1
    files = {file: _open_file(ckpt, file, count) for file, count in counts.items()}
    out: dict[str, dict[str, Any]] = {}
    for key, saved in by_key.items():
        shape = saved[0][2].shape
        _check_saved(ckpt, key, shape, saved, key)
        whole = Fragment(key, shape, Box((0,) * len(shape), shape), 0, prod(shape))
        entry: dict[str, Any] = {}
        for kind in files[saved[0][0]]["tensors"]:
            parts = [(frag, _saved(files[file], kind, i)) for file, i, frag in saved]
            if any(tensor is None for _, tensor in parts):
                continue  # a moment this parameter's optimizer does not keep
            values = torch.empty(whole.numel, dtype=torch.float32)
            fill_fragment(whole, parts, values)
            entry[kind] = values.view(shape)
        entry["step"] = files[saved[0][0]]["steps"][saved[0][1]]
        out[key] = entry
    return out
