"""The CPU proxy of the GPU step (bench/step_launches.py) pins what issue 15 bought: a compiled
decoder layer launches at least 3× fewer non-matmul operators and moves at least 2× fewer
bytes than the eager one, and stays a handful of fused kernels. A graph break, an unfused
norm or a new cast pass in the layer fails here. Small width, one layer: a count, not a
timing, so it is exact on any machine."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import step_launches  # noqa: E402

# The compiled layer (forward + backward) at this shape: inductor's kernels for RMSNorm +
# QKV layout + RoPE, the attention output's layout, the residual + RMSNorm, SwiGLU, and
# their backwards (10 today). A little headroom for inductor's choices between versions.
MAX_COMPILED_LAYER_LAUNCHES = 12


def test_compiled_layer_launches_and_bytes(parallel_tp1):
    result = step_launches.measure(layers=1, tokens=64, horizons=(0,), quick=True)
    (ratios,) = result["ratios"]
    eager, compiled = result["runs"]
    assert eager["layer_marks"] == compiled["layer_marks"] == 1
    assert compiled["layer"]["launches"] <= MAX_COMPILED_LAYER_LAUNCHES, compiled["layer"]
    assert ratios["layer_launches"] <= 1 / 3, ratios
    assert ratios["layer_bytes"] <= 1 / 2, ratios
    assert compiled["step"]["launches"] < eager["step"]["launches"]
    assert set(compiled["layer"]["by_op"]) == {"inductor kernel"}  # nothing left eager


def test_what_counts_as_a_launch():
    assert step_launches.kind_of("aten::addmm") == "matmul"
    assert step_launches.kind_of("aten::_scaled_dot_product_flash_attention_for_cpu") == \
        "attention"
    assert step_launches.kind_of("aten::view") == "none"
    assert step_launches.kind_of("aten::linear") == "none"  # a composite: its addmm counts
    assert step_launches.kind_of("aten::copy_") == "launch"
    assert step_launches.kind_of("graph_3_cpp_fused_add_mul_0") == "launch"
    assert step_launches.argument_bytes([[4, 8], [], [8]], ["c10::BFloat16", "Scalar", "float"]) \
        == 4 * 8 * 2 + 8 * 4
