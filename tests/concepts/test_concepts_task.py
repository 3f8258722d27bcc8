"""The concepts task and page end to end on a tiny model: one item per class of an ImageFolder, the records the page
reads, resume, the one-line errors, the concept objective at the split's own call, and the page in Chromium."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

import featvis as fv
from featvis.concepts import concept_objective, fit_concepts, split_at
from featvis.data import Dataset
from featvis.errors import FeatvisError
from featvis.optvis.objectives import Context
from featvis.report.lens import build_lens
from featvis.tasks.concepts import ConceptsTask
from featvis.tasks.runner import run_task

from _craft_models import PoolNet, wrap

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FAST = {"k": 3, "crops": 4, "steps": 3, "size": 32, "designs": 8, "orders": 6, "examples": 2, "top": 3}


def folder(root, counts: dict[str, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            fv.save_image(torch.rand(3, 32, 32, generator=g), root / name / f"{i:02d}.png")
    return root


def test_one_item_per_class_with_the_records_the_page_reads(tmp_path):
    clf = wrap(PoolNet())
    data = folder(tmp_path / "data", {"c0": 5, "c2": 6})
    run = fv.concepts(clf, data, tmp_path / "out", **FAST)
    assert [r["key"] for r in run.items] == ["0000-c0", "0002-c2"] and not run.failed
    for r, n in zip(run.items, (5, 6), strict=True):
        assert r["images"] == n and r["crops"] == 4 * n and r["layer"] == "relu"
        imps = [c["importance"] for c in r["concepts"]]
        assert len(imps) == 3 and imps == sorted(imps, reverse=True)  # ranked
        assert sorted(c["id"] for c in r["concepts"]) == [0, 1, 2]
        assert abs(sum(c["share"] for c in r["concepts"]) - 1) < 1e-6 or min(imps) < 0
        d = r["deletion"]
        assert len(d["curve"]) == 4 and d["orders"] == 6 and d["images"] == n
        assert d["auc_ci"][0] <= d["auc"] <= d["auc_ci"][1]
        for c in r["concepts"]:
            for rel in [*c["crops"], *c["maps"], c["visual"]]:
                assert (run.folder / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert len(c["crops"]) == 3 and len(c["maps"]) == 2
    page = (run.folder / "index.html").read_text()
    assert "0002-c2" in page and "concepts of 2 classes" in page
    again = fv.concepts(clf, data, tmp_path / "out", **FAST)  # resumes: nothing to redo, same records
    assert [r["concepts"] for r in again.items] == [r["concepts"] for r in run.items]
    assert again.manifest["counts"]["skipped"] == 2


def test_deletion_ends_where_insertion_starts_at_the_head_of_nothing(tmp_path):
    """Deleting every concept leaves a zero activation: the curve's last point is h(0), the same for every order."""
    clf = wrap(PoolNet())
    data = folder(tmp_path / "data", {"c1": 6})
    run = fv.concepts(clf, data, tmp_path / "out", **FAST)
    d = run.items[0]["deletion"]
    assert abs(d["curve"][-1] - d["random_mean"][-1]) < 1e-5
    assert abs(d["curve"][-1] - float(clf.net.fc.bias[1].detach())) < 1e-4  # h(0) = the bias of a pool + linear head
    ins = run.items[0]["insertion"]  # the same ends, swapped: nothing inserted = all deleted, and back
    assert ins["curve"][0] == pytest.approx(d["curve"][-1], abs=1e-5)
    assert ins["curve"][-1] == pytest.approx(d["curve"][0], abs=1e-5)
    assert ins["order"] == d["order"] and len(ins["curve"]) == 4


def test_classes_are_chosen_by_name_and_unknown_or_absent_ones_are_one_line(tmp_path):
    clf = wrap(PoolNet())
    data = folder(tmp_path / "data", {"c0": 4, "c1": 4, "c2": 4})
    task = ConceptsTask(classes=("c2", "0"), **FAST)
    units = task.units_from(Dataset.from_inputs([data], labels=clf.labels, imagefolder=True), clf)
    assert [it.key for it in units.items] == ["0000-c0", "0002-c2"]
    folder(tmp_path / "two", {"c0": 4})
    with pytest.raises(FeatvisError, match=r"class 'c1' has no images in the inputs \(they hold c0\)"):
        ConceptsTask(classes="c1", **FAST).units_from(
            Dataset.from_inputs([tmp_path / "two"], labels=clf.labels, imagefolder=True), clf)


