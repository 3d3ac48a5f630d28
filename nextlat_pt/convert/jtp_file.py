"""JTP's Fetch module beside a Hugging Face export.

    jtp_fetch.safetensors   offsets [d+1, D], norm.weight [D], qkv.weight [3D, D],
                            proj.weight [D, D], out_norm.weight [D]
    jtp_fetch.json          its config: d, λ, the formula, qkv's row layout

The exported Llama is the trunk (the plain next-token model). Fetch reads its final post-norm
hidden state h_t (the LM head's input) and the input embeddings of the next d tokens, and its
outputs are decoded through the Llama's LM head (`model/jtp_fetch.py`). transformers has no
class for it; the JSON says how to compute it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nextlat_pt.config import Config
from nextlat_pt.convert.errors import ConvertError

JTP_WEIGHTS = "jtp_fetch.safetensors"
JTP_CONFIG = "jtp_fetch.json"
JTP_TENSORS = ("offsets", "norm.weight", "qkv.weight", "proj.weight", "out_norm.weight")
PREFIX = "jtp_fetch."


def checkpoint_has_fetch(keys: list[str]) -> bool:
    """Whether a checkpoint's keys hold a Fetch module."""
    return any(key.startswith(PREFIX) for key in keys)


def jtp_config(cfg: Config, steps: int) -> dict[str, Any]:
    """The JSON beside the weights."""
    return {
        "format": "nextlat_jtp_fetch/1",
        "steps": steps,
        "lambda": cfg.nextlat.jtp_lambda,
        "num_heads": cfg.model.num_heads,
        "norm_eps": cfg.model.norm_eps,
        "formula": "slots_t = [h_t, embed_tokens(x_{t+1}), .., embed_tokens(x_{t+d})] + offsets; "
                   "u = slots + proj(causal_attention(qkv(rmsnorm(slots)))); "
                   "lm_head(out_norm(u[i]))[t] predicts x_{t+i+1}, i = 1 .. d",
        "qkv_rows": "[num_heads, 3 (q, k, v), head_dim]",
        "input": "h: the final post-norm hidden state (the LM head's input); embed_tokens: "
                 "the model's input embedding",
    }


def export_fetch(reader, cfg: Config, dtype: torch.dtype, out_dir: Path) -> None:
    """Read Fetch from the checkpoint and write the file and its JSON."""
    from safetensors.torch import save_file

    tensors = reader.read({name: (PREFIX + name, None) for name in JTP_TENSORS})
    config = jtp_config(cfg, tensors["offsets"].shape[0] - 1)
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()},
              str(out_dir / JTP_WEIGHTS),
              metadata={"format": "pt", "nextlat_jtp_fetch": json.dumps(config)})
    (out_dir / JTP_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def load_fetch(hf_dir: Path) -> dict[str, Tensor]:
    """Fetch's tensors from an export, as our state dict names (`jtp_fetch.…`); {} when the
    folder has no Fetch."""
    from safetensors.torch import load_file

    path = hf_dir / JTP_WEIGHTS
    if not path.is_file():
        return {}
    tensors = load_file(str(path))
    missing = [name for name in JTP_TENSORS if name not in tensors]
    if missing:
        raise ConvertError(f"{path} lacks {missing}; it is not a complete {JTP_WEIGHTS}")
    return {PREFIX + name: tensors[name] for name in JTP_TENSORS}
