"""bench/psi_rollout.py times the same function both ways: the fused ψ rollout and the
concatenating one agree, and every horizon gets its row."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import psi_rollout  # noqa: E402


def test_psi_rollout_bench_compares_equal_functions(parallel_tp1):
    result = psi_rollout.measure(seq=16, batch=2, hidden=64, horizons=(1, 3), repeats=2,
                                 warmup=0)
    assert [r["horizon"] for r in result["rows"]] == [1, 3]
    for row in result["rows"]:
        assert row["max_abs_diff"] < 1e-5
        assert len(row["fused_times_s"]) == len(row["concatenating_times_s"]) == 2
        assert row["ratio_paired"] > 0
