"""Multi-token prediction's extra heads beside a Hugging Face export.

    mtp_heads.safetensors   head k = 2 .. n as one Llama decoder layer each, named like
                            transformers' layers: head{k}.self_attn.q_proj.weight, ...,
                            head{k}.mlp.down_proj.weight (9 tensors per head)
    mtp_heads.json          its config: n, how the heads are computed

The exported Llama is the trunk with head 1 (its last layer): the plain next-token model.
Head k reads the input of that last layer (the hidden states after layers 0 .. L-2) and is
decoded through the Llama's own final norm and LM head: logits_k = lm_head(norm(head_k(z))).
transformers has no class for the heads; the JSON says how to compute them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nextlat_pt.convert import llama_mapping as lm
from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.model.shape import ModelShape

MTP_WEIGHTS = "mtp_heads.safetensors"
MTP_CONFIG = "mtp_heads.json"
_LAYER = "gpt.decoder.layers."


def megatron_head_keys(k: int) -> dict[str, str]:
    """Head k's checkpoint keys, named as `llama_mapping.LAYER_KEYS` (its extra layer k-2)."""
    return {name: key.replace(_LAYER, f"mtp_heads.layers.{k - 2}.")
            for name, key in lm.LAYER_KEYS.items()}


def _file_names(k: int) -> dict[str, str]:
    """Our file's names for head k: the HF layer names with `head{k}.` for `model.layers.N.`."""
    return {name: f"head{k}." + hf.split(".", 3)[3]
            for name, hf in lm.hf_layer_names(0).items()}


def head_count(keys: list[str]) -> int:
    """n: 1 + the extra heads a checkpoint's keys hold."""
    return 1 + len({key.split(".")[2] for key in keys if key.startswith("mtp_heads.layers.")})


def mtp_config(shape: ModelShape, heads: int) -> dict[str, Any]:
    """The JSON beside the weights."""
    return {
        "format": "nextlat_mtp_heads/1",
        "heads": heads,
        "extra_heads": list(range(2, heads + 1)),
        "formula": "logits_k(t) = lm_head(model.norm(head_k(z)))[t] predicts x_{t+k}; "
                   "head 1 is the Llama itself",
        "input": f"z: the input of model.layers.{shape.num_layers - 1} (the hidden states "
                 f"after the first {shape.num_layers - 1} layers)",
        "layer": "a Llama decoder layer (same sizes, RoPE and attention as model.layers)",
    }


def heads_from_checkpoint(reader, shape: ModelShape) -> list[dict[str, Tensor]]:
    """Heads 2 .. n of a checkpoint as Llama layers, keyed as `hf_layer_names`' keys
    (what the inference decoder takes); [] without heads."""
    layer_names = lm.hf_layer_names(0)
    heads = []
    for k in range(2, head_count(reader.keys()) + 1):
        ours = reader.read({name: (key, None) for name, key in megatron_head_keys(k).items()})
        hf = lm.megatron_layer_to_hf(0, ours, shape.num_heads, shape.num_query_groups,
                                     shape.head_dim)
        heads.append({name: hf[layer_names[name]] for name in layer_names})
    return heads


def heads_from_export(hf_dir: Path) -> list[dict[str, Tensor]]:
    """Heads 2 .. n from an export's mtp_heads.safetensors, keyed as `hf_layer_names`' keys;
    [] when the folder has none."""
    from safetensors.torch import load_file

    path = hf_dir / MTP_WEIGHTS
    if not path.is_file():
        return []
    tensors = load_file(str(path))
    heads = []
    for k in sorted({int(name.split(".")[0].removeprefix("head")) for name in tensors}):
        names = _file_names(k)
        missing = [n for n in names.values() if n not in tensors]
        if missing:
            raise ConvertError(f"{path} lacks {missing[:3]}; it is not a complete "
                               f"{MTP_WEIGHTS}")
        heads.append({key: tensors[name] for key, name in names.items()})
    return heads


def export_mtp_heads(reader, shape: ModelShape, heads: int, dtype: torch.dtype,
                     out_dir: Path) -> None:
    """Read heads 2 .. n from the checkpoint and write the file and its JSON."""
    from safetensors.torch import save_file

    tensors = {}
    for k, head in enumerate(heads_from_checkpoint(reader, shape), start=2):
        names = _file_names(k)
        tensors.update({names[key]: head[key].to(dtype).contiguous() for key in names})
    config = mtp_config(shape, heads)
    save_file(tensors, str(out_dir / MTP_WEIGHTS),
              metadata={"format": "pt", "nextlat_mtp_heads": json.dumps(config)})
    (out_dir / MTP_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def load_mtp_heads(hf_dir: Path, shape: ModelShape) -> dict[int, dict[str, Tensor]] | None:
    """{k: head k's tensors keyed as `llama_mapping.LAYER_KEYS`} from an export, or None."""
    layer_names = lm.hf_layer_names(0)
    heads = {}
    for k, head in enumerate(heads_from_export(hf_dir), start=2):
        hf = {layer_names[key]: tensor for key, tensor in head.items()}
        heads[k] = lm.hf_layer_to_megatron(0, hf, shape.num_heads, shape.num_query_groups,
                                           shape.head_dim)
    return heads or None
