"""The benchmark table's arithmetic and assembly (bench/report.py, matmul_peak, benchlib),
on synthetic timings: no benchmark runs here (`python bench/run_all.py --quick` does)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import matmul_peak  # noqa: E402
import report  # noqa: E402
import run_all  # noqa: E402

from nextlat_pt.flops import trunk_matmul_parameters  # noqa: E402
from nextlat_pt.model.gpt import ModelSpec  # noqa: E402

SPEC = ModelSpec(num_layers=3, hidden_size=64, num_heads=4, num_query_groups=2,
                 ffn_hidden_size=96, vocab_size=300, max_position_embeddings=32)


def test_gemm_shapes_cover_exactly_the_trunk_matmuls_of_flops_py():
    rows = 40
    gemms = matmul_peak.gemm_shapes(SPEC, rows)
    assert len(gemms) == 15  # 5 linears × (forward, input grad, weight grad)
    total = sum(g.flops * g.count for g in gemms)
    assert total == 6 * rows * trunk_matmul_parameters(SPEC)
    head = [g for g in gemms if g.layer == "head"]
    assert {(g.m, g.k, g.n) for g in head} == {(40, 64, 384), (40, 384, 64), (384, 40, 64)}


def test_matmul_summary_and_achieved_over_peak():
    gemms = [matmul_peak.Gemm("a", "forward", 10, 10, 10, 2),
             matmul_peak.Gemm("b", "forward", 20, 10, 10, 1)]
    result = matmul_peak.summarize(gemms, [1e-3, 1e-3])  # 2000 and 4000 FLOP per ms
    assert result["peak_flops_per_s"] == pytest.approx(4e6)
    assert result["peak_gemm"] == "b forward 20×10×10"
    # 2·2000 + 4000 FLOPs in 2·1 + 1 ms
    assert result["weighted_flops_per_s"] == pytest.approx(8000 / 3e-3)
    achieved, ratio = matmul_peak.achieved_over_peak(6e9, 2.0, 1e10)
    assert (achieved, ratio) == (3e9, pytest.approx(0.3))
    with pytest.raises(ValueError):
        matmul_peak.achieved_over_peak(1.0, 0.0, 1.0)


def test_interleave_rotates_the_order_and_counts_warmup_apart():
    calls = []

    def step(name):
        def run():
            calls.append(name)
            return float(len(calls))
        return run

    times = benchlib.interleave({"a": step("a"), "b": step("b"), "c": step("c")}, repeats=3,
                                warmup=1)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert times == {"a": [4.0, 9.0, 11.0], "b": [5.0, 7.0, 12.0], "c": [6.0, 8.0, 10.0]}
    assert benchlib.paired_ratio([2.0, 6.0, 3.0], [1.0, 2.0, 3.0]) == 2.0
    assert benchlib.quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)


def _results() -> dict:
    """Every section's result, shaped as the benchmarks return them, with round numbers."""
    def step_row(h, median, flops):
        return {"variant": "NTP" if h == 0 else f"NextLat d={h}", "horizon": h,
                "median_s": median, "ratio_measured": median / 0.5, "ratio_paired": 1.1 * h,
                "ratio_min": 1.2 * h, "ratio_flops": flops / 1e9, "flops_per_token": flops,
                "tokens_per_s": 1000 / median, "times_s": [median]}

    return {
        "steps": {"repeats": 20, "tokens_per_step": 1000,
                  "rows": [step_row(0, 0.5, 1e9), step_row(1, 0.8, 1.5e9),
                           dict(step_row(1, 0.7, 1.3e9), variant="MTP n=2", horizon=None,
                                mtp_heads=2)],
                  "gemms_only": {"median_s": 0.2, "flops_per_step": 4e11, "times_s": [0.2],
                                 "ratio_paired_to_ntp": 0.41},
                  "reference": {
                      "reference": {"median_s": 0.4},
                      "ratios": [{"horizon": 0, "ratio": 1.25, "ratio_paired": 1.2},
                                 {"horizon": 1, "ratio": 2.0, "ratio_paired": 1.9}],
                      "equivalence": {"first_loss_abs_diff": 0.0, "loss_max_abs_diff": 1e-6,
                                      "steps_compared": 22, "same_function": True}},
                  "reference_fused_adamw": {
                      "reference": {"median_s": 0.45},
                      "ratios": [{"horizon": 0, "ratio": 1.11, "ratio_paired": 1.05}],
                      "equivalence": {"first_loss_abs_diff": 0.0}}},
        "matmul": {"peak_flops_per_s": 4e12, "peak_gemm": "head forward", "repeats": 5},
        "memory": {"rows": [{"variant": "NTP", "ratio": 1.25, "peak_bytes": 5 * 2 ** 20,
                             "estimate_bytes": 4 * 2 ** 20, "measure": "rss"}]},
        "data": {"loader": 1e6, "tokenize_per_core": 5e5, "prepare_per_core": 2e5,
                 "workers": 2, "vocab_size": 4096, "corpus_mb": 12.0, "seq_len": 256,
                 "global_batch": 8},
        "checkpoint": {"checkpoint_bytes": 1e8, "parameters": 4e7, "sync_over_raw": 0.5,
                       "async_blocked_over_sync": 0.1,
                       "rows": [{"name": "raw sequential write", "seconds": 1.0},
                                {"name": "sync save (loop blocked)", "seconds": 2.0},
                                {"name": "async save: loop blocked", "seconds": 0.2},
                                {"name": "async save: until complete", "seconds": 2.5}]},
        "export": {"export_over_raw_throughput": 0.25, "seconds_per_billion_parameters": 40.0,
                   "parameters": 3e7, "export_bytes": 1.2e8, "export_s": 1.2},
        "kl_memory": {"rows": [
            {"variant": "materialised", "horizon": 1, "chunk": None, "peak_mib": 200.0,
             "median_s": 1.0},
            {"variant": "chunked", "horizon": 1, "chunk": 256, "peak_mib": 50.0,
             "median_s": 0.5}]},
        "psi_rollout": {"hidden": 256, "psi_width": 512, "seq": 256, "batch": 8, "rows": [
            {"horizon": 4, "fused_median_s": 0.26, "concatenating_median_s": 0.3,
             "ratio": 0.867, "ratio_paired": 0.87, "max_abs_diff": 1e-6}]},
        "step_launches": {"layers": 2, "tokens": 1024, "ratios": [
            {"variant": "NTP", "layer_launches": 0.125, "layer_launches_eager": 80,
             "layer_launches_compiled": 10, "layer_bytes": 0.25, "layer_bytes_eager": 4 << 20,
             "layer_bytes_compiled": 1 << 20, "step_launches": 0.5, "step_launches_eager": 400,
             "step_launches_compiled": 200, "step_bytes": 0.9, "step_bytes_eager": 10 << 30,
             "step_bytes_compiled": 9 << 30}]},
    }


