"""The saliency task's file names are safe on every file system and in zip archives: parametric methods
(smooth:gradient) and unit targets (layer:conv2:2) put no ':' (nor any other character Windows refuses) in them."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

import featvis as fv
from featvis.tasks import SaliencyTask, run_task
from featvis.tasks.saliency import file_stems

from _models import TinyConvNet, noise_photos

WINDOWS_REFUSES = set('<>:"\\|?*')


@pytest.fixture(scope="module")
def tiny():
    return fv.Classifier.wrap(TinyConvNet(), labels=list("abcd"), input_size=32)


def test_file_stems_replace_colons_and_stay_unique():
    stems = file_stems(["smooth:integrated-gradients", "gradcam++", "smooth~integrated-gradients", "a/b?"])
    assert stems == {"smooth:integrated-gradients": "smooth~integrated-gradients", "gradcam++": "gradcam++",
                     "smooth~integrated-gradients": "smooth~integrated-gradients-2", "a/b?": "a_b_"}


@pytest.mark.parametrize("target", [None, "layer:conv2:2"])
def test_saliency_files_have_safe_names_and_survive_a_zip(tiny, tmp_path, target):
    (tmp_path / "photos").mkdir()
    photos = noise_photos(tmp_path / "photos", 2)
    task = SaliencyTask(methods=("smooth:gradient", "gradient"), target=target, overlays=True,
                        options={"samples": 2})
    run = run_task(task, [photos], tmp_path / "run", clf=tiny, batch_size=2)
    written = [p.relative_to(run.folder) for p in Path(run.folder).rglob("*") if p.is_file()]
    assert not [p for p in written if WINDOWS_REFUSES & set(str(p.as_posix()).replace("/", ""))]
    for rec in run.items:
        assert set(rec["maps"]) == {"smooth:gradient", "gradient"}  # the records keep the method names
        assert rec["maps"]["smooth:gradient"].endswith("/smooth~gradient.npy")
        for key in ("maps", "heatmaps", "overlays"):
            assert all((Path(run.folder) / f).is_file() for f in rec[key].values())
    archive = tmp_path / "run.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in written:
            z.write(Path(run.folder) / p, p.as_posix())
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "unzipped")  # zipfile turns ':' into '_' here on Windows: names must not need it
    rec = run.items[0]
    for name, rel in rec["maps"].items():
        back = np.load(tmp_path / "unzipped" / rel)
        assert np.array_equal(back, np.load(Path(run.folder) / rel)), name
    smooth, plain = (np.load(Path(run.folder) / rec["maps"][n]) for n in ("smooth:gradient", "gradient"))
    assert not np.allclose(smooth, plain)  # two maps, not one written twice
