"""CPU fallbacks for megatron-core: version pins, inert on CUDA machines, working on CPU.

The patches are process-wide, so `install()` itself runs in subprocesses (two, ~8 s each with
the megatron import) and its results come back as JSON; the rest of the suite's process is
never patched by these tests.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from nextlat_pt.parallel import cpu_compat

REPO = Path(__file__).resolve().parents[2]


def _setup_pin(name: str) -> str:
    text = (REPO / "setup.py").read_text()
    match = re.search(rf'^{name}\s*=\s*"([A-Za-z0-9_.-]+)==([^"]+)"', text, re.MULTILINE)
    assert match, f"{name} = \"package==version\" not found in setup.py"
    return match.group(2)


def _run_json(script: str) -> dict[str, Any]:
    """Run `script` in a fresh interpreter; its last stdout line is a JSON object."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- pins


def test_pins_match_setup_py_and_installed_versions() -> None:
    assert cpu_compat.PINNED_MEGATRON_CORE == _setup_pin("MEGATRON_CORE")
    assert cpu_compat.PINNED_DEEPSPEED == _setup_pin("DEEPSPEED")
    assert importlib.metadata.version("megatron-core") == cpu_compat.PINNED_MEGATRON_CORE
    assert importlib.metadata.version("deepspeed") == cpu_compat.PINNED_DEEPSPEED


# ---------------------------------------------------------------- version refusal


def test_check_version_refuses_other_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version

    def fake(package: str) -> str:
        return {"megatron-core": "0.15.0", "deepspeed": "0.18.0"}.get(package) or real(package)

    monkeypatch.setattr(cpu_compat.importlib.metadata, "version", fake)
    pinned = cpu_compat.PINNED_MEGATRON_CORE
    with pytest.raises(RuntimeError) as info:
        cpu_compat._check_version("megatron-core", pinned)
    message = str(info.value)
    assert f"megatron-core=={pinned}" in message and "found 0.15.0" in message
    with pytest.raises(RuntimeError, match=re.escape(f"deepspeed=={cpu_compat.PINNED_DEEPSPEED}")):
        cpu_compat._check_version("deepspeed", cpu_compat.PINNED_DEEPSPEED)


def test_check_version_accepts_pinned_and_missing_packages() -> None:
    cpu_compat._check_version("megatron-core", cpu_compat.PINNED_MEGATRON_CORE)
    cpu_compat._check_version("deepspeed", cpu_compat.PINNED_DEEPSPEED)
    cpu_compat._check_version("no-such-package-nextlat-pt", "1.0")  # absent: nothing to patch


# ---------------------------------------------------------------- inert when CUDA is available

_INERT_SCRIPT = """
    import json, sys
    import torch
    import megatron.core.pipeline_parallel.schedules as schedules
    import megatron.core.tensor_parallel.random as mrandom
    import megatron.core.transformer.utils as transformer_utils
    from nextlat_pt.parallel import cpu_compat

    originals = {
        "current_device": torch.cuda.current_device,
        "synchronize": torch.cuda.synchronize,
        "Tensor.cuda": torch.Tensor.cuda,
        "schedules.torch": schedules.torch,
        "transformer_utils.torch": transformer_utils.torch,
        "CudaRNGStatesTracker": mrandom.CudaRNGStatesTracker,
        "_get_cuda_rng_state": mrandom._get_cuda_rng_state,
        "_set_cuda_rng_state": mrandom._set_cuda_rng_state,
    }
    deepspeed_before = "deepspeed" in sys.modules
    torch.cuda.is_available = lambda: True
    returned = cpu_compat.install()
    now = {
        "current_device": torch.cuda.current_device,
        "synchronize": torch.cuda.synchronize,
        "Tensor.cuda": torch.Tensor.cuda,
        "schedules.torch": schedules.torch,
        "transformer_utils.torch": transformer_utils.torch,
        "CudaRNGStatesTracker": mrandom.CudaRNGStatesTracker,
        "_get_cuda_rng_state": mrandom._get_cuda_rng_state,
        "_set_cuda_rng_state": mrandom._set_cuda_rng_state,
    }
    print(json.dumps({
        "cuda_available": cpu_compat.cuda_available(),
        "returned": returned,
        "is_installed": cpu_compat.is_installed(),
        "same": {k: now[k] is v for k, v in originals.items()},
        "schedules_torch_is_torch": schedules.torch is torch,
        "deepspeed_imported": ("deepspeed" in sys.modules) and not deepspeed_before,
    }))
"""


