"""bench/gpu/check_gpu.py's CPU-checkable pieces: the 1.3B model it builds, the peak table
behind MFU and the summary. (`python bench/gpu/check_gpu.py --dry-run` runs every section on
CPU in bf16; tests/integration/test_check_gpu_dry_run.py runs it.)"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "gpu"))

import check_gpu  # noqa: E402

from nextlat_pt.config import load_config, validate  # noqa: E402


def test_the_gpu_model_is_configs_1b_at_reduced_depth():
    args = argparse.Namespace(dry_run=False, layers=4, micro_batch=8)
    cfg = load_config(None, check_gpu.model_overrides(args, flash=True))
    validate(cfg, world_size=1)
    paper = load_config("1b")
    assert cfg.model.num_layers == 4
    for field in ("hidden_size", "num_heads", "seq_len", "tie_embeddings", "rotary_base",
                  "norm_eps", "ffn_hidden_size"):
        assert getattr(cfg.model, field) == getattr(paper.model, field), field
    assert cfg.nextlat == paper.nextlat  # ψ width 6528, d, λ
    assert cfg.model.vocab_size == 50257  # GPT-2's, padded to 50,304 by the model
    assert (cfg.precision.dtype, cfg.model.attention_backend) == ("bf16", "flash")


def test_peak_table_and_override():
    assert check_gpu.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.4
    assert check_gpu.peak_tflops("NVIDIA H200", None) == 989.4
    assert check_gpu.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert check_gpu.peak_tflops("Tesla T4", None) is None
    assert check_gpu.peak_tflops("Tesla T4", 65.0) == 65.0


def test_summary_reports_mfu_and_failures():
    report = {
        "training": {"rows": [{"variant": "NTP", "median_s": 0.1, "tokens_per_s": 80000.0,
                               "tflops_per_s": 400.0, "mfu": 0.404, "ratio_paired": 1.0,
                               "ratio_flops": 1.0}]},
        "memory": {"error": "RuntimeError: out of memory"},
    }
    lines = check_gpu.summary_lines(report)
    assert "MFU 0.404" in lines[0] and "80,000 tokens/s" in lines[0]
    assert lines[-1] == "memory: FAILED: RuntimeError: out of memory"