def test_a_class_with_too_few_images_fails_alone_with_what_to_do(tmp_path):
    clf = wrap(PoolNet())
    data = folder(tmp_path / "data", {"c0": 2, "c1": 5})
    run = run_task(ConceptsTask(**FAST), [data], tmp_path / "out", clf=clf, batch_size=1)
    assert [r["key"] for r in run.items] == ["0001-c1"]
    (err,) = run.failed
    assert err["key"] == "0000-c0" and "has 2 image(s); concepts need at least 4" in err["error"]
    assert "\n" not in err["error"]


def test_unlabelled_images_and_negative_layers_are_refused_in_one_line(tmp_path):
    clf = wrap(PoolNet())
    flat = folder(tmp_path / "flat", {"": 4})
    with pytest.raises(FeatvisError, match="no labelled images"):
        Dataset.from_inputs([flat], labels=clf.labels).by_class(clf.labels)
    with pytest.raises(FeatvisError, match=r"no class sub-folders; .*\(concepts needs one sub-folder per class"):
        run_task(ConceptsTask(**FAST), [flat], tmp_path / "o1", clf=clf)
    with pytest.raises(FeatvisError, match=r"negative activations .* split at a non-negative layer, e.g. 'relu'") as e:
        run_task(ConceptsTask(layer="conv", **FAST), [folder(tmp_path / "d", {"c0": 4})], tmp_path / "o", clf=clf)
    assert "\n" not in str(e.value)


class Shared(nn.Module):
    """One ReLU module called twice (as Lite0's `_swish`): the split at its second call is not its first output."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 5, 3, stride=2)
        self.act = nn.ReLU()
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.act(self.conv2(self.act(self.conv1(x)))).mean((2, 3)))


def test_the_concept_objective_reads_the_split_s_own_call_and_render_climbs_it():
    clf = wrap(Shared())
    split = split_at(clf, "act", call=1)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bank = fit_concepts(split, images, k=2, crops=4, seed=0)
    obj = concept_objective(split, bank)
    x = images[:2]
    net = clf.net
    a = net.act(net.conv2(net.act(net.conv1(clf.normalize(x)))))  # the second call, by hand
    w = bank.W / bank.W.norm(dim=1, keepdim=True)
    want = (a * w[:, :, None, None]).sum(1).mean((1, 2))
    got = obj(Context(images=x, clf=clf, seen=x))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    res = fv.optvis.visualize(clf, obj, preset="lucid", size=32, batch=2, steps=24, seed=0)
    start = obj(Context(images=torch.full((2, 3, 32, 32), 0.5), clf=clf, seen=torch.full((2, 3, 32, 32), 0.5)))
    final = obj(Context(images=res.images, clf=clf, seen=res.images))
    assert (final > start).all()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
def test_the_page_lists_classes_and_opens_one_with_its_ranked_concepts(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    clf = wrap(PoolNet())
    run = fv.concepts(clf, folder(tmp_path / "data", {"c0": 4, "c1": 5}), tmp_path / "out", **FAST)
    first = run.items[1]["concepts"][0]
    (run.folder / first["crops"][1]).unlink()
    build_lens(run.folder, fv.read_run(run.folder))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        try:
            tab = browser.new_page()
            errors = []
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto((run.folder / "index.html").as_uri())
            tab.wait_for_selector("body[data-ready='1']", timeout=5000)
            assert tab.locator("#index .tile").count() == 2
            tab.fill("#filter", "c1")
            assert tab.locator("#index .tile:not([hidden])").count() == 1
            tab.locator("#index .tile:not([hidden])").click()
            tab.wait_for_selector("#class:not([hidden]) .concept", timeout=5000)
            heads = tab.locator("#class .concept h3").all_inner_texts()
            assert len(heads) == 3 and heads[0].startswith(f"#1 · concept {first['id']}")
            assert tab.locator("#class svg.curve path.ours").count() == 2  # deletion and insertion
            assert tab.locator("#class .missing").count() == 1  # the deleted crop is said, not a broken image
            assert "1 of the page's files are missing" in tab.content()
            tab.goto((run.folder / "index.html").as_uri() + "#0000-c0")
            tab.wait_for_selector("#class:not([hidden]) h2", timeout=5000)
            assert tab.locator("#class h2").inner_text() == "c0"
            assert not errors
        finally:
            browser.close()


def test_the_run_json_is_the_page_s_data(tmp_path):
    clf = wrap(PoolNet())
    run = fv.concepts(clf, folder(tmp_path / "data", {"c2": 4}), tmp_path / "out", **FAST)
    results = json.loads((run.folder / "results.json").read_text())
    assert results["summary"]["classes"] == 1 and results["summary"]["k"] == 3
    assert results["items"][0]["bank"].endswith("bank.npz")
    import numpy as np

    with np.load(run.folder / results["items"][0]["bank"]) as z:
        assert z["W"].shape == (3, 6) and (z["W"] >= 0).all()
