import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from featvis.cli import main

pytestmark = pytest.mark.slow  # the module's fixture runs `featvis demo --quick`


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.sections, self.links, self.tables, self._cell, self._row, self._table = [], [], [], {}, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "section":
            self.sections.append(a["id"])
        elif tag in ("link", "script"):
            self.links.append(a)
        elif tag == "table":
            self._table = a.get("data-table")
            self.tables.setdefault(self._table, [])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append(self._row)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "-o", str(out), "--quiet", "--device", "cpu"]) == 0
    return out


def test_quick_demo_report_is_complete_and_consistent(demo_dir):
    page = _Page()
    text = (demo_dir / "index.html").read_text()
    page.feed(text)
    kinds = [s.split("-")[0] for s in page.sections]
    assert kinds == ["classify", "saliency", "fool", "robustness", "classvis", "classvis", "features", "features",
                     "features"]
    assert not page.links and "http://" not in text and "https://" not in text  # nothing fetched from outside
    for src in page.imgs:  # every referenced image exists beside the page and decodes
        Image.open(demo_dir / src).verify()
    assert len(page.imgs) >= 2 + 2 + 2 + 3
    # the numbers in the tables are the ones in the runs' results/manifests
    fool = json.loads((demo_dir / "runs" / "fool" / "results.json").read_text())
    rows = page.tables["per image"]
    fool_rows = [r for r in rows if len(r) == 9 and r[0] != "image"]
    assert [int(r[5]) for r in fool_rows] == [r["steps"] for r in fool["items"]]
    assert [float(r[7]) for r in fool_rows] == pytest.approx([r["l2"] for r in fool["items"]], abs=1e-3)
    rob = json.loads((demo_dir / "runs" / "robustness" / "results.json").read_text())
    shares = [r for r in page.tables["share fooled"] if r[0] != "budget ε"]
    assert [r[0] for r in shares] == ["1/255", "2/255"]
    assert [float(r[1].rstrip("%")) / 100 for r in shares] == pytest.approx(rob["summary"]["curve"]["fooled_rate"])
    sal = json.loads((demo_dir / "runs" / "saliency" / "results.json").read_text())
    auc = {r[0]: (float(r[1]), float(r[2])) for r in page.tables["mean AUC over the images"][1:]}
    for method, v in sal["summary"]["mean_auc"].items():
        assert auc[method] == pytest.approx((v["deletion"], v["insertion"]), abs=1e-3)
    manifest = json.loads((demo_dir / "runs" / "classvis-lucid" / "manifest.json").read_text())
    assert manifest["model"]["id"] in text and manifest["params"]["preset"] == "lucid"
    assert re.search(r"<td>total</td><td class='num'>[0-9.]+</td>", text)


def test_report_command_rebuilds_from_runs(demo_dir, tmp_path, capsys):
    runs = sorted(p for p in (demo_dir / "runs").iterdir())
    assert main(["report", *map(str, runs), "-o", str(tmp_path / "r.html"), "--embed"]) == 0
    html = Path(capsys.readouterr().out.strip()).read_text()
    assert html.count("data:image/png;base64,") >= 9
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "x")]) == 2
