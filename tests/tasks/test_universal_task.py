"""The universal task: a seeded held-out split, the held-out rate reported with the baseline and per class, the
report section and its files, a fit interrupted and rerun ending with the same v, the CLI command."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import featvis as fv
from featvis.cli import main
from featvis.data import Dataset
from featvis.tasks import read_run
from featvis.tasks.universal import UniversalTask
from featvis.tasks.universal_fit import CHECKPOINT, run_universal, split

from _models import TinyConvNet, noise_photos

SIZE = 16
OPTS = {"eps": 0.1, "method": "sgd", "epochs": 4, "target_rate": 1.0, "fit_batch": 4, "panels": 2}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's note on the call counter
        torch.jit.trace(TinyConvNet().eval(), torch.rand(1, 3, SIZE, SIZE)).save(str(path))
    return path


@pytest.fixture(scope="module")
def tiny(model_file):
    return fv.load_model(str(model_file), trust_checkpoint=True, labels=list("abcd"), input_size=SIZE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder of 16 noise photos, classes a and b."""
    root = tmp_path_factory.mktemp("uap-in")
    for cls in ("a", "b"):
        (root / cls).mkdir()
        noise_photos(root / cls, 8)
    return root


def data(folder, clf):
    return Dataset.from_inputs([folder], labels=clf.labels, imagefolder=True)


def test_split_is_seeded_and_order_free(tiny, folder):
    ds = data(folder, tiny)
    train, held = split(ds, 0.3, seed=1)
    assert len(held) == 5 and len(train) == 11 and not {i.key for i in held} & {i.key for i in train}
    flipped = Dataset(tuple(reversed(ds.items)), ds.spec)
    assert {i.key for i in split(flipped, 0.3, seed=1)[1]} == {i.key for i in held}
    assert {i.key for i in split(ds, 0.3, seed=2)[1]} != {i.key for i in held}


def test_held_out_rate_baseline_per_class_and_section(tiny, folder, tmp_path):
    run = run_universal(tiny, data(folder, tiny), tmp_path, seed=1, **OPTS)
    s = run.summary
    assert s["images"] == 5 and s["fit"]["images"] == 11 and len(run.items) == 5
    assert s["fooling_rate"] == sum(r["fooled"] for r in run.items) / 5
    assert 0 <= s["random_fooling_rate"] <= 1 and s["fit"]["fooling_rate"] == s["fit"]["history"][-1]
    assert {c["name"] for c in s["per_class"]} == {"a", "b"} and sum(c["images"] for c in s["per_class"]) == 5
    v = np.load(tmp_path / "perturbation.npy")
    assert v.shape == (3, SIZE, SIZE) and np.abs(v).max() <= 0.1 + 1e-6
    drawn = [r for r in run.items if r.get("figure")]
    assert len(drawn) == 2 and all((tmp_path / r["figure"]).is_file() for r in drawn)
    perturbed = fv.load_image(tmp_path / drawn[0]["perturbed_png"], tiny)
    assert tiny.predict(perturbed, k=1)[0][0].index == drawn[0]["predicted"]
    sec = UniversalTask.section(read_run(tmp_path))
    assert sec.figures[0][0] == "perturbation.png" and len(sec.figures) == 3
    assert sec.tables[0].rows[0][:5] == [5, s["fooling_rate"], s["random_fooling_rate"], 11, s["fit"]["fooling_rate"]]
    assert run.manifest["params"]["perturbation_sha256"] and (tmp_path / "results.csv").is_file()


@pytest.mark.slow  # four runs (~5 s on a quiet 2-core machine); the fit's own resume test is fast
def test_interrupted_fit_resumes_to_the_same_perturbation(tiny, folder, tmp_path):
    ds, opts = data(folder, tiny), OPTS | {"panels": 0}  # figures are the other test's; here they only cost time
    whole = run_universal(tiny, ds, tmp_path / "whole", seed=1, **opts)
    seen = []

    def stop(event):
        if event.kind == "stage" and event.stage_done == 2:
            seen.append(event.stage)
            raise KeyboardInterrupt  # Ctrl-C after 2 of the first pass's 3 batches

    with pytest.raises(KeyboardInterrupt):
        run_universal(tiny, ds, tmp_path / "cut", seed=1, progress=stop, **opts)
    state = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)["state"]
    assert seen == ["fit pass 1/4"] and (state["epoch"], state["batch"]) == (0, 2) and not state["done"]
    resumed = run_universal(tiny, ds, tmp_path / "cut", seed=1, **opts)
    read = lambda p: (p / "perturbation.npy").read_bytes()  # noqa: E731
    assert read(tmp_path / "cut") == read(tmp_path / "whole")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(resumed.items) == strip(whole.items)
    assert resumed.summary["fit"]["history"] == whole.summary["fit"]["history"]
    with pytest.raises(fv.FeatvisError, match="other parameters or images; use a new -o folder, or --overwrite"):
        run_universal(tiny, ds, tmp_path / "cut", seed=1, **(opts | {"eps": 0.05}))
    again = run_universal(tiny, ds, tmp_path / "cut", seed=1, overwrite=True, **(opts | {"eps": 0.05}))
    assert again.summary["eps"] == 0.05 and np.abs(np.load(tmp_path / "cut" / "perturbation.npy")).max() <= 0.05


@pytest.mark.slow  # three commands, each loading the model
def test_cli_command(capsys, model_file, folder, tmp_path):
    args = ["universal", str(folder), "--imagefolder", "--model", str(model_file), "--trust-checkpoint", "--labels",
            "a,b,c,d", "--input-size", str(SIZE), "--eps", "25/255", "--epochs", "2", "--holdout", "0.25",
            "--fit-batch", "4", "--panels", "1", "-o", str(tmp_path), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "universal" and out["summary"]["images"] == 4 and out["summary"]["fit"]["images"] == 12
    assert out["summary"]["eps"] == pytest.approx(25 / 255) and (Path(tmp_path) / "perturbation.png").is_file()
    assert main(args) == 0  # a rerun resumes: nothing is fitted or evaluated again
    assert json.loads(capsys.readouterr().out)["counts"]["skipped"] == 4
    assert main([*args[:-3], "--method", "pgd"]) == 2
    assert "unknown universal fit 'pgd'" in capsys.readouterr().err
    # the spelling, `featvis fool DATASET --universal`, is the same command: it resumes the same run
    assert main(["fool", *args[1:4], "--universal", *args[4:]]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["skipped"] == 4


@pytest.mark.slow
def test_ray_evaluates_the_held_out_batches_like_local(tiny, folder, tmp_path):
    pytest.importorskip("ray")
    ds, opts = data(folder, tiny), OPTS | {"panels": 1}
    local = run_universal(tiny, ds, tmp_path / "local", seed=1, batch_size=2, **opts)
    remote = run_universal(tiny, ds, tmp_path / "ray", seed=1, batch_size=2, executor="ray", **opts)
    assert remote.manifest["executor"]["name"] == "ray"
    # the decisions are equal; probabilities to float tolerance (a worker's one torch thread sums in another order)
    exact = ("key", "original_class", "predicted", "fooled", "random_predicted", "random_fooled", "linf_255")
    assert [{k: r[k] for k in exact} for r in remote.items] == [{k: r[k] for k in exact} for r in local.items]
    assert [r["original_prob_after"] for r in remote.items] == pytest.approx(
        [r["original_prob_after"] for r in local.items], abs=1e-5)
    assert remote.summary["fooling_rate"] == local.summary["fooling_rate"]
    assert (tmp_path / "ray" / "perturbation.npy").read_bytes() == (tmp_path / "local" / "perturbation.npy").read_bytes()
