"""torchrun --nproc_per_node=2 tp_worker.py OUT.pt TIED: the TP=2 side of the equivalence test."""

import sys

import torch


def main() -> None:
    from nextlat_pt.parallel import distributed

    out_path, tied = sys.argv[1], sys.argv[2] == "1"
    layout = distributed.initialize(tp=2, pp=1, seed=1234)
    from tp_case import run_case

    result = run_case(tp=2, tied=tied)
    if layout.rank == 0:
        torch.save(result, out_path)
    distributed.destroy()


if __name__ == "__main__":
    main()
