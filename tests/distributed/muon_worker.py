"""torchrun --nproc_per_node=2 muon_worker.py OUT.pt: Muon under DP=2 ZeRO-1 against the
local engine, both fed the same micro-batches on every rank (so the averaged gradient is
each rank's own, exactly) and without clipping (the norm sums in another order): the
matrices cut across the two partitions must come out bit for bit."""

import sys
from pathlib import Path

import torch


def main() -> None:
    from nextlat_pt.parallel import distributed

    layout = distributed.initialize(tp=1, pp=1, seed=1234)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from test_local_engine import train

    no_clip = ("train.grad_clip=0",)
    _, local = train("local", "muon", extra=no_clip)
    _, zero1 = train("deepspeed", "muon", extra=no_clip)
    same = [torch.equal(a, b) for a, b in zip(local, zero1, strict=True)]
    if layout.rank == 0:
        torch.save({"same": same, "shapes": [tuple(p.shape) for p in local]}, sys.argv[1])
    distributed.destroy()


if __name__ == "__main__":
    main()
