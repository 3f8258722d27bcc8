"""The tcav task: gradients streamed per batch through the runner give the in-memory `tcav`'s scores exactly; the
concept-folder errors are one line; the CLI takes --concept repeated."""

from __future__ import annotations

import pytest
import torch

import featvis as fv
from featvis.cli._params import field_parameters
from featvis.concepts import random_subsets, tcav
from featvis.errors import FeatvisError
from featvis.images import load_images
from featvis.tasks.runner import run_task
from featvis.tasks.tcav import TcavParams, TcavTask, _folder_images

from _craft_models import PoolNet, wrap


def images(folder, n: int, seed: int, bias: float = 0.0):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        fv.save_image((torch.rand(3, 32, 32, generator=g) * 0.7 + bias).clamp(0, 1), folder / f"{i:02d}.png")
    return folder


@pytest.mark.parametrize("cav", ["linear", "fast"])
def test_streamed_gradients_give_the_in_memory_scores(tmp_path, cav):
    clf = wrap(PoolNet())
    cls = images(tmp_path / "class", 7, 0)
    a, b = images(tmp_path / "bright", 5, 1, 0.3), images(tmp_path / "dark", 6, 2, -0.2)
    rnd = images(tmp_path / "random", 9, 3)
    task = TcavTask(target="c1", concepts=(f"bright={a}", f"dark={b}"), random=str(rnd), layers=("relu", "conv"),
                    runs=4, cav=cav)
    run = run_task(task, [cls], tmp_path / "out", clf=clf, batch_size=3, seed=5)  # 3 batches, 3 partial files
    s = run.summary
    assert s["images"] == 7 and s["per_set"] == 5 and s["random_per_set"] == 5 and s["tests"] == 4
    pool = load_images(_folder_images("random", str(rnd)), clf)
    want = tcav(clf, load_images(_folder_images("c", str(cls)), clf),
                {"bright": load_images(_folder_images("a", str(a))[:5], clf),
                 "dark": load_images(_folder_images("b", str(b))[:5], clf)},
                random_subsets(pool, 4, 5, seed=5), "c1", ["relu", "conv"], cav=cav, seed=5).to_dict()
    got = {(r["layer"], r["concept"]): r for r in s["scores"]}
    assert len(got) == 4
    for r in want["scores"]:
        g = got[(r["layer"], r["concept"])]
        assert g["scores"] == pytest.approx(r["scores"], abs=1e-9)
        assert g["p"] == pytest.approx(r["p"], rel=1e-6, abs=1e-12) and g["significant"] == r["significant"]


def test_concept_folders_and_their_errors_are_one_line(tmp_path):
    clf = wrap(PoolNet())
    cls, rnd = images(tmp_path / "class", 3, 0), images(tmp_path / "random", 4, 1)
    (tmp_path / "empty").mkdir()
    one = images(tmp_path / "one", 1, 2)
    cases = [
        (dict(concepts=("striped",)), "must be written NAME=FOLDER"),
        (dict(concepts=(f"a={cls}", f"a={rnd}")), "given twice"),
        (dict(concepts=()), "at least one concept folder"),
        (dict(concepts=(f"a={cls}",), random=""), "folder of random images"),
        (dict(concepts=(f"a={cls}",), target=None), "name the class TCAV explains"),
        (dict(concepts=(f"a={cls}",), cav="svm"), "cav must be"),
    ]
    for kw, msg in cases:
        with pytest.raises(FeatvisError, match=msg) as e:
            TcavTask(**{"target": "c0", "random": str(rnd), **kw})
        assert "\n" not in str(e.value)
    for folder, msg in ((tmp_path / "empty", "holds no images"), (one, "holds 1 image"),
                        (tmp_path / "nowhere", "is not a folder")):
        with pytest.raises(FeatvisError, match=msg):
            run_task(TcavTask(target="c0", concepts=(f"x={folder}",), random=str(rnd), layers=("relu",)), [cls],
                     tmp_path / "out", clf=clf, overwrite=True)
    with pytest.raises(FeatvisError, match="unknown layer 'nope'"):
        run_task(TcavTask(target="c0", concepts=(f"x={cls}",), random=str(rnd), layers=("nope",)), [cls],
                 tmp_path / "out", clf=clf, overwrite=True)


def test_the_cli_takes_concepts_repeated_or_as_a_comma_list():
    _, converters = field_parameters(TcavParams, set())
    assert converters["concepts"](["a=x", "b=y"]) == ("a=x", "b=y")
    assert converters["concepts"](["a=x,b=y", "c=z"]) == ("a=x", "b=y", "c=z")
    assert converters["layers"](["blocks.5,blocks.10"]) == ("blocks.5", "blocks.10")
