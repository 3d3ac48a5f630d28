"""The benchmark table: rows of ratios from each section's measurements, printed and as JSON.

Pure functions of the sections' result dicts (no timing here), so the arithmetic is tested on
synthetic numbers (tests/unit/test_bench_report.py). A section that failed or did not run
gives rows whose ratio is None and whose details say why.

Row: measurement (what over what), ratio, target (or the reference it is read against),
details (the absolute figures behind the ratio).

Step-time ratios are the paired ones: the median over repeats of (step A / step B in the same
repeat of the interleaved rotation). On a shared machine whose load drifts during the run
this is much steadier than median(A) / median(B), which the details give too.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matmul_peak import achieved_over_peak

H100_TOKENS_PER_S = 50_000  # one H100, 1.3B config (reported: 45-55K tokens/s/GPU, bf16)
MIB = 1024 ** 2


@dataclass
class Row:
    """One line of the table."""

    section: str
    measurement: str
    ratio: float | None
    target: str
    details: str


def _missing(section: str, measurement: str, why: str) -> Row:
    return Row(section, measurement, None, "", why)


def _failed(results: dict[str, Any], *names: str) -> str | None:
    """Why a row that needs these sections cannot be computed (None when it can)."""
    for name in names:
        got = results.get(name)
        if got is None:
            return f"not run (section '{name}' not selected)"
        if "error" in got:
            return f"section '{name}' FAILED: {got['error']}"
    return None


def step_rows(results: dict[str, Any]) -> list[Row]:
    """NextLat d over NTP (with the FLOP prediction) and ours over the HF reference."""
    why = _failed(results, "steps")
    if why:
        return [_missing("steps", "NextLat / NTP step time", why),
                _missing("steps", "our step / HF Llama + AdamW", why)]
    steps = results["steps"]
    # MTP and JTP variants have no horizon (None); NTP is horizon 0, NextLat d is d
    rows_by_h = {r["horizon"]: r for r in steps["rows"] if r["horizon"] is not None}
    ntp = rows_by_h[0]
    others = [(f"NextLat d={h}", r) for h, r in sorted(rows_by_h.items()) if h != 0]
    others += [(f"JTP d={r['jtp_steps']}" if r.get("jtp_steps") else f"MTP n={r['mtp_heads']}",
                r) for r in steps["rows"] if r["horizon"] is None]
    out = []
    for name, r in others:
        out.append(Row(
            "steps", f"{name} / NTP step time", r["ratio_paired"],
            f"FLOP ratio {r['ratio_flops']:.3f}",
            f"medians {r['median_s']:.3f} / {ntp['median_s']:.3f} s (ratio "
            f"{r['ratio_measured']:.3f}), min/min {r['ratio_min']:.3f}; {steps['repeats']} "
            f"interleaved repeats"))
    ref = steps.get("reference")
    if ref is None:
        out.append(_missing("steps", "our step / HF Llama + AdamW",
                            "no reference in the steps section"))
        return out
    eq = ref["equivalence"]
    same = ("same function" if eq["same_function"] else "NOT THE SAME FUNCTION: ratio invalid")
    for ratio in ref["ratios"]:
        h = ratio["horizon"]
        if h == 0:
            target = "<= 1.0"
            extra = (f"; first loss |diff| {eq['first_loss_abs_diff']:.1e} ({same}), max over "
                     f"{eq['steps_compared']} steps {eq['loss_max_abs_diff']:.1e}")
        elif h == 1:
            target = f"none (FLOP ratio over NTP {rows_by_h[h]['ratio_flops']:.2f})"
            extra = ""
        else:
            continue
        out.append(Row(
            "steps", f"our {rows_by_h[h]['variant']} step / HF Llama + AdamW (NTP)",
            ratio["ratio_paired"], target,
            f"medians {rows_by_h[h]['median_s']:.3f} / {ref['reference']['median_s']:.3f} s "
            f"(ratio {ratio['ratio']:.3f})" + extra))
    fused = steps.get("reference_fused_adamw")
    if fused is not None:  # the reference with our optimizer kernel: model and loss alone
        ratio = fused["ratios"][0]
        out.append(Row(
            "steps", "our NTP step / HF Llama + fused AdamW (NTP)", ratio["ratio_paired"],
            "~1.0: the same optimizer kernel",
            f"medians {ntp['median_s']:.3f} / {fused['reference']['median_s']:.3f} s (ratio "
            f"{ratio['ratio']:.3f}); first loss |diff| "
            f"{fused['equivalence']['first_loss_abs_diff']:.1e}"))
    return out


def matmul_rows(results: dict[str, Any]) -> list[Row]:
    """Achieved training FLOP/s (flops.py's count / median step) over the GEMM peak, and the
    share of a step its GEMMs alone take (timed in the steps' rotation)."""
    name = "achieved FLOP/s / matmul peak at the model's GEMMs"
    out = []
    why = _failed(results, "steps", "matmul")
    if why:
        out.append(_missing("matmul", name, why))
    else:
        steps, mm = results["steps"], results["matmul"]
        tokens, peak = steps["tokens_per_step"], mm["peak_flops_per_s"]
        for r in steps["rows"]:
            if r["horizon"] not in (0, 1):
                continue
            flops = r["flops_per_token"] * tokens
            achieved, ratio = achieved_over_peak(flops, r["median_s"], peak)
            out.append(Row(
                "matmul", f"{name} ({r['variant']})", ratio,
                "1.0 = every FLOP at the fastest GEMM's rate",
                f"{achieved / 1e9:.1f} GFLOP/s achieved ({flops / 1e9:.2f} GFLOP/step, "
                f"flops.py) vs peak {peak / 1e9:.1f} GFLOP/s ({mm['peak_gemm']}, median of "
                f"{mm['repeats']})"))
    if not _failed(results, "steps") and "gemms_only" in results["steps"]:
        g, r = results["steps"]["gemms_only"], results["steps"]["rows"][0]
        out.append(Row(
            "matmul", "the step's GEMMs alone / NTP step time", g["median_s"] / r["median_s"],
            "1.0 = the step is nothing but GEMMs",
            f"{g['median_s']:.3f} s for {g['flops_per_step'] / 1e9:.2f} GFLOP "
            f"({g['flops_per_step'] / g['median_s'] / 1e9:.1f} GFLOP/s) vs the step's "
            f"{r['median_s']:.3f} s, timed in the same rotation; paired "
            f"{g['ratio_paired_to_ntp']:.3f}"))
    return out


def memory_rows(results: dict[str, Any]) -> list[Row]:
    """Measured peak per rank over nextlat_pt/memory.py's estimate."""
    why = _failed(results, "memory")
    if why:
        return [_missing("memory", "peak memory per rank / analytic estimate", why)]
    out = []
    for r in results["memory"]["rows"]:
        out.append(Row(
            "memory", f"peak memory per rank / analytic estimate ({r['variant']})", r["ratio"],
            "1.0 = the estimate is exact",
            f"{r['peak_bytes'] / MIB:.0f} MiB measured ({r['measure']}) vs "
            f"{r['estimate_bytes'] / MIB:.0f} MiB estimated"))
    return out


def data_rows(results: dict[str, Any]) -> list[Row]:
    """Loader over consumption (this machine's measured step and one H100), tokenizer."""
    why = _failed(results, "data")
    if why:
        return [_missing("data", "loader tokens/s / training consumption", why)]
    data = results["data"]
    out = []
    step_why = _failed(results, "steps")
    if step_why:
        out.append(_missing("data", "loader tokens/s / training consumption (this machine)",
                            step_why))
    else:
        ntp = next(r for r in results["steps"]["rows"] if r["horizon"] == 0)
        out.append(Row(
            "data", "loader tokens/s / training consumption (this machine, NTP)",
            data["loader"] / ntp["tokens_per_s"], ">> 1 (never the bottleneck)",
            f"loader {data['loader']:,.0f} tokens/s vs the measured step's "
            f"{ntp['tokens_per_s']:,.0f} tokens/s"))
    out.append(Row(
        "data", "loader tokens/s / one H100 training 1.3B", data["loader"] / H100_TOKENS_PER_S,
        "> 10", f"{data['loader']:,.0f} vs {H100_TOKENS_PER_S:,} tokens/s (T={data['seq_len']},"
                f" global batch {data['global_batch']})"))
    out.append(Row(
        "data", "tokenizer tokens/s per core / one H100 training 1.3B",
        data["tokenize_per_core"] / H100_TOKENS_PER_S, "offline (prepare-data runs once)",
        f"{data['tokenize_per_core']:,.0f} tokens/s/core; prepare-data "
        f"{data['prepare_per_core']:,.0f} tokens/s/core with {data['workers']} workers "
        f"(vocab {data['vocab_size']}, {data['corpus_mb']:.1f} MB)"))
    return out


def checkpoint_rows(results: dict[str, Any]) -> list[Row]:
    """Checkpoint write over raw disk write; async blocking over sync."""
    why = _failed(results, "checkpoint")
    if why:
        return [_missing("checkpoint", "checkpoint save / raw disk write", why)]
    c = results["checkpoint"]
    rows = {r["name"]: r for r in c["rows"]}
    sync, block = rows["sync save (loop blocked)"], rows["async save: loop blocked"]
    raw = rows["raw sequential write"]
    return [
        Row("checkpoint", "checkpoint save throughput / raw disk write", c["sync_over_raw"],
            "1.0 = disk speed (checksums: < 1)",
            f"{c['checkpoint_bytes'] / 1e6:.0f} MB ({c['parameters'] / 1e6:.1f}M params + "
            f"AdamW) in {sync['seconds']:.2f} s vs raw {raw['seconds']:.2f} s"),
        Row("checkpoint", "async save: loop blocked / sync save", c["async_blocked_over_sync"],
            "<< 1", f"blocked {block['seconds']:.2f} s vs {sync['seconds']:.2f} s; complete "
                    f"after {rows['async save: until complete']['seconds']:.2f} s"),
    ]


def export_rows(results: dict[str, Any]) -> list[Row]:
    """HF export throughput over raw write, and seconds per billion parameters."""
    why = _failed(results, "export")
    if why:
        return [_missing("export", "HF export throughput / raw disk write", why)]
    e = results["export"]
    return [Row(
        "export", "HF export throughput / raw disk write", e["export_over_raw_throughput"],
        "1.0 = disk speed",
        f"{e['seconds_per_billion_parameters']:.1f} s per billion parameters "
        f"({e['parameters'] / 1e6:.1f}M params, {e['export_bytes'] / 1e6:.0f} MB in "
        f"{e['export_s']:.2f} s)")]


def kl_memory_rows(results: dict[str, Any]) -> list[Row]:
    """bench/kl_memory.py: the chunked KL's peak over the materialised one, per d and chunk."""
    why = _failed(results, "kl_memory")
    if why:
        return [_missing("kl_memory", "NextLat loss peak memory: chunked / materialised", why)]
    rows = results["kl_memory"].get("rows", [])
    materialised = {r["horizon"]: r for r in rows if r.get("variant") == "materialised"}
    out = []
    for r in rows:
        base = materialised.get(r.get("horizon"))
        if r.get("variant") != "chunked" or base is None:
            continue
        out.append(Row(
            "kl_memory", f"NextLat loss peak memory: chunked {r['chunk']} / materialised "
                         f"(d={r['horizon']})", r["peak_mib"] / base["peak_mib"],
            "< 1", f"{r['peak_mib']:.0f} vs {base['peak_mib']:.0f} MiB; time "
                   f"{r['median_s']:.3f} vs {base['median_s']:.3f} s"))
    if not out:
        out.append(Row("kl_memory", "NextLat loss peak memory", None, "",
                       "kl_memory returned no chunked/materialised pairs: "
                       + json.dumps(results["kl_memory"])[:200]))
    return out


def psi_rollout_rows(results: dict[str, Any]) -> list[Row]:
    """bench/psi_rollout.py: ψ's fused rollout over the concatenating one, per d."""
    why = _failed(results, "psi_rollout")
    if why:
        return [_missing("psi_rollout", "ψ rollout time: fused / concatenating", why)]
    r = results["psi_rollout"]
    return [Row("psi_rollout", f"ψ rollout fwd+bwd, fused / concatenating (d={row['horizon']})",
                row["ratio_paired"], "< 1 for d > 1",
                f"{row['fused_median_s'] * 1e3:.1f} vs {row['concatenating_median_s'] * 1e3:.1f}"
                f" ms CPU; D={r['hidden']}, H={r['psi_width']}, T={r['seq']}, B={r['batch']}; "
                f"max |Δ| {row['max_abs_diff']:.1e}")
            for row in r.get("rows", [])]


def step_launches_rows(results: dict[str, Any]) -> list[Row]:
    """bench/step_launches.py: the CPU proxy's non-matmul launches and bytes, compiled over
    eager, per decoder layer and per step."""
    why = _failed(results, "step_launches")
    if why:
        return [_missing("step_launches", "non-matmul launches per layer: compiled / eager",
                         why)]
    r = results["step_launches"]
    shape = f"{r['layers']} layers, 1 x {r['tokens']} tokens, bf16 DeepSpeed"
    out = []
    for row in r.get("ratios", []):
        v = row["variant"]
        out.append(Row("step_launches", f"non-matmul launches per layer, compiled / eager ({v})",
                       row["layer_launches"], "<= 0.33 (issue 15)",
                       f"{row['layer_launches_compiled']} vs {row['layer_launches_eager']}; "
                       + shape))
        out.append(Row("step_launches", f"non-matmul bytes per layer, compiled / eager ({v})",
                       row["layer_bytes"], "<= 0.5 (issue 15)",
                       f"{row['layer_bytes_compiled'] / 2**20:.1f} vs "
                       f"{row['layer_bytes_eager'] / 2**20:.1f} MiB"))
        out.append(Row("step_launches", f"non-matmul launches per step, compiled / eager ({v})",
                       row["step_launches"], "< 1",
                       f"{row['step_launches_compiled']} vs {row['step_launches_eager']}; "
                       f"bytes {row['step_bytes_compiled'] / 2**30:.2f} vs "
                       f"{row['step_bytes_eager'] / 2**30:.2f} GiB"))
    return out


ROW_BUILDERS = {"steps": step_rows, "matmul": matmul_rows, "memory": memory_rows,
                "data": data_rows, "checkpoint": checkpoint_rows, "export": export_rows,
                "kl_memory": kl_memory_rows, "psi_rollout": psi_rollout_rows,
                "step_launches": step_launches_rows}


def build_rows(results: dict[str, Any], sections: list[str]) -> list[Row]:
    """The table's rows for the selected sections, in their order."""
    rows: list[Row] = []
    for name in sections:
        rows.extend(ROW_BUILDERS[name](results))
    return rows


def format_table(rows: list[Row], machine_line: str, width: int = 160) -> str:
    """Fixed-width text: measurement, ratio, target, and the details wrapped underneath."""
    head = f"{'measurement':<64} {'ratio':>7}  {'target / reference':<40}"
    lines = [f"machine: {machine_line}", "", head, "-" * len(head)]
    section = None
    for row in rows:
        if row.section != section and section is not None:
            lines.append("")
        section = row.section
        ratio = "n/a" if row.ratio is None else f"{row.ratio:.3f}"
        lines.append(f"{row.measurement:<64} {ratio:>7}  {row.target:<40}")
        if row.details:
            lines.extend(textwrap.wrap(row.details, width=width - 6, initial_indent="      ",
                                       subsequent_indent="      "))
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], meta: dict[str, Any],
               raw: dict[str, Any]) -> None:
    """The table's rows, the run's metadata and every section's raw measurements."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(meta, rows=[asdict(r) for r in rows], sections=raw)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
