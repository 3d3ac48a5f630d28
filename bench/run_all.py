"""Every benchmark in one run: one table of ratios measured side by side, and the same as JSON.

    python bench/run_all.py [--quick] [--threads N] [--json PATH] [--only a,b] [--dir DIR]
                            [section.key=value ...]
    nextlat-pt bench ...            (the same, from a source checkout)

Sections (each fails soft: its rows then say why, the others still run):

- steps: NextLat d = 1, 2, 4 over NTP step time beside flops.py's predicted ratio, and our
  NTP (and NextLat d=1) step over the plain PyTorch reference (HF `LlamaForCausalLM` +
  torch AdamW, identical architecture, same initial weights, same batch and threads), all
  interleaved round-robin in one loop (bench/reference_step.py, bench/nextlat_overhead.py);
- matmul: achieved training FLOP/s (flops.py's count / median step) over the machine's
  measured GEMM peak at the model's own shapes (bench/matmul_peak.py), and the time the
  step's linears' GEMMs take alone (run as one more step of the steps' rotation) over the
  NTP step: how much of a step is not GEMM work;
- memory: peak memory per rank over nextlat_pt/memory.py's estimate, each configuration in a
  fresh subprocess (bench/memory_peak.py);
- data: loader tokens/s over the measured training consumption and over one H100's;
  tokenizer throughput per core (bench/data_throughput.py);
- checkpoint: checkpoint save over a raw disk write of the same bytes, async blocking over
  sync (bench/checkpoint_throughput.py);
- export: HF export throughput over raw write, seconds per billion parameters
  (bench/export_throughput.py);
- kl_memory (OPTIONAL_BENCHES: run when bench/kl_memory.py is present): the NextLat loss's
  peak memory, token-chunked KL over materialised logits;
- psi_rollout (OPTIONAL_BENCHES, bench/psi_rollout.py): ψ's rollout forward + backward with
  the fused first layer over the concatenating one, d = 1, 2, 4 (process CPU time);
- step_launches (OPTIONAL_BENCHES, bench/step_launches.py): the CPU proxy of the GPU step:
  non-matmul operator launches and their bytes per decoder layer and per step, compiled
  (`train.compile=true`, the GPU path) over eager, at the 1.3B width (a count, not a time).

The positional `section.key=value` overrides change the model of the steps, matmul and
memory sections (default: the tiny config, 4 layers, D=256, T=256, micro batch 8, vocab 4096).
`--quick` shrinks every section (2 layers, D=128, T=128, micro batch 4; fewer repeats; a
small corpus): a smoke test of a few minutes on 2 cores whose ratios are noisy. The full run
takes about 15-25 minutes on 2 shared cores with 1-2 threads.

Medians over repeats everywhere; the machine (CPU model, cores, torch threads, versions,
device) heads the table and the JSON. The JSON (default bench/results/latest.json) holds the
rows and every section's raw measurements.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sibling benchmarks import each other by module name
    sys.path.insert(0, str(HERE))

DEFAULT_JSON = HERE / "results" / "latest.json"
CORE_SECTIONS = ["steps", "matmul", "memory", "data", "checkpoint", "export"]
QUICK_MODEL = ["model.num_layers=2", "model.hidden_size=128", "model.seq_len=128",
               "train.micro_batch_size=4", "train.global_batch_size=4"]
SMALL_CKPT_MODEL = ["model.num_layers=2", "model.hidden_size=256", "model.num_heads=4"]
OPTIONAL_MARK = "OPTIONAL_BENCH_RESULT "
GEMMS_ONLY = "GEMMs only"

# Benchmarks picked up when their file exists: section name -> (module, measure() keyword
# arguments in quick mode, in full mode). The module's `measure(**kwargs)` (given `threads`
# too when it takes it) returns a JSON-able dict; report.ROW_BUILDERS[name] makes the rows.
OPTIONAL_BENCHES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "kl_memory": ("kl_memory",
                  dict(seq=256, batch=2, width=128, vocab=16384, horizons=(1,), chunks=(256,),
                       repeats=1),
                  dict(horizons=(1, 4), chunks=(1024,), repeats=3)),
    "psi_rollout": ("psi_rollout",
                    dict(seq=128, batch=4, hidden=128, horizons=(1, 4), repeats=5),
                    dict(horizons=(1, 2, 4), repeats=15)),
    "step_launches": ("step_launches", dict(layers=1, tokens=64, quick=True),
                      dict(layers=2, tokens=1024)),
}


@dataclass
class Settings:
    """What each section measures, per mode."""

    model: list[str]
    step_repeats: int
    step_warmup: int
    horizons: tuple[int, ...] = (0, 1, 2, 4)
    mtp_heads: tuple[int, ...] = (2,)  # MTP variants in the steps section
    jtp_steps: tuple[int, ...] = (1,)  # JTP variants in the steps section
    matmul_repeats: int = 5
    memory_horizons: tuple[int, ...] = (0, 1)
    memory_steps: int = 3
    data: dict[str, Any] = field(default_factory=dict)
    checkpoint_model: list[str] = field(default_factory=list)
    checkpoint_repeats: int = 3
    export_repeats: int = 3
    export_vocab: int = 4096
    quick: bool = False


def settings(quick: bool, overrides: list[str]) -> Settings:
    """The full run, or `--quick`'s smaller one; `overrides` change the model."""
    if quick:
        return Settings(model=QUICK_MODEL + overrides, step_repeats=5, step_warmup=1,
                        matmul_repeats=3, memory_steps=2,
                        data=dict(vocab_size=2048, repeats=1, batches=30, max_files=100),
                        checkpoint_model=SMALL_CKPT_MODEL, checkpoint_repeats=1,
                        export_repeats=1, export_vocab=1024, quick=True)
    return Settings(model=list(overrides), step_repeats=20, step_warmup=2,
                    data=dict(vocab_size=32000, repeats=3, batches=100))


