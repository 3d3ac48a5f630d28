"""`nextlat-pt bench --quick` end to end: every section of the benchmark suite runs against
the current code (a section that breaks, e.g. on an engine API change, fails here rather than
silently becoming an 'n/a' row), and the table and the JSON carry the same rows."""

from __future__ import annotations

import json

from cli_runner import run_cli


def test_quick_bench_runs_every_section(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli(["bench", "--quick", "--threads", "1", "--json", str(out)], timeout=600)
    doc = json.loads(out.read_text())
    failed = {name: result["error"] for name, result in doc["sections"].items()
              if isinstance(result, dict) and "error" in result}
    assert not failed, f"benchmark sections failed: {failed}"
    assert set(doc["sections"]) >= {"steps", "matmul", "memory", "data", "checkpoint", "export",
                                     "kl_memory", "psi_rollout", "step_launches"}
    measured = [row for row in doc["rows"] if row["ratio"] is not None]
    assert len(measured) == len(doc["rows"]) >= 15
    for row in doc["rows"]:
        assert row["measurement"] in proc.stdout
    assert "same function" in proc.stdout  # the HF reference computes our loss
