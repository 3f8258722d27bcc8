"""A new attack is one file: registered here, it reaches the CLI, the web API and the report."""

import pytest
import torch

import featvis as fv
from featvis.adversarial import ATTACKS
from featvis.adversarial._base import attack_inputs, resolve_attack_targets
from featvis.adversarial.result import finish
from featvis.models.classifier import frozen

from _drive import cli_json, report_html, web_job

pytest.importorskip("fastapi")


def sign_step(clf, images: torch.Tensor, target=None, *, eps: float = 8 / 255, seed=0, callback=None):
    """A toy untargeted attack: one signed step up the loss of the predicted class.

    Args:
        eps: the step (and L∞ budget) in [0, 1] pixel units.
    """
    x = attack_inputs(clf, images)
    _, original, probs = resolve_attack_targets(clf, x, None, seed)
    inp = x.clone().requires_grad_(True)
    with frozen(clf):
        loss = torch.nn.functional.cross_entropy(clf(inp), original)
        grad = torch.autograd.grad(loss, inp)[0]
    if callback is not None:
        callback(1, 0)
    raw = (x + eps * grad.sign()).clamp(0, 1)
    return finish("toy-sign", clf, x, raw, None, original, torch.ones(len(x), dtype=torch.long), {"eps": eps}, probs)


@pytest.fixture
def toy():
    ATTACKS.register("toy-sign", targeted=False, untargeted=True, norms=("linf",), steps=None)(sign_step)
    yield "toy-sign"
    ATTACKS.remove("toy-sign")


def test_toy_attack_through_cli_web_and_report(toy, clf, capsys, tmp_path):
    listed = {a["name"]: a for a in cli_json(capsys, "attacks")}
    assert listed[toy]["targeted"] is False and listed[toy]["norms"] == ["linf"]
    img = fv.samples.path("chelsea")
    out = cli_json(capsys, "fool", img, "--method", toy, "--eps", "4/255", "-o", tmp_path / "run")
    rec = out["items"][0]
    assert rec["method"] == toy and rec["target"] is None and rec["linf_255"] <= 4 and rec["success"]
    assert fv.load_image(tmp_path / "run" / rec["fooled_png"], clf).shape == (1, 3, 224, 224)
    names, job = web_job(clf, "/api/fool", {"sample": "chelsea", "method": toy}, "/api/attacks")
    assert toy in names and job["status"] == "done" and job["result"]["predicted"] != job["result"]["original_class"]
    page = report_html(capsys, tmp_path / "run", tmp_path)
    assert f"Fooling images: {toy}" in page


def test_toy_attack_reaches_robustness_through_its_declared_budget(toy, clf, capsys, tmp_path):
    """Robustness takes any attack whose registration declares a budget norm and an `eps` option (no hand-written
    list of attack names: issue 23)."""
    from featvis.adversarial._base import budgeted_attacks

    assert toy in budgeted_attacks("linf") and toy not in budgeted_attacks("l2")
    img = fv.samples.path("chelsea")
    out = cli_json(capsys, "robustness", img, "--method", toy, "--eps", "1/255,4/255", "-o", tmp_path / "rob")
    assert out["items"][0]["method"] == toy and out["summary"]["curve"]["fooled_rate"][-1] == 1.0
    from featvis.cli import main

    assert main(["robustness", str(img), "--method", toy, "--norm", "l2", "--eps", "0.5", "--quiet"]) == 2
    assert f"{toy} is linf only" in capsys.readouterr().err
    page = report_html(capsys, tmp_path / "rob", tmp_path)
    assert toy in page
