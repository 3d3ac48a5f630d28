"""TP=2 on two gloo processes gives the TP=1 loss and gradients (gathered), to 1e-5.

Covers the vocab-parallel CE and KL, ψ sharded like an MLP, SwiGLU's strided fc1, GQA, and
tied embeddings (the LM head is then the vocab-parallel input embedding).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from launch import torchrun
from tp_case import run_case

HERE = Path(__file__).parent


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_tp2_matches_tp1(parallel_tp1, tmp_path, tied):
    out = tmp_path / "tp2.pt"
    torchrun(HERE / "tp_worker.py", str(out), "1" if tied else "0")
    tp2 = torch.load(out, weights_only=True)
    tp1 = run_case(tp=1, tied=tied)
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
