"""Whether lm-eval-harness is importable, checked without importing it (or torch), and the
command that installs it without replacing the torch in use."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shlex
import sys

LM_EVAL_REQUIREMENT = "lm-eval[hf]==0.4.13"  # setup.py's `eval` extra


def lm_eval_missing() -> str | None:
    """None when lm-eval can be imported, else a one-line error with a working command."""
    if importlib.util.find_spec("lm_eval") is not None:
        return None
    try:  # pin the installed torch (a local label such as +cpu matches `==X.Y.Z`)
        torch_pin = f"torch=={importlib.metadata.version('torch').split('+')[0]}"
    except importlib.metadata.PackageNotFoundError:
        torch_pin = ""
    command = " ".join(shlex.quote(part) for part in (
        sys.executable, "-m", "pip", "install", LM_EVAL_REQUIREMENT, torch_pin) if part)
    return (f"--lm-eval needs lm-eval-harness, which is not installed; install it next to "
            f"the torch in use with: {command} (in a source checkout, `bash "
            f"scripts/install.sh --test` installs it too)")
