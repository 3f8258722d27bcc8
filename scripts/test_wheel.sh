#!/usr/bin/env bash
# The package as a user gets it: build the sdist and the wheel (python -m build, twine check), install the wheel into
# a fresh venv in a temporary folder (torch 2.13.0, the CPU build, first: an unpinned torch pulls a multi-GB CUDA
# build), and from outside the checkout run the smoke test: `featvis classify` on a bundled photo (top class
# espresso), `featvis demo --quick` (the report and its runs), and `import featvis` in a Jupyter kernel. Each step is
# timed. The built files stay in out/dist; FEATVIS_WHEEL_KEEP=1 keeps the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PY=${PYTHON:-python3}
step_start=0
step() { step_start=$(date +%s); echo "== $1"; }
took() { echo "   $1: $(( $(date +%s) - step_start )) s"; }
# pip, quiet, without the local index's notes about absent optional folders.
pipq() { python -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "neither a file nor a directory" || true; }; }
total_start=$(date +%s)

# build and twine come from the docs extra (scripts/docs.sh) or are installed here into the main venv.
if [ -x .venv/bin/python ]; then . .venv/bin/activate; fi
if ! python -c "import build, twine" 2>/dev/null; then
  pipq "build>=1.2" "twine>=5"
fi
step "build sdist + wheel"
rm -rf out/dist && mkdir -p out/dist
python -m build -o out/dist . > out/build.log 2>&1 || { tail -n 30 out/build.log; exit 1; }
python -m twine check --strict out/dist/*
wheel=$(ls "$repo"/out/dist/featvis-*-py3-none-any.whl)
sdist=$(ls "$repo"/out/dist/featvis-*.tar.gz)
# Nothing but the package (and its metadata) in either archive.
python - "$wheel" "$sdist" <<'EOF'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
bad = [n for n in names if not (n.startswith("featvis/") or ".dist-info/" in n)]
assert not bad, f"wheel holds files outside featvis/: {bad[:5]}"
need = ["featvis/py.typed", "featvis/samples/NOTICE", "featvis/samples/coffee.jpg", "featvis/optvis/maco_spectrum.pt",
        "featvis/models/imagenet_classes.tsv", "featvis/web/static/index.html", "featvis/report/static/atlas.js",
        "featvis/report/static/lens.css"]
missing = [n for n in need if n not in names]
assert not missing, f"wheel lacks {missing}"
members = [m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m]
bad = [m for m in members if m.split("/")[0] in {"tests", "benchmarks", "docs", "examples", "scripts", "out"}]
assert not bad, f"sdist holds {bad[:5]}"
print(f"   wheel: {len(names)} files; sdist: {len(members)} entries; no tests/benchmarks/docs")
EOF
ls -l out/dist/*.whl out/dist/*.tar.gz | awk '{print "   " $5 " bytes  " $9}'
took build
deactivate 2>/dev/null || true

tmp=$(mktemp -d)
[ "${FEATVIS_WHEEL_KEEP:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT
cd "$tmp"  # the source tree is not on the path from here on
step "fresh venv: torch 2.13.0 (CPU), then the wheel"
"$PY" -m venv venv
. venv/bin/activate
pipq "torch==2.13.0"
pipq "$wheel"
pipq "ipykernel>=6.29" "nbclient>=0.10" "nbformat>=5.10"
python - "$repo" <<'EOF'
import sys
import featvis
where = featvis.__file__
assert sys.argv[1] not in where, f"featvis imported from the checkout: {where}"
print(f"   featvis {featvis.__version__} from {where}")
EOF
took install

step "featvis classify on a bundled photo"
photo=$(python -c "import featvis; print(featvis.samples.path('coffee'))")
featvis classify -k 1 --json -q "$photo" > classify.json
python - <<'EOF'
import json
top = json.load(open("classify.json"))["items"][0]["predictions"][0]
assert top["name"] == "espresso", top
print(f"   top-1: {top['name']} {top['prob']:.3f}")
EOF
took classify

step "featvis demo --quick"
featvis demo --quick -q -o demo > /dev/null
test -s demo/index.html
n_png=$(find demo -name '*.png' | wc -l)
[ "$n_png" -gt 0 ] || { echo "demo wrote no PNGs"; exit 1; }
echo "   demo/index.html and $n_png PNGs in $(ls demo/runs | wc -l) runs"
took demo

step "import featvis in a Jupyter kernel"
python - <<'EOF'
import nbclient
import nbformat

nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
    "import featvis as fv\nclf = fv.load_model()\nprint(fv.__version__, clf.labels[967])")])
nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()  # the venv's own kernel
out = "".join(o.get("text", "") for o in nb.cells[0].outputs)
assert "espresso" in out, nb.cells[0].outputs
print(f"   kernel printed: {out.strip()}")
EOF
took kernel
echo "wheel smoke test passed in $(( $(date +%s) - total_start )) s"