def test_rows_carry_the_ratios_of_every_section():
    rows = report.build_rows(_results(), list(report.ROW_BUILDERS))
    by_name = {r.measurement: r for r in rows}
    assert by_name["NextLat d=1 / NTP step time"].ratio == pytest.approx(1.1)  # paired
    assert "ratio 1.600" in by_name["NextLat d=1 / NTP step time"].details  # of medians
    assert by_name["NextLat d=1 / NTP step time"].target == "FLOP ratio 1.500"
    mtp = by_name["MTP n=2 / NTP step time"]  # beside NextLat's, not in its place
    assert (mtp.ratio, mtp.target) == (pytest.approx(1.1), "FLOP ratio 1.300")
    assert "medians 0.700 / 0.500" in mtp.details
    assert by_name["our NTP step / HF Llama + AdamW (NTP)"].ratio == 1.2
    assert "same function" in by_name["our NTP step / HF Llama + AdamW (NTP)"].details
    assert by_name["our NTP step / HF Llama + fused AdamW (NTP)"].ratio == 1.05
    # achieved = 1e9 FLOP/token × 1000 tokens / 0.5 s = 2e12 FLOP/s over a 4e12 peak
    peak_ntp = by_name["achieved FLOP/s / matmul peak at the model's GEMMs (NTP)"]
    assert peak_ntp.ratio == pytest.approx(0.5)
    assert by_name["the step's GEMMs alone / NTP step time"].ratio == pytest.approx(0.4)
    assert by_name["peak memory per rank / analytic estimate (NTP)"].ratio == 1.25
    # the measured step consumes 1000 tokens / 0.5 s = 2000 tokens/s
    assert by_name["loader tokens/s / training consumption (this machine, NTP)"].ratio == 500
    assert by_name["loader tokens/s / one H100 training 1.3B"].ratio == 20
    assert by_name["async save: loop blocked / sync save"].ratio == 0.1
    assert "40.0 s per billion parameters" in by_name[
        "HF export throughput / raw disk write"].details
    kl = by_name["NextLat loss peak memory: chunked 256 / materialised (d=1)"]
    assert kl.ratio == 0.25
    psi = by_name["ψ rollout fwd+bwd, fused / concatenating (d=4)"]
    assert psi.ratio == 0.87 and "260.0 vs 300.0 ms CPU" in psi.details
    launches = by_name["non-matmul launches per layer, compiled / eager (NTP)"]
    assert launches.ratio == 0.125 and "10 vs 80" in launches.details
    assert by_name["non-matmul bytes per layer, compiled / eager (NTP)"].ratio == 0.25
    assert "10.00 GiB" in by_name["non-matmul launches per step, compiled / eager (NTP)"].details


