"""torchrun --nproc_per_node=2 tp_worker.py OUT.pt CASE...: the TP=2 side of the equivalence
test, {case name: result} for each named case of tp_case.CASES (one launch for several)."""

import sys

import torch


def main() -> None:
    from nextlat_pt.parallel import distributed

    out_path, names = sys.argv[1], sys.argv[2:]
    layout = distributed.initialize(tp=2, pp=1, seed=1234)
    from tp_case import CASES, run_case

    result = {name: run_case(tp=2, **CASES[name]) for name in names}
    if layout.rank == 0:
        torch.save(result, out_path)
    distributed.destroy()


if __name__ == "__main__":
    main()
