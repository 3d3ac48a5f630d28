"""The tensors of a Hugging Face safetensors folder, read one at a time."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nextlat_pt.convert.errors import ConvertError


class HFWeights:
    """Tensors of a safetensors folder (one file or an index of shards), read lazily."""

    def __init__(self, hf_dir: Path) -> None:
        single = hf_dir / "model.safetensors"
        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ConvertError(f"{index} is not a safetensors index ({err!r})") from err
            self.files = {name: hf_dir / file for name, file in weight_map.items()}
        elif single.is_file():
            self.files = {name: single for name in _keys(single)}
        else:
            found = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(
                p.name for p in hf_dir.glob("*.pth"))
            hint = (f" (found {', '.join(found[:3])}: convert those to safetensors first)"
                    if found else "")
            raise ConvertError(f"{hf_dir} has no model.safetensors or "
                               f"model.safetensors.index.json{hint}")
        missing = sorted({str(p.name) for p in self.files.values() if not p.is_file()})
        if missing:
            raise ConvertError(f"{hf_dir} is incomplete: shard(s) {', '.join(missing)} "
                               f"listed in the index are missing")

    def names(self) -> set[str]:
        """Every tensor name the folder holds."""
        return set(self.files)

    def get(self, name: str) -> torch.Tensor:
        """One tensor, as float32 (read from its shard only)."""
        from safetensors import safe_open

        if name not in self.files:
            raise ConvertError(f"the weights have no tensor {name!r}; not a LlamaForCausalLM "
                               f"checkpoint?")
        try:
            with safe_open(str(self.files[name]), framework="pt") as f:
                return f.get_tensor(name).to(torch.float32)
        except Exception as err:  # safetensors raises its own error type for bad files
            raise ConvertError(f"{self.files[name]}: cannot read {name} ({err})") from err


def _keys(path: Path) -> list[str]:
    """The tensor names of one safetensors file (its header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as err:  # safetensors raises its own error type for bad files
        raise ConvertError(f"{path} is not a readable safetensors file ({err})") from err
