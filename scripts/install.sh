#!/usr/bin/env bash
# Install nextlat_pt into a virtual environment (default: ./.venv).
#
#   scripts/install.sh          the package and its pinned dependencies
#   scripts/install.sh --test   plus the test tools and lm-eval-harness
#
# torch: an importable torch (e.g. your CUDA build, from the system or an active env) is kept
# and pinned so nothing replaces it; otherwise torch==2.13.0 is installed first (on machines
# that ship the local CPU wheel, that wheel). Everything else is then installed under a
# constraint on that exact torch, so pip never pulls a multi-GB CUDA build behind your back.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=""
if [[ "${1:-}" == "--test" ]]; then EXTRAS="[test,eval]"; fi
VENV="${NEXTLAT_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_DEFAULT="${NEXTLAT_TORCH:-torch==2.13.0}"

# Always the project's own environment (the Makefile runs $VENV/bin/...), whatever venv the
# calling shell has active.
unset VIRTUAL_ENV
if [[ ! -x "$VENV/bin/python" ]]; then
  # --system-site-packages: a torch installed for $PYTHON (a CUDA image, a conda env) stays
  # visible and is kept.
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

STAMP="$VENV/.installed${EXTRAS}"
HASH="$(cat setup.py scripts/install.sh | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]] && python -c "import nextlat_pt" 2>/dev/null; then
  exit 0
fi

python -m pip install --quiet --upgrade pip
if python -c "import torch" 2>/dev/null; then
  TORCH_VERSION="$(python -c 'import torch; print(torch.__version__.split("+")[0])')"
  echo "keeping the installed torch $(python -c 'import torch; print(torch.__version__)')"
else
  echo "installing $TORCH_DEFAULT"
  python -m pip install --quiet "$TORCH_DEFAULT"
  TORCH_VERSION="$(python -c 'import torch; print(torch.__version__.split("+")[0])')"
fi
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==${TORCH_VERSION}" > "$CONSTRAINTS"
python -m pip install --quiet -c "$CONSTRAINTS" -e ".${EXTRAS}"
python -m pip check >/dev/null || { python -m pip check; exit 1; }
echo "$HASH" > "$STAMP"
echo "installed nextlat_pt into $VENV (torch $(python -c 'import torch; print(torch.__version__)'))"
