"""A shard as a box inside a parameter's full logical shape, and a fragment of a box.

Tensor and pipeline parallelism cut a parameter into boxes (an offset and a size per
dimension of its full, TP=1 shape). ZeRO then flattens each rank's box and hands every
data-parallel rank a contiguous range of it. So what one rank holds of one parameter is a
`Fragment`: the global name, the full shape, the box, and a flat range [start, stop) of the
box in row-major order. Moving state between layouts is the intersection of fragments.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch


@dataclass(frozen=True)
class Box:
    """A rectangular region of a tensor: `offsets` and `sizes` per dimension."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]

    @property
    def numel(self) -> int:
        return prod(self.sizes)

    def intersect(self, other: Box) -> Box | None:
        """The common region, or None when they do not overlap."""
        if len(self.offsets) != len(other.offsets):
            raise ValueError(f"boxes of rank {len(self.offsets)} and {len(other.offsets)}")
        lo = tuple(max(a, b) for a, b in zip(self.offsets, other.offsets))
        hi = tuple(min(a + n, b + m) for a, n, b, m in
                   zip(self.offsets, self.sizes, other.offsets, other.sizes))
        if any(h <= low for low, h in zip(lo, hi)):
            return None
        return Box(lo, tuple(h - low for low, h in zip(lo, hi)))

    def local_slices(self, inner: Box) -> tuple[slice, ...]:
        """Where `inner` (inside this box) lies in this box's own coordinates."""
        return tuple(slice(o - s, o - s + n)
                     for o, n, s in zip(inner.offsets, inner.sizes, self.offsets))

    def to_json(self) -> list[list[int]]:
        return [list(self.offsets), list(self.sizes)]

    @classmethod
    def from_json(cls, data: list[list[int]]) -> Box:
        return cls(tuple(int(x) for x in data[0]), tuple(int(x) for x in data[1]))


@dataclass(frozen=True)
class Fragment:
    """What one rank holds of one parameter: `box` of the full `shape` of the parameter
    named `key`, and of that box the flat (row-major) range [start, stop)."""

    key: str
    shape: tuple[int, ...]
    box: Box
    start: int
    stop: int

    @property
    def numel(self) -> int:
        return self.stop - self.start

    def to_json(self) -> dict:
        return {"key": self.key, "shape": list(self.shape), "box": self.box.to_json(),
                "range": [self.start, self.stop]}

    @classmethod
    def from_json(cls, data: dict) -> Fragment:
        return cls(str(data["key"]), tuple(int(x) for x in data["shape"]),
                   Box.from_json(data["box"]), int(data["range"][0]), int(data["range"][1]))


def boxes_tile(shape: tuple[int, ...], boxes: list[Box]) -> bool:
    """Whether distinct `boxes` cover `shape` exactly once (disjoint, nothing left out)."""
    whole = Box(tuple(0 for _ in shape), tuple(shape))
    for i, box in enumerate(boxes):
        if whole.intersect(box) != box:
            return False
        if any(box.intersect(other) is not None for other in boxes[i + 1:]):
            return False
    return sum(box.numel for box in boxes) == whole.numel


def ranges_cover(ranges: list[tuple[int, int]], total: int) -> bool:
    """Whether the flat ranges together cover [0, total)."""
    reached = 0
    for start, stop in sorted(ranges):
        if start > reached:
            return False
        reached = max(reached, stop)
    return reached >= total


def fill_fragment(target: Fragment, sources: list[tuple[Fragment, torch.Tensor]],
                  out: torch.Tensor) -> None:
    """Write the values of `target`'s flat range into `out` (1-D, target.numel long) from
    saved fragments of the same parameter, each with its 1-D values.

    The saved boxes must tile the parameter and their ranges cover each box (checked by
    the caller). Fragments of the target's own box are copied range to range. Other boxes
    (another TP layout) are assembled whole, one at a time, and their overlap with the
    target's box copied: memory grows by two boxes at most (one parameter's TP shard)."""
    same_box = [(f, v) for f, v in sources if f.box == target.box]
    if same_box:  # saved boxes tile the shape: this one box holds all of the target
        for frag, values in same_box:
            lo, hi = max(frag.start, target.start), min(frag.stop, target.stop)
            if lo < hi:
                out[lo - target.start:hi - target.start].copy_(
                    values[lo - frag.start:hi - frag.start])
        return
    other = {}
    for frag, values in sources:
        if frag.box != target.box and frag.box.intersect(target.box) is not None:
            other.setdefault(frag.box, []).append((frag, values))
    whole_target = torch.empty(target.box.sizes, dtype=out.dtype)
    flat_target = whole_target.view(-1)
    for box, parts in other.items():
        saved = torch.empty(box.numel, dtype=out.dtype)
        for frag, values in parts:
            saved[frag.start:frag.stop].copy_(values)
        common = box.intersect(target.box)
        whole_target[target.box.local_slices(common)] = \
            saved.view(box.sizes)[box.local_slices(common)]
        del saved
    out.copy_(flat_target[target.start:target.stop])
