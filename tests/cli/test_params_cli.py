"""Issue 23: the CLI restated every Params field by hand with a second copy of its default, and `featvis atlas`
re-declared the shared options and had lost --mean/--std/--labels/--input-size/--json and the dataset options."""

from __future__ import annotations

import dataclasses
import json

import pytest

import featvis as fv
from featvis.cli import main
from featvis.cli._params import _shown
from featvis.tasks import TASKS
from featvis.tasks.base import field_doc

COMMANDS = {"classify": "classify", "saliency": "saliency", "sanity": "sanity", "evaluate": "evaluate",
            "fool": "fool", "robustness": "robustness", "classvis": "classvis", "features": "features",
            "accentuate": "accentuate", "examples": "examples"}


@pytest.mark.parametrize("task", sorted(COMMANDS))
def test_every_declared_parameter_is_an_option_with_the_fields_own_default(task, capsys):
    cls = TASKS.get(task)
    assert main([COMMANDS[task], "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # help wraps lines
    declared = [f for f in dataclasses.fields(cls.Params) if field_doc(f) and field_doc(f).cli]
    assert declared, task
    for f in declared:
        doc = field_doc(f)
        flag = doc.flag or "--" + f.name.replace("_", "-")
        assert flag in text, (task, f.name)
        assert " ".join(doc.help.split())[:40] in text, (task, f.name)
        default = f.default
        if default not in (None, False, True, "", ()) and doc.show_default:
            assert f"[default: {_shown(default)}" in text.replace("; ", "]").replace("] ", "]"), (task, f.name)


def test_atlas_takes_the_shared_options_every_task_command_takes(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        (photos / f"{name}.jpg").write_bytes(fv.samples.path(name).read_bytes())
    labels = ",".join(f"class {i}" for i in range(1000))
    code = main(["atlas", "--layer", "blocks.15", "--channels", "0,1", "--steps", "2", "--size", "32", "-d",
                 str(photos), "--limit", "2", "-k", "1", "--mean", "0.498,0.498,0.498", "--std", "0.502,0.502,0.502",
                 "--labels", labels, "--json", "-o", str(tmp_path / "atlas"), "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    page = json.loads(out.out)["page"]
    assert page.endswith("index.html")
    examples = fv.read_run(tmp_path / "atlas" / "examples")
    assert examples.manifest["counts"]["items"] == 2  # --limit applied to the --dataset inputs
    assert examples.manifest["model"]["mean"] == pytest.approx([0.498] * 3)
