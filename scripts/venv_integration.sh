#!/usr/bin/env bash
# Sourced by test_integration.sh (and benchmarks that need torchvision/timm): a second venv, .venv-integration,
# with torch 2.14.1 + torchvision 0.29.1 + timm (PyPI's torchvision does not import beside the main suite's CPU
# torch 2.13.0). Reused when present and importable; the first creation installs ~5.5 GB of CUDA-enabled wheels
# (they run on CPU). FEATVIS_INTEGRATION_VENV picks another folder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
VENV=${FEATVIS_INTEGRATION_VENV:-.venv-integration}
venv_start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
if ! python -c "import torch, torchvision, timm; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" "timm>=1.0,<2"
fi
# featvis itself (editable, this checkout): reinstalled only when pyproject.toml or the checkout's path changed.
stamp="$VENV/.featvis-install"
want="$(pwd) $(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python -m pip install -q --disable-pip-version-check -e ".[models,torchvision,timm]" "pytest>=8" "pytest-timeout>=2.3"
  echo "$want" > "$stamp"
fi
echo "integration venv ($VENV) ready in $(( $(date +%s) - venv_start )) s"
