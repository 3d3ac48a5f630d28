"""A checkpoint that does not fit the run's model is refused in one line that names the
keys, never with megatron's page of global-shape errors."""

from __future__ import annotations

import pytest

from nextlat_pt.checkpointing.errors import CheckpointError
from nextlat_pt.config import load_config
from nextlat_pt.convert.cli import convert_main
from nextlat_pt.model.gpt import NextLatGPT
from nextlat_pt.train.build import model_spec
from nextlat_pt.train.checkpoint import load_model_weights
from nextlat_pt.train.resume import check_same_model


@pytest.fixture(scope="module")
def one_layer_checkpoint(hf_folder, tmp_path_factory, parallel_tp1):
    ckpt = tmp_path_factory.mktemp("load_errors") / "ckpt"
    assert convert_main(["--to", "nextlat", str(hf_folder), str(ckpt), "model.seq_len=32",
                         "nextlat.objective=ntp"]) == 0
    return ckpt


def test_another_architecture_is_named_by_its_keys(one_layer_checkpoint):
    ckpt = one_layer_checkpoint
    check_same_model(load_config(ckpt / "config.yaml"), ckpt, resume=True)  # the control
    cfg = load_config(ckpt / "config.yaml", ["model.num_layers=2", "model.num_heads=4"])
    with pytest.raises(CheckpointError) as err:
        check_same_model(cfg, ckpt, resume=True)
    message = str(err.value)
    assert "\n" not in message
    assert "model.num_layers is 1 there, 2 here" in message
    assert "model.num_heads is 2 there, 4 here" in message
    assert "(model.num_layers=1 model.num_heads=2)" in message
    assert "checkpoint.resume=false" in message


def test_the_loader_turns_a_shape_mismatch_into_one_line(one_layer_checkpoint):
    """torch.distributed.checkpoint raises a BaseException subclass; it used to escape."""
    cfg = load_config(one_layer_checkpoint / "config.yaml", ["model.num_layers=2"])
    model = NextLatGPT(model_spec(cfg, 600))
    with pytest.raises(CheckpointError, match="weights do not fit this model") as err:
        load_model_weights([model], one_layer_checkpoint)
    assert "\n" not in str(err.value) and "shape" in str(err.value).lower()
