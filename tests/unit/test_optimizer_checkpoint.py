"""Layout-independent optimizer state: the box arithmetic, and what a bad checkpoint gets.

The box tests cut a known tensor the way one layout shards it (boxes along one dimension,
then flat ZeRO ranges of each box) and reassemble it as another layout holds it. The
bad-input tests save a real one-process model's AdamW state and break the files: each
gets one line naming the file or the parameter, and the engine keeps its state untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nextlat_pt.checkpointing import optimizer_state
from nextlat_pt.checkpointing.boxes import Box, Fragment, boxes_tile, fill_fragment, ranges_cover
from nextlat_pt.checkpointing.errors import CheckpointError

SHAPE = (6, 8)


def _shard(full: torch.Tensor, boxes: list[Box], dp: int) -> list[tuple[Fragment, torch.Tensor]]:
    """Each box flattened and cut into `dp` contiguous ranges (uneven, like ZeRO)."""
    out = []
    for box in boxes:
        flat = full[tuple(slice(o, o + n) for o, n in zip(box.offsets, box.sizes))].reshape(-1)
        cuts = [0, *sorted({(i * flat.numel() + 1) // dp for i in range(1, dp)}), flat.numel()]
        for start, stop in zip(cuts, cuts[1:]):
            out.append((Fragment("w", SHAPE, box, start, stop), flat[start:stop].clone()))
    return out


ROWS = [Box((0, 0), (3, 8)), Box((3, 0), (3, 8))]      # TP=2 along dim 0
COLUMNS = [Box((0, 0), (6, 4)), Box((0, 4), (6, 4))]   # TP=2 along dim 1
WHOLE = [Box((0, 0), SHAPE)]                           # TP=1


@pytest.mark.parametrize("saved_boxes,saved_dp", [(ROWS, 3), (WHOLE, 2), (COLUMNS, 1)])
@pytest.mark.parametrize("target_boxes,target_dp", [(COLUMNS, 2), (WHOLE, 1), (ROWS, 3)])
def test_fragments_reassemble_in_any_other_layout(saved_boxes, saved_dp, target_boxes,
                                                  target_dp):
    full = torch.arange(48, dtype=torch.float32).view(SHAPE)
    saved = _shard(full, saved_boxes, saved_dp)
    for target, expected in _shard(full, target_boxes, target_dp):
        out = torch.full((target.numel,), -1.0)
        fill_fragment(target, saved, out)
        assert torch.equal(out, expected), target


def test_box_intersection_and_local_slices():
    a, b = Box((0, 2), (4, 4)), Box((2, 0), (4, 4))
    common = a.intersect(b)
    assert common == Box((2, 2), (2, 2))
    assert a.local_slices(common) == (slice(2, 4), slice(0, 2))
    assert Box((0, 0), (2, 2)).intersect(Box((2, 0), (2, 2))) is None  # touching only


def test_tiling_and_coverage_find_gaps_and_overlaps():
    assert boxes_tile(SHAPE, ROWS) and boxes_tile(SHAPE, COLUMNS)
    assert not boxes_tile(SHAPE, ROWS[:1])                       # a shard missing
    assert not boxes_tile(SHAPE, [*ROWS, Box((2, 0), (1, 8))])   # an overlap
    assert ranges_cover([(0, 5), (5, 9)], 9) and ranges_cover([(4, 9), (0, 5)], 9)
    assert not ranges_cover([(0, 4), (5, 9)], 9) and not ranges_cover([(0, 5)], 9)


# ---------------------------------------------------------------------------------------------
# a real model's state, and broken checkpoints
# ---------------------------------------------------------------------------------------------


def _trained(optimizer: str):
    """A one-process model and local engine after one step of `optimizer`."""
    from nextlat_pt.config import load_config
    from nextlat_pt.parallel.local_engine import LocalEngine
    from nextlat_pt.train.build import build_model_chunks, model_spec
    from nextlat_pt.train.optim import build_optimizer

    cfg = load_config(None, ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=2",
                             "model.seq_len=16", "nextlat.horizon=1",
                             f"train.optimizer={optimizer}"])
    model = build_model_chunks(model_spec(cfg, 256), torch.device("cpu"))[0]
    engine = LocalEngine(model, build_optimizer(model, cfg.train), cfg.train.grad_clip)
    sum(p.float().square().sum() for p in model.parameters()).backward()
    engine.step()
    return model, engine


@pytest.fixture(params=["adamw"])
def trained(parallel_tp1, request):
    """A one-process model and local engine after one step (AdamW unless parametrized)."""
    return _trained(request.param)


def _save(ckpt: Path, model, engine) -> None:
    (ckpt / "optim").mkdir(parents=True)
    content, fragments = optimizer_state.snapshot([model], engine, rank=0)
    torch.save(content, ckpt / optimizer_state.rank_file(0))
    optimizer_state.write_index(ckpt, optimizer_state.gather_index(fragments, 0))


def _state(engine) -> list[torch.Tensor]:
    out = [p.detach().clone() for p in engine.params]
    for p in engine.params:
        out += [t.clone() for t in engine.optimizer.state[p].values()]
    return out


def _scramble(engine) -> list[torch.Tensor]:
    """Overwrite the optimizer's moments and step (so a load that changes nothing is
    visible). The weights stay: in fp32 they are the masters, loaded with the weights."""
    with torch.no_grad():
        for p in engine.params:
            for value in engine.optimizer.state[p].values():
                value.add_(1.0)
    return _state(engine)


@pytest.mark.parametrize("trained", ["adamw", "muon"], indirect=True)
def test_a_saved_state_loads_back_exactly(trained, tmp_path):
    model, engine = trained
    _save(tmp_path, model, engine)
    before = _state(engine)
    _scramble(engine)
    optimizer_state.load(tmp_path, [model], engine)
    assert all(torch.equal(a, b) for a, b in zip(_state(engine), before))
    # Muon's matrices keep their momentum, the rest AdamW's moments, each saved per fragment.
    kinds = {frozenset(state) - {"step"} for state in
             optimizer_state.read_full_state(tmp_path).values()}
    muon = engine.optimizer.param_groups[0].get("muon", False)
    assert kinds == ({frozenset({"momentum_buffer"}), frozenset({"exp_avg", "exp_avg_sq"})}
                     if muon else {frozenset({"exp_avg", "exp_avg_sq"})})


@pytest.mark.parametrize("saved,loading,missing", [("adamw", "muon", "momentum_buffer"),
                                                   ("muon", "adamw", "exp_avg")])
def test_another_optimizers_state_is_refused_in_one_line(parallel_tp1, tmp_path, saved,
                                                         loading, missing):
    model, engine = _trained(saved)
    _save(tmp_path, model, engine)
    other_model, other = _trained(loading)
    with pytest.raises(CheckpointError) as err:
        optimizer_state.load(tmp_path, [other_model], other)
    message = str(err.value)
    assert f"has no {missing}" in message and "train.optimizer" in message, message
    assert "\n" not in message


def _truncate(ckpt: Path) -> str:
    path = ckpt / optimizer_state.rank_file(0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "optim/rank_00000.pt is unreadable"


def _remove(ckpt: Path) -> str:
    (ckpt / optimizer_state.rank_file(0)).unlink()
    return "optimizer shard optim/rank_00000.pt is missing"


def _rename_a_parameter(ckpt: Path) -> str:
    """The checkpoint of another architecture: one parameter the model has is not in it."""
    index = json.loads((ckpt / "optim" / "index.json").read_text())
    fragment = index["files"]["optim/rank_00000.pt"][0]
    name = fragment["key"]
    fragment["key"] = name + "_other"
    (ckpt / "optim" / "index.json").write_text(json.dumps(index))
    return f"no optimizer state for parameter {name}"


def _drop_a_range(ckpt: Path) -> str:
    """A fragment list that leaves part of a parameter out (a shard never written)."""
    index = json.loads((ckpt / "optim" / "index.json").read_text())
    fragment = index["files"]["optim/rank_00000.pt"][0]
    fragment["range"][1] -= 1
    (ckpt / "optim" / "index.json").write_text(json.dumps(index))
    return f"the optimizer state of {fragment['key']} is incomplete"


def _other_shape(ckpt: Path) -> str:
    index = json.loads((ckpt / "optim" / "index.json").read_text())
    for fragment in index["files"]["optim/rank_00000.pt"]:
        fragment["shape"][-1] *= 2
    (ckpt / "optim" / "index.json").write_text(json.dumps(index))
    return "the model's is"


@pytest.mark.parametrize("damage", [_truncate, _remove, _rename_a_parameter, _drop_a_range,
                                    _other_shape])
def test_a_broken_optimizer_checkpoint_is_named_and_nothing_loads(trained, tmp_path, damage):
    model, engine = trained
    _save(tmp_path, model, engine)
    expected = damage(tmp_path)
    before = _scramble(engine)
    with pytest.raises(CheckpointError) as err:
        optimizer_state.load(tmp_path, [model], engine)
    message = str(err.value)
    assert expected in message and "\n" not in message, message
    assert all(torch.equal(a, b) for a, b in zip(_state(engine), before)), "half-loaded"
