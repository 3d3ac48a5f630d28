"""ψ, the latent dynamics model, beside a Hugging Face export.

    nextlat_dynamics.safetensors   norm.weight [2D], fc1.weight [H, 2D], fc2.weight [H, H],
                                   fc3.weight [D, H]
    nextlat_dynamics.json          its config: sizes, the formula, the NextLat settings

ψ(h, e) = h + fc3 · GELU(fc2 · GELU(fc1 · RMSNorm([h; e]))), where h is the final post-norm
hidden state (the LM head's input) and e = embed_tokens(x_next). transformers has no class
for it; the JSON says how to compute it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from nextlat_pt.config import Config
from nextlat_pt.convert.errors import ConvertError

PSI_WEIGHTS = "nextlat_dynamics.safetensors"
PSI_CONFIG = "nextlat_dynamics.json"
PSI_TENSORS = ("norm.weight", "fc1.weight", "fc2.weight", "fc3.weight")


def psi_config(cfg: Config, width: int) -> dict[str, Any]:
    """The JSON beside the weights."""
    n = cfg.nextlat
    return {
        "format": "nextlat_dynamics/1",
        "formula": "h_next = h + fc3(gelu(fc2(gelu(fc1(rmsnorm(cat([h, embed_tokens(x_next)], "
                   "-1)))))))",
        "hidden_size": cfg.model.hidden_size,
        "width": width,
        "norm_eps": cfg.model.norm_eps,
        "activation": "gelu",
        "input": "h: the final post-norm hidden state (the LM head's input); embed_tokens: "
                 "the model's input embedding",
        "horizon": n.horizon,
        "lambda_latent": n.lambda_latent,
        "lambda_kl": n.lambda_kl,
        "smooth_l1_beta": n.smooth_l1_beta,
        "kl_temperature": n.kl_temperature,
    }


def save_psi(out_dir: Path, tensors: dict[str, Tensor], config: dict[str, Any]) -> None:
    """Write ψ's weights (with its config also in the safetensors metadata) and JSON."""
    from safetensors.torch import save_file

    missing = [k for k in PSI_TENSORS if k not in tensors]
    if missing:
        raise ValueError(f"ψ tensors missing: {missing}")
    save_file({k: tensors[k].contiguous() for k in PSI_TENSORS}, str(out_dir / PSI_WEIGHTS),
              metadata={"format": "pt", "nextlat_dynamics": json.dumps(config)})
    (out_dir / PSI_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def load_psi(hf_dir: Path) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """ψ's weights and config from an export, or None when the folder has none."""
    from safetensors.torch import load_file

    path = hf_dir / PSI_WEIGHTS
    if not path.is_file():
        return None
    tensors = load_file(str(path))
    missing = [k for k in PSI_TENSORS if k not in tensors]
    if missing:
        raise ConvertError(f"{path} lacks {missing}; it is not a nextlat_dynamics file")
    config_path = hf_dir / PSI_CONFIG
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return tensors, config
