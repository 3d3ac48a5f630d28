"""TP=2 on two gloo processes gives the TP=1 loss and gradients (gathered), to 1e-5.

Covers the vocab-parallel CE and KL, ψ sharded like an MLP, SwiGLU's strided fc1, GQA, and
tied embeddings (the LM head is then the vocab-parallel input embedding); and MTP's extra
heads, sharded like the trunk's layers, and JTP's Fetch (whole heads per rank), under sequence
parallelism.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from launch import torchrun
from tp_case import CASES, run_case

HERE = Path(__file__).parent


# Cases that share one torchrun launch (a launch costs more than a case).
LAUNCHES = {"untied_mtp3_jtp2_sp": ("untied", "mtp3_sp", "jtp2_sp"), "tied": ("tied",)}


@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_tp2_matches_tp1(parallel_tp1, tmp_path, launch):
    out = tmp_path / "tp2.pt"
    torchrun(HERE / "tp_worker.py", str(out), *LAUNCHES[launch])
    results = torch.load(out, weights_only=True)
    for name in LAUNCHES[launch]:
        _assert_same(results[name], run_case(tp=1, **CASES[name]))


def _assert_same(tp2: dict[str, torch.Tensor], tp1: dict[str, torch.Tensor]) -> None:
    assert tp1.keys() == tp2.keys()
    for key in tp1:
        if key.startswith("loss."):
            torch.testing.assert_close(tp2[key], tp1[key], atol=1e-5, rtol=1e-5)
    for key in tp1:
        if key.startswith("param."):
            torch.testing.assert_close(tp2[key], tp1[key], atol=0, rtol=0,
                                       msg=lambda m, k=key: f"{k}: {m}")
        if key.startswith("grad."):
            torch.testing.assert_close(tp2[key], tp1[key], atol=1e-5, rtol=1e-4,
                                       msg=lambda m, k=key: f"{k}: {m}")
