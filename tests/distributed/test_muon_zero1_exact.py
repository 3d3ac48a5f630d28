"""Muon under ZeRO-1 on two data-parallel ranks is the one-process update, bit for bit.

Each rank feeds the same micro-batches, so the averaged gradient is every rank's own to
the bit, and clipping is off (its norm sums partitions in another order): any difference is
then Muon's. The matrices of the Muon group are cut across the two flat partitions (one
of layer 1's fc1 at this size); each rank must gather them whole before orthogonalising.
Checked to fail when a rank orthogonalises only its own slice. (The Muon resume pair of
test_resume_on_another_layout.py trains it through the CLI on real data-parallel batches.)
"""

from __future__ import annotations

from pathlib import Path

import torch
from launch import torchrun

HERE = Path(__file__).parent


def test_muon_on_two_zero1_ranks_is_the_local_update_bit_for_bit(tmp_path):
    out = tmp_path / "muon.pt"
    torchrun(HERE / "muon_worker.py", str(out), nproc=2, timeout=400)
    result = torch.load(out)
    assert (256, 64) in result["shapes"]  # fc1: the matrix the partition boundary cuts
    assert all(result["same"]), result
