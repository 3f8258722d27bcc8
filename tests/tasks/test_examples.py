"""Dataset examples against a brute-force pass: every image's spatial max per channel from `capture` on the user's
network (fast path off), sorted by hand."""

from __future__ import annotations

import pytest
import torch

import featvis as fv
from featvis.layers import capture
from featvis.models.classifier import frozen
from featvis.tasks import ExamplesTask, run_task

NAMES = ("chelsea", "coffee", "rocket", "astronaut", "grace_hopper")


@pytest.mark.parametrize("classes", [True, False])
def test_top_and_bottom_examples_match_a_brute_force_pass(clf, classes, tmp_path):
    files = [str(fv.samples.path(n)) for n in NAMES]
    layer, chans = "_blocks.8", (0, 5, 17, 40)
    x = torch.cat([fv.load_image(f, clf) for f in files])
    clf.fast = False
    try:
        with torch.no_grad(), frozen(clf), capture(clf, layer, detach=True) as cap:
            predicted = clf(x).argmax(-1)
    finally:
        clf.fast = True
    peak = cap.calls[layer][0][:, list(chans)].flatten(2).amax(-1)  # [images, channels]
    task = ExamplesTask(layer="blocks.8", channels=chans, k=2, classes=classes)  # classes: one full forward
    summary = run_task(task, files, tmp_path, clf=clf, batch_size=2).summary
    for j, ch in enumerate(summary["channels"]):
        assert ch["channel"] == chans[j]
        order = peak[:, j].argsort(descending=True).tolist()
        got = [e["input"] for e in ch["top"]]
        assert got == [files[i] for i in order[:2]], (ch["channel"], got)
        torch.testing.assert_close(torch.tensor([e["value"] for e in ch["top"]]), peak[order[:2], j],
                                   rtol=1e-3, atol=1e-4)
        assert {e["input"] for e in ch["bottom"]} <= {files[i] for i in order[2:]} | set(got)
        if classes:
            assert sorted(c["class"] for c in ch["classes_of_top"]) == sorted({int(predicted[i]) for i in order[:2]})
