"""Wrong, incomplete or unsupported inputs give one `nextlat-pt: error: ...` line and exit 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from nextlat_pt.convert.cli import convert_main
from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.convert.megatron_reader import TensorInfo
from nextlat_pt.convert.to_hf import _check_architecture
from nextlat_pt.eval.cli import eval_main
from nextlat_pt.model.shape import ModelShape


def run(main, argv, capsys) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("nextlat-pt: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_wrong_or_incomplete_checkpoint_dirs(tmp_path, capsys):
    assert "does not exist" in run(convert_main, ["--to", "hf", tmp_path / "nope",
                                                   tmp_path / "out"], capsys)
    step = tmp_path / "run" / "checkpoints" / "step_0000005"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    msg = run(convert_main, ["--to", "hf", tmp_path / "run", tmp_path / "out"], capsys)
    assert "no complete checkpoint" in msg and "incomplete" in msg
    msg = run(convert_main, ["--to", "hf", step, tmp_path / "out"], capsys)
    assert "not a complete checkpoint" in msg
    assert "required: --to" in run(convert_main, [step, tmp_path / "out"], capsys)


def test_corrupt_checkpoint_and_busy_output(hf_folder, tmp_path, capsys, parallel_tp1):
    ckpt = tmp_path / "ckpt"
    assert convert_main(["--to", "nextlat", str(hf_folder), str(ckpt), "model.seq_len=32",
                         "nextlat.objective=ntp"]) == 0
    capsys.readouterr()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert "not empty" in run(convert_main, ["--to", "hf", ckpt, busy], capsys)
    assert "--to nextlat" in run(convert_main, ["--to", "hf", hf_folder, tmp_path / "o"],
                                 capsys)
    with open(ckpt / "config.yaml", "a") as f:
        f.write("# edited\n")
    assert "fails its checksum" in run(convert_main, ["--to", "hf", ckpt, tmp_path / "o"],
                                       capsys)
    assert not (tmp_path / "o").exists()


def _variant(hf_folder, tmp_path, name, **changes):
    folder = tmp_path / name
    shutil.copytree(hf_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes,message", [
    ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ({"attention_bias": True}, "attention_bias=true is not supported"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
     "RoPE scaling 'linear' is not supported"),
    ({"head_dim": 8}, "head_dim=8"),
    ({"vocab_size": 640}, "vocab_size is 640"),
])
def test_unsupported_hf_architectures(changes, message, hf_folder, tmp_path, capsys):
    folder = _variant(hf_folder, tmp_path, "variant", **changes)
    assert message in run(convert_main, ["--to", "nextlat", folder, tmp_path / "o"], capsys)


def test_incomplete_hf_folders(hf_folder, tmp_path, capsys):
    out = tmp_path / "o"
    assert "no config.json" in run(convert_main, ["--to", "nextlat", tmp_path, out], capsys)
    no_tok = _variant(hf_folder, tmp_path, "no_tok")
    (no_tok / "tokenizer.model").unlink()
    assert "no tokenizer.model" in run(convert_main, ["--to", "nextlat", no_tok, out], capsys)
    no_weights = _variant(hf_folder, tmp_path, "no_weights")
    (no_weights / "model.safetensors").unlink()
    assert "has no model.safetensors" in run(convert_main, ["--to", "nextlat", no_weights,
                                                            out], capsys)
    missing_shard = _variant(hf_folder, tmp_path, "missing_shard")
    (missing_shard / "model.safetensors").unlink()
    (missing_shard / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}))
    assert "incomplete" in run(convert_main, ["--to", "nextlat", missing_shard, out], capsys)
    assert "contradicts" in run(convert_main, ["--to", "nextlat", hf_folder, out,
                                               "model.hidden_size=64"], capsys)
    assert "unknown config key" in run(convert_main, ["--to", "nextlat", hf_folder, out,
                                                      "parallel.tpp=2"], capsys)
    assert not out.exists()


class FakeReader:
    """Just the metadata of a checkpoint, for the architecture check."""

    model_dir = "ckpt/model"

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes

    def keys(self):
        return list(self.shapes)

    def has(self, key):
        return key in self.shapes

    def info(self, key):
        if key not in self.shapes:
            raise ConvertError(f"no tensor {key}")
        return TensorInfo(self.shapes[key], torch.float32)


def test_exporter_refuses_what_a_llama_cannot_hold():
    shape = ModelShape(num_layers=2, hidden_size=8, num_heads=2, num_query_groups=2,
                       ffn_hidden_size=16, vocab_size=10, max_position_embeddings=16,
                       tie_embeddings=False, rotary_base=1e4, norm_eps=1e-5)
    p = "gpt.decoder.layers."
    good = {
        "gpt.embedding.word_embeddings.weight": (16, 8), "gpt.output_layer.weight": (16, 8),
        "gpt.decoder.final_layernorm.weight": (8,),
        p + "self_attention.linear_qkv.layer_norm_weight": (2, 8),
        p + "self_attention.linear_qkv.weight": (2, 24, 8),
        p + "self_attention.linear_proj.weight": (2, 8, 8),
        p + "mlp.linear_fc1.layer_norm_weight": (2, 8),
        p + "mlp.linear_fc1.weight": (2, 32, 8), p + "mlp.linear_fc2.weight": (2, 8, 16),
    }
    _check_architecture(FakeReader(good), shape)
    with pytest.raises(ConvertError, match="unsupported architecture.*linear_qkv.bias"):
        _check_architecture(FakeReader({**good, p + "self_attention.linear_qkv.bias": (2, 24)}),
                            shape)
    with pytest.raises(ConvertError, match="does not match the weights"):
        _check_architecture(FakeReader({**good, p + "mlp.linear_fc2.weight": (2, 8, 12)}), shape)
    untied_without_head = {k: v for k, v in good.items() if k != "gpt.output_layer.weight"}
    with pytest.raises(ConvertError, match="no output layer"):
        _check_architecture(FakeReader(untied_without_head), shape)


def test_eval_errors(hf_folder, tmp_path, capsys):
    assert "neither a nextlat_pt checkpoint nor" in run(eval_main, [tmp_path], capsys)
    assert "pass --data" in run(eval_main, [hf_folder], capsys)
    assert "not found" in run(eval_main, [hf_folder, "--data", tmp_path / "none"], capsys)
