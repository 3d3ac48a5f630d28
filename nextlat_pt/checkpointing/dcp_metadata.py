"""torch.distributed.checkpoint's `.metadata` file, refused unless it names only plain classes.

DCP reads its `.metadata` with plain pickle. Before it does, the file is walked by an
unpickler that only resolves the storage-metadata names, so a checkpoint can name nothing
else (no arbitrary callables).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from nextlat_pt.checkpointing.errors import CheckpointError

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
