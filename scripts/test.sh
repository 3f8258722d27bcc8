#!/usr/bin/env bash
# The test suite on a fresh machine: install featvis with its dev tools, lint, and run every test.
source "$(dirname "$0")/_venv.sh"
ruff check .
python -m pytest -q "$@"
