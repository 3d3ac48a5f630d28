"""Read global tensors out of a dist_checkpointing `model/` directory, a few at a time.

megatron saves every parameter as a global tensor (whatever the TP/PP layout; decoder layers
stacked on a leading axis) in PyTorch's distributed-checkpoint (DCP) format. So one process
can read any slice without building the model or a process group: we plan DCP reads for just
the requested region. Reading one decoder layer at a time bounds an export's memory by the
largest group read at once (one layer, or the embedding table), not by the model.

megatron's own `dist_checkpointing.load` cannot do this in a world of one: it assumes the
slices it does not request belong to other ranks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nextlat_pt.convert.errors import ConvertError


@dataclass(frozen=True)
class TensorInfo:
    """Global shape and dtype of one saved tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def _slice_planner(offsets: dict[str, tuple[int, ...]]):
    """A DCP load planner that fills each destination tensor from the stored tensor's region
    starting at `offsets[fqn]` (the destination's shape gives the region's size)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, LoadPlan
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    class SlicePlanner(DefaultLoadPlanner):
        def create_local_plan(self) -> LoadPlan:
            items = []
            for fqn, tensor in self.state_dict.items():
                chunk = ChunkStorageMetadata(offsets=torch.Size(offsets[fqn]),
                                             sizes=tensor.size())
                items += create_read_items_for_chunk_list(
                    fqn, self.metadata.state_dict_metadata[fqn], [chunk])
            return LoadPlan(items)

        def resolve_tensor(self, read_item):
            # dest_offsets are relative to the requested region, i.e. to our tensor.
            tensor = self.state_dict[read_item.dest_index.fqn]
            for dim, (start, length) in enumerate(zip(read_item.dest_offsets,
                                                      read_item.lengths)):
                tensor = tensor.narrow(dim, start, length)
            return tensor

    return SlicePlanner(flatten_state_dict=False, flatten_sharded_tensors=False)


class MegatronCheckpointReader:
    """Global tensors of one `model/` directory (megatron's torch_dist format)."""

    def __init__(self, model_dir: Path) -> None:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.model_dir = Path(model_dir)
        if not (self.model_dir / ".metadata").is_file():
            raise ConvertError(f"{self.model_dir} holds no dist_checkpointing weights (no "
                               f".metadata file); is the checkpoint complete?")
        try:
            metadata = FileSystemReader(str(self.model_dir)).read_metadata()
        except Exception as err:  # a truncated or foreign file: say which
            raise ConvertError(f"{self.model_dir}: unreadable checkpoint metadata "
                               f"({type(err).__name__}: {err})") from err
        self._meta = {
            key: TensorInfo(tuple(md.size), md.properties.dtype)
            for key, md in metadata.state_dict_metadata.items()
            if isinstance(md, TensorStorageMetadata)
        }

    def keys(self) -> list[str]:
        """Every saved tensor's key."""
        return list(self._meta)

    def has(self, key: str) -> bool:
        """Whether the checkpoint holds a tensor under `key`."""
        return key in self._meta

    def info(self, key: str) -> TensorInfo:
        """The saved tensor's global shape and dtype."""
        if key not in self._meta:
            raise ConvertError(f"{self.model_dir}: the checkpoint has no tensor {key!r}; "
                               f"is it a nextlat_pt GPT checkpoint?")
        return self._meta[key]

    def read(self, requests: dict[str, tuple[str, int | None]]) -> dict[str, Tensor]:
        """{name: (key, layer or None)} -> {name: tensor}: the whole tensor, or one layer's
        slice of a layer-stacked tensor, all in one pass over the files."""
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint import load as dcp_load

        by_key: dict[str, Tensor] = {}
        offsets: dict[str, tuple[int, ...]] = {}
        for key, layer in requests.values():
            info = self.info(key)
            if layer is None:
                shape, offset = info.shape, (0,) * len(info.shape)
            else:
                if not 0 <= layer < info.shape[0]:
                    raise ConvertError(f"{self.model_dir}: layer {layer} out of range for "
                                       f"{key} ({info.shape[0]} layers)")
                shape, offset = (1, *info.shape[1:]), (layer,) + (0,) * (len(info.shape) - 1)
            if key in by_key:
                raise ValueError(f"read() got {key!r} twice; read one slice per call")
            by_key[key] = torch.empty(shape, dtype=info.dtype)
            offsets[key] = offset
        with warnings.catch_warnings():
            # "torch.distributed is disabled ... assuming a single process": that is the intent.
            warnings.filterwarnings("ignore", message=r".*single process.*")
            dcp_load(by_key, storage_reader=FileSystemReader(str(self.model_dir)),
                     planner=_slice_planner(offsets), no_dist=True)
        return {name: by_key[key][0] if layer is not None else by_key[key]
                for name, (key, layer) in requests.items()}
