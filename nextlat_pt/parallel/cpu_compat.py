"""Make megatron-core (and DeepSpeed) run on machines without CUDA.

megatron-core 0.16.1 calls CUDA directly in a handful of places that the CPU training path
crosses (see the list in `_PATCHED`). This module installs narrow replacements for exactly
those places, and nothing else in the code base knows about them. It is inert on machines
where CUDA is available: `install()` returns without touching anything.

The patches are written against the pinned versions in setup.py (`PINNED_MEGATRON_CORE`,
`PINNED_DEEPSPEED`); `install()` refuses other versions, because a patch that silently misses
its target would turn into an obscure CUDA assertion deep inside a training step.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from typing import Any

import torch

PINNED_MEGATRON_CORE = "0.16.1"
PINNED_DEEPSPEED = "0.19.8"

_CPU = torch.device("cpu")
_installed = False

# What is patched, and why (file:line in megatron-core 0.16.1).
_PATCHED = (
    "torch.cuda.current_device -> cpu: utils.py GlobalMemoryBuffer, p2p_communication.py buffers",
    "tensor_parallel.random CudaRNGStatesTracker -> CPU generator states (dropout forks)",
    'pipeline_parallel/schedules.py:596/983/2138 torch.zeros(..., device="cuda")',
    'transformer/utils.py:35/40 default causal masks built with device="cuda"',
    "torch.cuda.synchronize -> no-op: dist_checkpointing/strategies/filesystem_async.py:230",
    "Tensor.cuda -> the tensor itself: language_module.py:244 (tied embeddings with PP > 1)",
    "deepspeed: the deepspeed_shm_comm C++ op build is disabled (gloo is used instead)",
)


def _remap_device(device: Any) -> Any:
    """Map a CUDA device spec (int, 'cuda', 'cuda:N', torch.device('cuda')) to the CPU."""
    if isinstance(device, int):
        return _CPU
    if isinstance(device, str) and device.startswith("cuda"):
        return _CPU
    if isinstance(device, torch.device) and device.type == "cuda":
        return _CPU
    return device


class _CpuTorch:
    """A stand-in for the name `torch` inside one megatron module.

    Everything is forwarded to the real torch, except that tensor factories asked for a CUDA
    device get the CPU. Only modules that spell `device="cuda"` literally receive this proxy.
    """

    _FACTORIES = frozenset({"zeros", "ones", "empty", "full", "tensor", "arange", "triu"})

    def __init__(self, real_torch: Any) -> None:
        self._torch = real_torch

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._torch, name)
        if name not in self._FACTORIES:
            return attr

        def factory(*args: Any, **kwargs: Any) -> Any:
            if "device" in kwargs:
                kwargs["device"] = _remap_device(kwargs["device"])
            return attr(*args, **kwargs)

        return factory


def _make_cpu_rng_tracker_class(random_module: Any) -> type:
    """Megatron's RNG tracker with the CPU generator in place of the CUDA one.

    Same API (add/fork/get_states/set_states), so dropout inside tensor-parallel regions and
    checkpointed RNG states behave as on GPU, per rank.
    """
    base = random_module.CudaRNGStatesTracker
    default_name = random_module._MODEL_PARALLEL_RNG_TRACKER_NAME

    class CpuRNGStatesTracker(base):  # type: ignore[misc, valid-type]
        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            saved = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)

        @contextlib.contextmanager
        def fork(self, name: str = default_name):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            saved = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(saved)

    return CpuRNGStatesTracker


def _check_version(package: str, pinned: str) -> None:
    try:
        found = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return
    if found != pinned:
        raise RuntimeError(
            f"nextlat_pt's CPU fallbacks are written for {package}=={pinned}, found {found}; "
            f"install the pinned version (pip install {package}=={pinned}) or run on a CUDA machine"
        )


def cuda_available() -> bool:
    """True when this process can use CUDA; the CPU fallbacks stay off then."""
    return torch.cuda.is_available()


def install() -> bool:
    """Install the CPU fallbacks once per process. Returns True if they are active.

    Call before building any megatron model. On a CUDA machine this does nothing.
    """
    global _installed
    if cuda_available():
        return False
    if _installed:
        return True
    _check_version("megatron-core", PINNED_MEGATRON_CORE)

    # Process-wide, but only ever on a machine where these calls could only raise.
    torch.cuda.current_device = lambda: _CPU  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *args, **kwargs: None  # type: ignore[assignment]
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]

    import megatron.core.pipeline_parallel.schedules as schedules
    import megatron.core.tensor_parallel.random as mrandom
    import megatron.core.transformer.utils as transformer_utils

    schedules.torch = _CpuTorch(torch)
    transformer_utils.torch = _CpuTorch(torch)

    mrandom.CudaRNGStatesTracker = _make_cpu_rng_tracker_class(mrandom)
    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    mrandom.initialize_rng_tracker(force_reset=True)

    _disable_deepspeed_shm_op()
    _installed = True
    return True


def _disable_deepspeed_shm_op() -> None:
    """DeepSpeed JIT-compiles a shared-memory comm op with g++ on first init (~60 s, crashes
    without a compiler). Gloo does the same job on CPU, so switch the op off."""
    try:
        import deepspeed.ops
    except ImportError:
        return
    _check_version("deepspeed", PINNED_DEEPSPEED)
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def is_installed() -> bool:
    """Whether the CPU fallbacks are active in this process."""
    return _installed