def optional_sections() -> list[str]:
    """The OPTIONAL_BENCHES whose module file is present."""
    return [name for name, (module, _, _) in OPTIONAL_BENCHES.items()
            if (HERE / f"{module}.py").is_file()]


class Runner:
    """Runs the sections in order, each fail-soft; keeps their JSON-ready results."""

    def __init__(self, s: Settings, threads: int, directory: Path | None) -> None:
        self.s, self.threads, self.directory = s, threads, directory
        self.results: dict[str, Any] = {}
        self.timing: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        print(f"[{name}] running ...", flush=True)
        start = time.perf_counter()
        try:
            self.results[name] = fn()
        except Exception as err:  # noqa: BLE001 - one section's failure is one table row
            traceback.print_exc()
            self.results[name] = {"error": f"{type(err).__name__}: {err}"}
        finally:
            gc.collect()
        self.timing[name] = time.perf_counter() - start
        state = "FAILED" if "error" in self.results[name] else "done"
        print(f"[{name}] {state} in {self.timing[name]:.0f} s", flush=True)

    # --- the sections ---
    def steps(self) -> dict[str, Any]:
        import reference_step
        from matmul_peak import gemm_step
        from nextlat_overhead import json_ready

        gemm: dict[str, float] = {}

        def gemms_only(variants, batches):
            """The linears' GEMMs of one step alone, timed in the same rotation."""
            cfg = variants[0].cfg
            run, gemm["flops_per_step"] = gemm_step(
                variants[0].model.spec, cfg.train.micro_batch_size * cfg.model.seq_len,
                len(batches), batches[0].input_ids.device)
            return GEMMS_ONLY, run

        result = reference_step.measure(self.s.model, horizons=self.s.horizons,
                                        mtp=self.s.mtp_heads, jtp=self.s.jtp_steps,
                                        repeats=self.s.step_repeats, warmup=self.s.step_warmup,
                                        extra=[gemms_only])
        times = result["extra_times"][GEMMS_ONLY]
        ntp = result["rows"][0]
        result["gemms_only"] = {
            "flops_per_step": gemm["flops_per_step"], "times_s": times,
            "median_s": statistics.median(times),
            "ratio_paired_to_ntp": statistics.median(
                g / t for g, t in zip(times, ntp["times_s"])),
        }
        return json_ready(result)  # drops the live models and engines

    def matmul(self) -> dict[str, Any]:
        import matmul_peak

        from nextlat_pt.config import load_config, validate
        from nextlat_pt.train.build import model_spec

        cfg = load_config(None, self.s.model)
        validate(cfg, world_size=1)
        spec = model_spec(cfg, cfg.model.vocab_size or cfg.data.builtin_vocab_size)
        return matmul_peak.measure(spec, cfg.train.micro_batch_size * cfg.model.seq_len,
                                   repeats=self.s.matmul_repeats)

    def memory(self) -> dict[str, Any]:
        import memory_peak

        return memory_peak.measure(self.s.model, horizons=self.s.memory_horizons,
                                   steps=self.s.memory_steps, threads=self.threads)

    def data(self) -> dict[str, Any]:
        import data_throughput

        from nextlat_pt.config import load_config

        cfg = load_config(None, self.s.model)
        return data_throughput.measure(
            seq_len=cfg.model.seq_len, micro_batch=cfg.train.micro_batch_size,
            global_batch=cfg.train.global_batch_size, log=lambda m: print(f"  {m}"),
            **self.s.data)

    def checkpoint(self) -> dict[str, Any]:
        import checkpoint_throughput

        return checkpoint_throughput.measure(self.s.checkpoint_model,
                                             repeats=self.s.checkpoint_repeats,
                                             directory=self.directory)

    def export(self) -> dict[str, Any]:
        import export_throughput

        return export_throughput.measure(self.s.checkpoint_model, repeats=self.s.export_repeats,
                                         vocab=self.s.export_vocab,
                                         tokenizer_files=60 if self.s.quick else 200,
                                         directory=self.directory)

    def optional(self, name: str) -> dict[str, Any]:
        """An OPTIONAL_BENCHES entry, in a small fresh interpreter: its own subprocesses then
        start from a small parent (a child inherits its parent's resident high-water mark,
        which would swamp a memory measurement started from this large process)."""
        module_name, quick_kwargs, full_kwargs = OPTIONAL_BENCHES[name]
        kwargs = dict(quick_kwargs if self.s.quick else full_kwargs)
        code = (f"import inspect, json, sys\nimport {module_name} as bench\n"
                "kw = json.loads(sys.argv[1])\nthreads = kw.pop('_threads')\n"
                "if threads and 'threads' in inspect.signature(bench.measure).parameters:\n"
                "    kw['threads'] = threads\n"
                f"print({OPTIONAL_MARK!r} + json.dumps(bench.measure(**kw), default=str))\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]))
        proc = subprocess.run([sys.executable, "-c", code,
                               json.dumps(dict(kwargs, _threads=self.threads))],
                              cwd=HERE, env=env, capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith(OPTIONAL_MARK):
                return json.loads(line[len(OPTIONAL_MARK):])
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"bench/{module_name}.py failed (exit {proc.returncode}): {tail[0]}")


def parse_args(argv: list[str] | None, prog: str = "run_all.py") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description="Every benchmark, one table of ratios (see the doc).")
    parser.add_argument("overrides", nargs="*",
                        help="model config overrides for steps/matmul/memory (section.key=value)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repeats: a smoke test of a few minutes")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (and OMP_NUM_THREADS of the subprocesses); "
                             "default: torch's choice")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help=f"where to write the JSON (default {DEFAULT_JSON})")
    parser.add_argument("--only", default="",
                        help="comma-separated sections to run (default: all): "
                             + ", ".join(CORE_SECTIONS + list(OPTIONAL_BENCHES)))
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the disk benchmarks write (default: the temp dir)")
    parser.add_argument("--from-json", type=Path, default=None, metavar="PATH",
                        help="measure nothing: rebuild the table from a saved run's raw "
                             "sections (e.g. after a change of the report), rewrite --json "
                             "only if given explicitly")
    args = parser.parse_args(argv)
    args.json_given = any(a == "--json" or a.startswith("--json=") for a in argv or sys.argv)
    if args.from_json is not None and not args.from_json.is_file():
        parser.error(f"--from-json {args.from_json} does not exist")
    available = CORE_SECTIONS + optional_sections()
    if args.only:
        chosen = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in CORE_SECTIONS + list(OPTIONAL_BENCHES)]
        if unknown:
            parser.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(available)}")
        missing = [s for s in chosen if s not in available]
        if missing:
            parser.error(f"--only: {', '.join(missing)} needs bench/"
                         f"{OPTIONAL_BENCHES[missing[0]][0]}.py, which is not present")
        args.sections = [s for s in available if s in chosen]
    else:
        args.sections = available
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.dir is not None and not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is not a directory; create it or drop --dir")
    return args


