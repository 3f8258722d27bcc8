# Sourced by demo.sh and test.sh: make .venv with the CPU torch wheel (no multi-GB CUDA download) and featvis.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
python -m pip install -q --disable-pip-version-check -e ".[${FEATVIS_EXTRAS:-dev}]"
