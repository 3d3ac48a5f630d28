"""Write a model as Hugging Face safetensors shards, one shard in memory at a time.

The caller plans the tensors as groups (the embedding, each decoder layer, the head) with
their sizes known up front, so the shard files and the index can be named before anything is
read; each shard's groups are then produced, written and dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

SAFE_INDEX = "model.safetensors.index.json"


@dataclass
class TensorGroup:
    """Tensors produced together (e.g. one decoder layer), and their total size in bytes."""

    name: str
    nbytes: int
    produce: Callable[[], dict[str, Tensor]]


def plan_shards(groups: list[TensorGroup], max_shard_bytes: int) -> list[list[TensorGroup]]:
    """Consecutive groups packed into shards of at most `max_shard_bytes` (a bigger group
    gets a shard of its own)."""
    shards: list[list[TensorGroup]] = [[]]
    size = 0
    for group in groups:
        if shards[-1] and size + group.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(group)
        size += group.nbytes
    return [s for s in shards if s]


def write_safetensors(out_dir: Path, groups: list[TensorGroup], max_shard_bytes: int,
                      dtype: torch.dtype, progress: bool = True) -> list[str]:
    """Write the groups as `model.safetensors` (one shard) or `model-0000i-of-0000n` shards
    plus the index; returns the file names."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    shards = plan_shards(groups, max_shard_bytes)
    total = sum(g.nbytes for g in groups)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map: dict[str, str] = {}
    total_size = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc="writing safetensors",
              disable=not progress) as bar:
        for name, shard in zip(names, shards):
            tensors: dict[str, Tensor] = {}
            for group in shard:
                produced = group.produce()
                for key, tensor in produced.items():
                    if key in tensors or key in weight_map:
                        raise ValueError(f"tensor {key} produced twice")
                    tensors[key] = tensor.to(dtype).contiguous()
                bar.update(group.nbytes)
            save_file(tensors, str(out_dir / name), metadata={"format": "pt"})
            for key, tensor in tensors.items():
                weight_map[key] = name
                total_size += tensor.numel() * tensor.element_size()
            del tensors  # the next shard starts from empty memory
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(
            weight_map.items()))}
        (out_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        names.append(SAFE_INDEX)
    return names


def parse_size(text: str) -> int:
    """'2GB', '500MB', '10KB' or a plain number of bytes -> bytes."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
             "B": 1}
    value = text.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            return int(float(value[: -len(unit)]) * units[unit])
    return int(value)
