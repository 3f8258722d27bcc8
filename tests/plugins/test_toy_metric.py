"""A new metric is one file: registered here with its direction, paper, protocol and options, it reaches
`featvis metrics`, `featvis evaluate` (with -O group.option), the web API's listing, the leaderboard and the report."""

import pytest
import torch

import featvis as fv
from featvis.attribution.metric import Context, Metric, default_metrics, metric_group, unregister_group

from _drive import cli_json, report_html

pytest.importorskip("fastapi")


def centre_share(c: Context, *, radius: int = 8) -> dict[str, torch.Tensor]:
    """A toy metric: the share of |map| within `radius` pixels of the centre.

    Args:
        radius: half the side of the centre square, in pixels.
    """
    a = c.maps.abs()
    h, w = a.shape[-2:]
    inner = a[:, h // 2 - radius:h // 2 + radius, w // 2 - radius:w // 2 + radius].flatten(1).sum(1)
    return {"centre-share": inner / a.flatten(1).sum(1).clamp_min(1e-12)}


@pytest.fixture
def toy():
    metric_group("centre", Metric("centre-share", True, "Toy et al. 2026", "share of |map| in a centre square"))(
        centre_share)
    yield "centre-share"
    unregister_group("centre")


def test_toy_metric_through_cli_evaluate_web_and_report(toy, clf, capsys, tmp_path):
    listed = {m["name"]: m for m in cli_json(capsys, "metrics")}
    assert listed[toy]["direction"] == "↑" and listed[toy]["paper"] == "Toy et al. 2026" and listed[toy]["default"]
    assert toy in default_metrics()
    img = fv.samples.path("coffee")
    out = cli_json(capsys, "evaluate", img, "--method", "gradient,gradcam", "--metric", toy, "-O", "centre.radius=56",
                   "-o", tmp_path / "run")
    scores = out["items"][0]["scores"]
    assert set(scores) == {"gradient", "gradcam", "random"} and set(scores["gradcam"]) == {toy}
    # radius 56 of a 224 px image is a quarter of the area: a uniform-random map puts about 1/4 of its mass there
    assert scores["random"][toy] == pytest.approx(0.25, abs=0.02)
    entry = out["summary"]["table"]["gradcam"][toy]
    assert entry["mean"] == pytest.approx(scores["gradcam"][toy]) and entry["beats_random"] in (True, False)
    from featvis.cli import main

    assert main(["evaluate", str(img), "--method", "gradient", "--metric", toy, "-O", "centre.raduis=3",
                 "--quiet"]) == 2
    assert "radius" in capsys.readouterr().err  # the option was read from the signature: did you mean radius?
    from fastapi.testclient import TestClient

    from featvis.web.app import create_app

    with TestClient(create_app(clf), base_url="http://127.0.0.1") as c:
        web = {m["name"]: m for m in c.get("/api/metrics").json()}
    assert web[toy]["group"] == "centre" and web[toy]["protocol"] == "share of |map| in a centre square"
    page = report_html(capsys, tmp_path / "run", tmp_path)
    assert f"{toy} ↑" in page