def rerender(args: argparse.Namespace) -> int:
    """The table of a saved run, rebuilt from its raw sections by the current report code."""
    from benchlib import describe_machine
    from report import build_rows, format_table, write_json

    doc = json.loads(args.from_json.read_text())
    raw = doc["sections"]
    rows = build_rows(raw, [name for name in raw if name in CORE_SECTIONS + list(
        OPTIONAL_BENCHES)])
    print(f"(re-rendered from {args.from_json}: measured {doc.get('started')}, "
          f"{doc.get('mode')} run: {doc.get('command')})")
    print(format_table(rows, describe_machine(doc.get("machine_at_end") or doc["machine"])))
    if args.json_given:
        meta = {k: v for k, v in doc.items() if k not in ("rows", "sections")}
        write_json(args.json, rows, dict(meta, rerendered_from=str(args.from_json)), raw)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None, prog: str = "run_all.py") -> int:
    """Run the selected sections, print the table, write the JSON; returns the exit code
    (2: bad arguments, 1: a section failed)."""
    args = parse_args(argv, prog)
    # megatron-core and DeepSpeed warn at import about TransformerEngine/Apex: expected here
    # (as in nextlat_pt/cli.py).
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex).*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.from_json is not None:
        return rerender(args)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from benchlib import describe_machine, machine_info
    from report import build_rows, format_table, write_json

    from nextlat_pt.config import ConfigError, load_config, validate
    from nextlat_pt.parallel import distributed

    try:  # a bad override is one line, not six failed sections
        validate(load_config(None, settings(args.quick, args.overrides).model), world_size=1)
    except ConfigError as err:
        print(f"run_all: config error: {err}", file=sys.stderr)
        return 2
    s = settings(args.quick, args.overrides)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(
        [*prog.split(), *argv])
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine = machine_info()
    print(f"command: {command}\nmachine: {describe_machine(machine)}\nsections: "
          f"{', '.join(args.sections)} ({'quick' if args.quick else 'full'})", flush=True)
    runner = Runner(s, torch.get_num_threads(), args.dir)
    begin = time.perf_counter()
    for name in args.sections:
        fn = getattr(runner, name) if name in CORE_SECTIONS else (
            lambda name=name: runner.optional(name))
        runner.run(name, fn)
    distributed.destroy()
    elapsed = time.perf_counter() - begin

    rows = build_rows(runner.results, args.sections)
    machine_after = machine_info()
    line = describe_machine(machine_after)
    model = runner.results.get("steps", {}).get("model")
    print()
    print(format_table(rows, line))
    if model:
        print(f"\nmodel (steps, matmul, memory): {model['num_layers']} layers, "
              f"D={model['hidden_size']}, {model['num_heads']} heads, "
              f"F={model['ffn_hidden_size']}, vocab {model['vocab_size']} (padded "
              f"{model['padded_vocab_size']}), T={model['seq_len']}, "
              f"{runner.results['steps']['tokens_per_step']} tokens/step, "
              f"{model['params_dtype']}, attention {model['attention_backend']}")
    print(f"({elapsed / 60:.1f} min; section times: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in runner.timing.items()) + ")")
    meta = {"command": command, "started": started, "mode": "quick" if args.quick else "full",
            "elapsed_s": elapsed, "section_seconds": runner.timing, "machine": machine,
            "machine_at_end": machine_after, "model_overrides": s.model}
    write_json(args.json, rows, meta, runner.results)
    print(f"wrote {args.json}")
    failed = [k for k, v in runner.results.items() if "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":  # spawned/forked writers re-import the main module: keep guarded
    sys.exit(main())
