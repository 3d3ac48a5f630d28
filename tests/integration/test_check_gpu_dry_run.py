"""`bench/gpu/check_gpu.py --dry-run`: every section of the GPU bench runs on CPU in bf16 (the
dtype paths that failed on CUDA: float inputs into bf16 weights in model_parity and psi), so
the script a lent GPU gets is known to run before the GPU is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_gpu_section_runs_in_the_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu" / "check_gpu.py"),
                           "--dry-run", "--repeats", "1", "--warmup", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=1200, cwd=REPO)
    report = json.loads(out.read_text())
    failed = {k: v["error"] for k, v in report.items() if isinstance(v, dict) and "error" in v}
    assert proc.returncode == 0 and not failed, failed or proc.stderr[-2000:]
    assert report["attention"]["sdpa_dispatched"]
    assert set(report["reference"]["ratios"]) == {"HF Llama, autocast, fused AdamW",
                                                   "HF Llama, autocast, fused AdamW, "
                                                   "torch.compile"}
    assert {row["kind"] for row in report["profile"]["rows"]} >= {"GEMM", "copy/cast"}
