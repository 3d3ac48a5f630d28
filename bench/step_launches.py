"""The CPU proxy of the GPU step: non-matmul operator launches and the bytes they move.

    python bench/step_launches.py [--layers 2] [--tokens 1024] [--modes false,true]
                                  [--quick] [--top N] [--json PATH] [section.key=value ...]

A GPU step at the 1.3B shape is bound by the memory-bound work between the matmuls
(docs/results/step_launches.md). That work can be counted without a GPU: every operator the
step launches, and the bytes it reads and writes, are the same on a CPU, given the same code
path. This bench runs one bf16 training step of configs/1b.yaml's shape (width 2048, 16 heads,
SwiGLU 5504, vocabulary 50,257 padded to 50,304, ψ width 6528) at `--layers` depth with one
sequence of `--tokens` tokens, through what the trainer builds for bf16 (`build_training`:
DeepSpeed ZeRO-1, fused AdamW, megatron's schedule, `engine.step()`), with the settings of the
GPU path: `train.compile=true` (and, side by side, eager: `train.compile=false`), under
torch.profiler(record_shapes=True, profile_memory=True), for NTP and NextLat d=1. It is a
count, not a timing: tests/unit/test_step_launches.py pins it.

What counts
-----------
- A *launch* is an operator that does its work itself: an `aten::` op none of whose profiled
  descendants is itself a launch, except the initialisation of its output (a reduction's
  `aten::fill_`, counted as part of it); composites such as `aten::linear` or `aten::to` are
  not counted, their `aten::addmm` / `aten::copy_` are. Or one kernel of code compiled by
  inductor (profiled
  with `torch._inductor.config.cpp.enable_kernel_profile`; a CUDA run would see the same
  kernels as Triton launches).
- Not launches: matmuls (`MATMUL_OPS`), attention (`ATTENTION_PREFIXES`, the SDPA / flash
  kernels: matmul-bound), operators that move no data (`NO_DATA_OPS`: views, allocations,
  metadata), and communication (`COMM_PREFIXES`, counted apart).
- Bytes of an eager launch: the bytes of its tensor arguments (read, or written for `out=` /
  in-place destinations) plus the bytes it allocates (its outputs), from the recorded shapes,
  dtypes and memory events. Bytes of a compiled kernel: inductor's own count for the fused
  node (`get_read_write_buffers_sizes`: each buffer the kernel reads or materialises, once).
- *Per decoder layer*: the launches inside the first layer's forward (module hooks mark it)
  and inside the autograd nodes that forward created (matched by the profiler's sequence
  numbers), i.e. the layer's forward and backward, not its share of the optimizer.
- *Whole step*: every launch of the step (forward, backward, loss, DeepSpeed's gradient
  handling, clipping, AdamW), after one untimed warm-up step (compilation, allocations).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

GPT2_VOCAB = 50257
MIB = 1 << 20
GIB = 1 << 30

MATMUL_OPS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_scaled_mm",
    "aten::mkldnn_linear", "aten::_addmm_activation", "aten::dot", "aten::mv", "aten::addmv",
})
ATTENTION_PREFIXES = (
    "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention", "aten::_flash_attention",
    "aten::_efficient_attention", "aten::_scaled_dot_product_attention_math",
    "aten::scaled_dot_product_attention", "aten::_fused_sdp_choice",
)
NO_DATA_OPS = frozenset({
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
    "aten::new_empty_strided", "aten::resize_", "aten::view", "aten::_unsafe_view",
    "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::as_strided_",
    "aten::t", "aten::transpose", "aten::permute", "aten::expand", "aten::expand_as",
    "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::split",
    "aten::split_with_sizes", "aten::chunk", "aten::unbind", "aten::narrow", "aten::detach",
    "aten::detach_", "aten::alias", "aten::lift_fresh", "aten::view_as", "aten::unflatten",
    "aten::flatten", "aten::numpy_T", "aten::set_", "aten::unsqueeze_", "aten::squeeze_",
    "aten::is_nonzero", "aten::item",
    "aten::_local_scalar_dense", "aten::result_type", "aten::size", "aten::stride",
    "aten::contiguous", "aten::to", "aten::type_as", "aten::requires_grad_",
    "aten::_has_compatible_shallow_copy_type", "aten::is_same_size", "aten::record_stream",
    "aten::_reinterpret_tensor", "aten::resolve_conj", "aten::resolve_neg", "aten::conj",
    # composites: the launches are their children (a clone's aten::copy_, a dropout's
    # aten::native_dropout; with p = 0 a dropout returns its input and launches nothing)
    "aten::clone", "aten::dropout", "aten::feature_dropout", "aten::matmul", "aten::linear",
})
COMM_PREFIXES = ("c10d::", "record_param_comms", "gloo:", "nccl:")
INDUCTOR_KERNEL = re.compile(r"^(graph_\d+_)?(cpp_|triton_)")
LAYER_MARK = "nextlat::decoder_layer"
# Bytes of ops whose tensor-list arguments the profiler records without shapes, set per
# step from the optimizer (`adamw_bytes`).
TENSOR_LIST_BYTES: dict[str, int] = {}

DTYPE_BYTES = {
    "float": 4, "double": 8, "c10::BFloat16": 2, "c10::Half": 2, "long int": 8, "int": 4,
    "short int": 2, "signed char": 1, "unsigned char": 1, "bool": 1, "c10::complex<float>": 8,
    "c10::Float8_e4m3fn": 1, "c10::Float8_e5m2": 1,
}


# --- what a profiled event is ---

def kind_of(name: str) -> str:
    """'launch', 'matmul', 'attention', 'comm' or 'none' (no data moved)."""
    if name in MATMUL_OPS:
        return "matmul"
    if name.startswith(ATTENTION_PREFIXES):
        return "attention"
    if name.startswith(COMM_PREFIXES):
        return "comm"
    if INDUCTOR_KERNEL.match(name):
        return "launch"
    if name.startswith("aten::") and name not in NO_DATA_OPS:
        return "launch"
    return "none"


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def argument_bytes(shapes: Sequence[Any], dtypes: Sequence[str]) -> int:
    """Bytes of the tensor arguments from record_shapes' shapes and dtypes.

    Scalars and other non-tensors carry no dtype in DTYPE_BYTES and count nothing; a tensor
    list (a foreach op's) is recorded as a list of shapes with dtype 'TensorList' and counted
    as fp32, the dtype of every tensor list the step passes (DeepSpeed's fp32 partitions)."""
    total = 0
    for shape, dtype in zip(shapes, dtypes):
        if dtype == "TensorList":
            total += sum(_numel(s) * 4 for s in shape if isinstance(s, list))
        elif dtype in DTYPE_BYTES and isinstance(shape, list):
            if shape and isinstance(shape[0], list):
                continue  # a nested list under a scalar dtype: not a tensor
            total += _numel(shape) * DTYPE_BYTES[dtype]
    return total


# --- compiled kernels: inductor's byte count per kernel, recorded as it generates them ---

class InductorKernelBytes:
    """Kernel name as the profiler shows it -> bytes inductor counts for it.

    Wraps inductor's CPU kernel definition while installed; compilation must not hit a cache
    (`torch._inductor.config.force_disable_caches`), or no kernel would be defined here.
    """

    # One table per process: a graph compiled earlier in the process serves a later model
    # (dynamo's cache), and the profiler names its kernels by the process-wide graph id.
    bytes: dict[str, int] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[InductorKernelBytes]:
        import torch._inductor.config as inductor_config
        from torch._inductor.codegen.cpp import CppScheduling
        from torch._inductor.virtualized import V

        original = CppScheduling.define_kernel
        table = self.bytes

        def define_kernel(scheduling, src_code, nodes, kernel_args=None):
            name = original(scheduling, src_code, nodes, kernel_args)
            fused = {id(n): n for n in (
                scheduling.scheduler.name_to_fused_node.get(node.get_name(), node)
                for node in nodes)}
            graph_id = V.graph.graph_id
            prefix = f"graph_{graph_id}_" if graph_id is not None else ""
            table[prefix + name] = table.get(prefix + name, 0) + sum(
                n.get_read_write_buffers_sizes() for n in fused.values())
            return name

        patches = {"force_disable_caches": True, "cpp.enable_kernel_profile": True}
        CppScheduling.define_kernel = define_kernel
        try:
            with inductor_config.patch(patches):
                yield self
        finally:
            CppScheduling.define_kernel = original


# --- marking the layer ---

def mark_layer(layer: torch.nn.Module) -> list[Any]:
    """Profiler range LAYER_MARK around `layer`'s forward (hooks outside any compiled code)."""
    state: dict[str, Any] = {}

    def enter(module, args):
        state["handle"] = torch.ops.profiler._record_function_enter_new(LAYER_MARK, None)

    def leave(module, args, output):
        torch.ops.profiler._record_function_exit._RecordFunction(state.pop("handle"))

    return [layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave)]


# --- counting ---

def _children(event) -> list:
    return list(event.cpu_children)


INIT_OPS = frozenset({"aten::fill_", "aten::zero_"})


def _is_init(event) -> bool:
    return event.name in INIT_OPS and not _children(event)


def _has_launch_below(event, memo: dict[int, bool]) -> bool:
    key = id(event)
    if key not in memo:
        memo[key] = any(kind_of(c.name) == "launch" or _has_launch_below(c, memo)
                        for c in _children(event))
    return memo[key]


def is_kernel(event, memo: dict[int, bool]) -> bool:
    """Does the op do its work itself? A leaf, or an op whose only launches below are the
    initialisation of its output (a reduction's aten::fill_): those count as part of it."""
    if kind_of(event.name) != "launch":
        return False
    below = [c for c in _children(event)
             if kind_of(c.name) == "launch" or _has_launch_below(c, memo)]
    return all(_is_init(c) for c in below)


def _inside_kernel(event, memo: dict[int, bool]) -> bool:
    """Is the event part of a bigger kernel: a matmul's or attention's backend work, a
    collective's, or a reduction's output initialisation?"""
    parent = event.cpu_parent
    while parent is not None:
        if kind_of(parent.name) in ("matmul", "attention", "comm") or is_kernel(parent, memo):
            return True
        parent = parent.cpu_parent
    return False


def _descendants(event) -> Iterator:
    for child in _children(event):
        yield child
        yield from _descendants(child)


def is_scalar_promotion(event) -> bool:
    """A wrapped Python number turned into a 0-dim tensor of the op's dtype (a host-side
    copy on a GPU too): aten::copy_ between 0-dim tensors from a double or int64."""
    if event.name != "aten::copy_" or not event.input_dtypes:
        return False
    shapes, dtypes = event.input_shapes or [], event.input_dtypes
    tensors = [(s, d) for s, d in zip(shapes, dtypes) if d in DTYPE_BYTES]
    return all(s == [] for s, _ in tensors) and any(d in ("double", "long int")
                                                     for _, d in tensors)


def _launch_bytes(event, kernel_bytes: dict[str, int]) -> int:
    if INDUCTOR_KERNEL.match(event.name):
        return kernel_bytes.get(event.name, 0)
    if event.name in TENSOR_LIST_BYTES:
        return TENSOR_LIST_BYTES[event.name]
    allocated = max(int(event.cpu_memory_usage or 0), 0)
    return argument_bytes(event.input_shapes or [], event.input_dtypes or []) + allocated


def count_events(events: Sequence, kernel_bytes: dict[str, int]) -> dict[str, Any]:
    """Launches and bytes of the whole profile and of the marked layer (see the doc)."""
    memo: dict[int, bool] = {}
    launches = [e for e in events if is_kernel(e, memo) and not _inside_kernel(e, memo)
                and not is_scalar_promotion(e)]
    # the layer: its forward range, and the autograd nodes its forward ops created
    marks = [e for e in events if e.name == LAYER_MARK]
    layer_ids: set[int] = set()
    sequence_nrs: set[int] = set()
    for mark in marks:
        for event in _descendants(mark):
            layer_ids.add(id(event))
            if event.sequence_nr is not None and event.sequence_nr >= 0:
                sequence_nrs.add(event.sequence_nr)
    for event in events:
        if event.name.startswith("autograd::engine::evaluate_function") \
                and event.sequence_nr in sequence_nrs:
            layer_ids.update(id(d) for d in _descendants(event))

    def summary(selected: list) -> dict[str, Any]:
        by_op: Counter = Counter()
        bytes_by_op: defaultdict = defaultdict(int)
        for e in selected:
            name = "inductor kernel" if INDUCTOR_KERNEL.match(e.name) else e.name
            by_op[name] += 1
            bytes_by_op[name] += _launch_bytes(e, kernel_bytes)
        return {"launches": len(selected), "bytes": sum(bytes_by_op.values()),
                "by_op": {k: {"launches": n, "bytes": bytes_by_op[k]}
                          for k, n in by_op.most_common()}}

    counted = Counter(kind_of(e.name) for e in events if not _inside_kernel(e, memo))
    return {
        "step": summary(launches),
        "layer": summary([e for e in launches if id(e) in layer_ids]),
        "layer_marks": len(marks),
        "matmuls": counted["matmul"], "attention": counted["attention"],
        "comm": counted["comm"],
    }


# --- the step ---

def model_overrides(layers: int, tokens: int, extra: Sequence[str] = ()) -> list[str]:
    """configs/1b.yaml's model at `layers` depth, one sequence of `tokens`, bf16."""
    from benchlib import config_overrides

    return [*config_overrides("1b"), f"model.num_layers={layers}",
            f"model.seq_len={tokens}", f"model.vocab_size={GPT2_VOCAB}",
            "train.micro_batch_size=1", "train.global_batch_size=1",
            "precision.dtype=bf16", "model.attention_backend=sdpa", *extra]


def adamw_bytes(optimizer: torch.optim.Optimizer) -> int:
    """What one fused AdamW step moves: parameter, both moments (read and written) and the
    gradient (read), fp32 (the profiler records its tensor lists without shapes)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed's wrapper holds torch's
    numel = sum(p.numel() for group in inner.param_groups for p in group["params"])
    return numel * 4 * 7


def profile_step(horizon: int, overrides: list[str]) -> dict[str, Any]:
    """Build one variant, run a warm-up step, profile the next; the counts."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from nextlat_overhead import build_variant, random_batch, train_step
    from torch.profiler import ProfilerActivity, profile

    from nextlat_pt.parallel import distributed

    distributed.initialize(1, 1, seed=1234)
    device = distributed.device()
    kernels = InductorKernelBytes()
    with kernels.installed():
        variant = build_variant("NTP" if horizon == 0 else f"NextLat d={horizon}", horizon,
                                overrides, device, plain=False)
        layer = variant.model.gpt.decoder.layers[0]
        hooks = mark_layer(layer)
        batches = random_batch(variant.cfg, 1234, device)
        forward_backward = get_forward_backward_func()
        train_step(variant, batches, forward_backward, device)  # warm-up (and compilation)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                     profile_memory=True) as prof:
            train_step(variant, batches, forward_backward, device)
    for hook in hooks:
        hook.remove()
    events = list(prof.events())
    adamw_calls = sum(e.name == "aten::_fused_adamw_" for e in events)
    TENSOR_LIST_BYTES["aten::_fused_adamw_"] = adamw_bytes(variant.optimizer) // max(
        adamw_calls, 1)
    counts = count_events(events, kernels.bytes)
    counts["compile"] = variant.cfg.train.compile == "true"
    counts["loss"] = variant.losses[-1]
    del variant
    return counts