def test_install_is_inert_when_cuda_is_available() -> None:
    result = _run_json(_INERT_SCRIPT)
    assert result["cuda_available"] is True
    assert result["returned"] is False
    assert result["is_installed"] is False
    assert all(result["same"].values()), result["same"]
    assert result["schedules_torch_is_torch"] is True
    assert result["deepspeed_imported"] is False


# ---------------------------------------------------------------- active on this CPU machine

_CPU_SCRIPT = """
    import json
    import torch
    from nextlat_pt.parallel import cpu_compat

    out = {}
    original_current_device = torch.cuda.current_device

    # A wrong megatron-core version is refused before anything is patched.
    real_version = cpu_compat.importlib.metadata.version
    cpu_compat.importlib.metadata.version = (
        lambda p: "0.15.0" if p == "megatron-core" else real_version(p))
    try:
        cpu_compat.install()
        out["refusal"] = None
    except RuntimeError as err:
        out["refusal"] = str(err)
    cpu_compat.importlib.metadata.version = real_version
    out["untouched_after_refusal"] = (
        torch.cuda.current_device is original_current_device and not cpu_compat.is_installed())

    out["returned"] = cpu_compat.install()
    out["is_installed"] = cpu_compat.is_installed()
    out["returned_again"] = cpu_compat.install()
    out["current_device"] = str(torch.cuda.current_device())
    torch.cuda.synchronize()  # a no-op now, instead of raising

    import megatron.core.pipeline_parallel.schedules as schedules
    import megatron.core.tensor_parallel.random as mrandom
    from megatron.core.transformer.utils import get_default_causal_mask

    zeros = schedules.torch.zeros([], dtype=torch.int, device="cuda")
    out["zeros"] = [str(zeros.device), str(zeros.dtype), zeros.item()]
    ones = schedules.torch.ones(2, device=torch.device("cuda", 0))
    out["ones_device"] = str(ones.device)
    mask = get_default_causal_mask(3)
    out["mask"] = [str(mask.device), mask.tolist()]

    # RNG tracker: a fork continues its own stream and leaves the default generator alone.
    tracker = mrandom.get_cuda_rng_tracker()
    out["tracker_is_patched_class"] = isinstance(tracker, mrandom.CudaRNGStatesTracker)
    name = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME
    tracker.add(name, 4321)
    torch.manual_seed(0)
    reference = torch.rand(6).tolist()
    torch.manual_seed(0)
    before = torch.rand(3).tolist()
    with tracker.fork():
        fork1 = torch.rand(4).tolist()
    with tracker.fork(name):
        fork2 = torch.rand(4).tolist()
    after = torch.rand(3).tolist()
    out["outside"] = before + after
    out["outside_reference"] = reference
    out["forks"] = fork1 + fork2
    saved = torch.get_rng_state()
    torch.manual_seed(4321)
    out["forks_reference"] = torch.rand(8).tolist()
    torch.set_rng_state(saved)
    try:
        with tracker.fork("never-added"):
            pass
        out["unknown_fork_raises"] = False
    except Exception:
        out["unknown_fork_raises"] = True

    # get_states/set_states: a restored tracker, or a fresh one, reproduces the same draws.
    snapshot = tracker.get_states()
    with tracker.fork():
        first = torch.rand(5).tolist()
    tracker.set_states(dict(snapshot))
    with tracker.fork():
        again = torch.rand(5).tolist()
    fresh = mrandom.CudaRNGStatesTracker()
    fresh.set_states(dict(snapshot))
    with fresh.fork():
        fresh_draw = torch.rand(5).tolist()
    out["restore"] = [first, again, fresh_draw]
    print(json.dumps(out))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallbacks are off on CUDA")
def test_install_on_cpu_machine() -> None:
    r = _run_json(_CPU_SCRIPT)
    pinned = cpu_compat.PINNED_MEGATRON_CORE
    assert r["refusal"] is not None, "install() accepted megatron-core 0.15.0"
    assert f"megatron-core=={pinned}" in r["refusal"] and "0.15.0" in r["refusal"]
    assert r["untouched_after_refusal"] is True

    assert r["returned"] is True and r["is_installed"] is True and r["returned_again"] is True
    assert r["current_device"] == "cpu"
    assert r["zeros"] == ["cpu", "torch.int32", 0]
    assert r["ones_device"] == "cpu"
    assert r["mask"] == ["cpu", [[False, True, True], [False, False, True],
                                 [False, False, False]]]

    assert r["tracker_is_patched_class"] is True
    assert r["outside"] == r["outside_reference"]  # forks leave the default stream alone
    assert r["forks"] == r["forks_reference"]  # two forks continue one seeded stream
    assert r["outside"][:4] != r["forks"][:4]
    assert r["unknown_fork_raises"] is True

    first, again, fresh = r["restore"]
    assert first == again == fresh
