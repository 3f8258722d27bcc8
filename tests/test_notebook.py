from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


@pytest.mark.timeout(900)  # over a minute on a loaded 2-core machine: the default 300 s is too tight
@pytest.mark.slow
def test_example_notebook_runs_top_to_bottom():
    path = Path(__file__).parents[1] / "docs" / "tutorials" / "quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 6  # the results drew themselves
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert any("image/png" in o.get("data", {}) for o in last.outputs)  # a figure shows itself (issue 22)
    shown = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs
                    if "image/png" not in o.get("data", {}))  # what a reader sees as text (a PNG hides its repr)
    assert "<Figure size" not in shown and "tensor(" not in shown  # no raw reprs where a picture or number belongs
