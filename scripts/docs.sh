#!/usr/bin/env bash
# The documentation site: mkdocs build --strict into out/site (the tutorial notebooks are executed as part of it, so
# a broken tutorial fails the build), then docs/hooks/check_site.py: every public function and class in the API
# reference, nothing loaded from the network, every page opened from file:// in headless Chromium (screenshots in
# out/site-shots). Open out/site/index.html in a browser; it works offline.
source "$(dirname "$0")/_venv.sh"
start=$(date +%s)
export NO_MKDOCS_2_WARNING=1
rm -rf .cache/mkdocs-jupyter  # execute the notebooks afresh, never from an earlier build's cache
python -m mkdocs build --strict -q
echo "   mkdocs build --strict: $(( $(date +%s) - start )) s, $(find out/site -name '*.html' | wc -l) pages"
python docs/hooks/check_site.py out/site --shots out/site-shots
echo "docs built and checked in $(( $(date +%s) - start )) s"