def test_failed_and_unselected_sections_give_rows_that_say_why():
    results = _results()
    results["steps"] = {"error": "RuntimeError: boom"}
    del results["matmul"]
    rows = report.build_rows(results, ["steps", "matmul", "data"])
    steps = [r for r in rows if r.section == "steps"]
    assert steps and all(r.ratio is None and "FAILED: RuntimeError: boom" in r.details
                         for r in steps)
    matmul = [r for r in rows if r.section == "matmul"]
    assert matmul[0].ratio is None and "FAILED" in matmul[0].details  # steps failed first
    data = {r.measurement: r for r in rows if r.section == "data"}
    assert data["loader tokens/s / training consumption (this machine)"].ratio is None
    assert data["loader tokens/s / one H100 training 1.3B"].ratio == 20  # needs data only
    table = report.format_table(rows, "test machine")
    assert table.startswith("machine: test machine")
    assert "n/a" in table and "FAILED: RuntimeError: boom" in table


def test_json_holds_the_same_rows_as_the_table(tmp_path):
    rows = report.build_rows(_results(), ["steps", "memory"])
    path = tmp_path / "out" / "latest.json"
    report.write_json(path, rows, {"machine": {"cpu": "x"}}, {"memory": {"rows": []}})
    doc = json.loads(path.read_text())
    assert doc["machine"] == {"cpu": "x"}
    assert [r["measurement"] for r in doc["rows"]] == [r.measurement for r in rows]
    assert [r["ratio"] for r in doc["rows"]] == [r.ratio for r in rows]


def test_run_all_command_line(tmp_path, capsys):
    args = run_all.parse_args(["--only", "data,steps", "--quick"])
    assert args.sections == ["steps", "data"]  # the suite's order, not the typed one
    assert run_all.settings(True, ["model.num_layers=3"]).model[-1] == "model.num_layers=3"
    with pytest.raises(SystemExit) as err:
        run_all.parse_args(["--only", "stepz"])
    assert err.value.code == 2
    assert "unknown section(s) stepz" in capsys.readouterr().err
    assert "kl_memory" in run_all.optional_sections() or not (BENCH / "kl_memory.py").exists()
    assert "psi_rollout" in run_all.optional_sections()
    assert "step_launches" in run_all.optional_sections()


def test_nextlat_pt_bench_without_a_checkout_says_so(monkeypatch, tmp_path, capsys):
    from nextlat_pt import bench_command

    monkeypatch.setattr(bench_command, "bench_dir", lambda: tmp_path / "bench")
    assert bench_command.bench_main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert "run_all.py not found" in err and "pip install -e ." in err
