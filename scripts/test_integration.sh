#!/usr/bin/env bash
# The integration tests (tests/integration): real torchvision and timm architectures through featvis — loading by
# name and by --weights, every attribution method and attack, class and feature visualization — in
# .venv-integration (scripts/venv_integration.sh; torch 2.14.1 + torchvision 0.29.1 + timm). Nothing is downloaded:
# the tests write the checkpoints. Prints the model × feature table (also written to $FEATVIS_INTEGRATION_TABLE,
# default out/integration-table.md). Extra arguments go to pytest, e.g. -k vit_b_16.
source "$(dirname "$0")/venv_integration.sh"
start=$(date +%s)
export FEATVIS_INTEGRATION_TABLE=${FEATVIS_INTEGRATION_TABLE:-out/integration-table.md}
mkdir -p "$(dirname "$FEATVIS_INTEGRATION_TABLE")"
python -m pytest -q -m integration tests/integration "$@"
echo "integration tests: $(( $(date +%s) - start )) s"