CHILD_MARK = "STEP_LAUNCHES_RESULT "


def profile_in_child(horizon: int, overrides: list[str]) -> dict[str, Any]:
    """`profile_step` in a fresh interpreter: each run compiles its own graphs (no cache
    shared between runs) and frees its model, engine and optimizer when it exits (at the
    1.3B width one run holds ~8 GB; a process keeps some of DeepSpeed's references)."""
    import os
    import subprocess

    code = (f"import json, sys\nsys.path.insert(0, {str(HERE)!r})\n"
            "import step_launches as s\n"
            "counts = s.profile_step(int(sys.argv[1]), json.loads(sys.argv[2]))\n"
            f"print({CHILD_MARK!r} + json.dumps(counts))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(horizon), json.dumps(overrides)],
                          capture_output=True, text=True, env=dict(os.environ))
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_MARK):
            return json.loads(line[len(CHILD_MARK):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"step_launches child (d={horizon}) failed (exit {proc.returncode}): "
                       f"{tail}")


QUICK_SHAPE = ["model.hidden_size=128", "model.num_heads=4", "model.ffn_hidden_size=256",
               "nextlat.psi_width=256", "model.vocab_size=2048"]


def measure(layers: int = 2, tokens: int = 1024, horizons: Sequence[int] = (0, 1),
            overrides: Sequence[str] = (), modes: Sequence[str] = ("false", "true"),
            quick: bool = False) -> dict[str, Any]:
    """The counts for NTP and NextLat d, eager (`train.compile=false`) and compiled (`true`),
    side by side (the JSON `nextlat-pt bench` stores). `quick`: a small width (seconds of
    compilation, not minutes)."""
    extra = [*(QUICK_SHAPE if quick else []), *overrides]
    out: dict[str, Any] = {"layers": layers, "tokens": tokens, "overrides": extra, "runs": []}
    for mode in modes:
        config = model_overrides(layers, tokens, [*extra, f"train.compile={mode}"])
        for d in horizons:
            counts = profile_in_child(d, config)
            out["runs"].append({"variant": "NTP" if d == 0 else f"NextLat d={d}", **counts})
    out["ratios"] = compiled_over_eager(out["runs"])
    return out


def compiled_over_eager(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: compiled / eager launches and bytes, per layer and per step."""
    ratios = []
    for eager in (r for r in runs if not r["compile"]):
        compiled = next((r for r in runs if r["compile"] and r["variant"] == eager["variant"]),
                        None)
        if compiled is None:
            continue
        row = {"variant": eager["variant"]}
        for scope in ("layer", "step"):
            for what in ("launches", "bytes"):
                row[f"{scope}_{what}"] = compiled[scope][what] / max(eager[scope][what], 1)
                row[f"{scope}_{what}_eager"] = eager[scope][what]
                row[f"{scope}_{what}_compiled"] = compiled[scope][what]
        ratios.append(row)
    return ratios


def print_table(result: dict[str, Any]) -> None:
    print(f"one bf16 step, {result['layers']} layers, 1 x {result['tokens']} tokens, "
          f"DeepSpeed ZeRO-1; overrides {' '.join(result['overrides']) or '(configs/1b.yaml)'}")
    print(f"{'variant':<12} {'compile':>7} {'layer launches':>14} {'layer MiB':>10} "
          f"{'step launches':>13} {'step GiB':>9} {'matmuls':>7}")
    for c in result["runs"]:
        print(f"{c['variant']:<12} {str(c['compile']):>7} {c['layer']['launches']:>14} "
              f"{c['layer']['bytes'] / MIB:>10.1f} {c['step']['launches']:>13} "
              f"{c['step']['bytes'] / GIB:>9.2f} {c['matmuls']:>7}")
    for r in result["ratios"]:
        print(f"{r['variant']}: compiled / eager: per layer launches {r['layer_launches']:.3f}, "
              f"bytes {r['layer_bytes']:.3f}; whole step launches {r['step_launches']:.3f}, "
              f"bytes {r['step_bytes']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--modes", default="false,true",
                        help="train.compile settings to count, comma-separated "
                             "(default: false,true, side by side)")
    parser.add_argument("--quick", action="store_true", help="a small width (seconds)")
    parser.add_argument("--top", type=int, default=0, help="also list the N largest ops")
    parser.add_argument("--json", type=Path, help="write the counts as JSON")
    args = parser.parse_args(argv)
    result = measure(args.layers, args.tokens, overrides=args.overrides,
                     modes=args.modes.split(","), quick=args.quick)
    print_table(result)
    if args.top:
        for c in result["runs"]:
            for scope in ("layer", "step"):
                print(f"\n{c['variant']} (compile {c['compile']}), {scope}: launches, MiB")
                for op, v in list(c[scope]["by_op"].items())[:args.top]:
                    print(f"  {op:<55} {v['launches']:>5} {v['bytes'] / MIB:>10.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
