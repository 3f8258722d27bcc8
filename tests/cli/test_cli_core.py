import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import featvis as fv
from featvis.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"featvis {fv.__version__}"


@pytest.mark.slow
def test_classify_bundled_photos_json(capsys):
    paths = [str(fv.samples.path(n)) for n in ("chelsea", "coffee", "grace_hopper")]
    code, out, _ = run(capsys, "classify", *paths, "--json", "-k", "3", "--device", "cpu")
    assert code == 0
    results = {os.path.basename(r["input"]): r["predictions"] for r in json.loads(out)["items"]}
    assert 281 <= results["chelsea.jpg"][0]["index"] <= 285
    assert results["coffee.jpg"][0]["index"] == 967
    assert results["grace_hopper.jpg"][0]["index"] == 652
    assert len(results["coffee.jpg"]) == 3


def test_layers_and_models_json(capsys):
    code, out, _ = run(capsys, "layers", "--filter", "blocks.15", "--json")
    data = json.loads(out)
    assert code == 0 and data["default_layer"] == "bn1"  # the name users type (issue 22: one name everywhere)
    assert {"name": "blocks.15", "module": "_blocks.15", "type": "MBConvBlock", "shape": [320, 7, 7],
            "calls": 1}.items() <= next(layer for layer in data["layers"] if layer["name"] == "blocks.15").items()
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0 and any(m["name"] == "efficientnet-lite0" and m["installed"] for m in json.loads(out))


def test_attacks_listing_shows_defaults_that_depend_on_the_mode(capsys):
    """cw's steps / lr / search_steps default to None in its signature and are chosen by mode: the listing shows
    the values cw runs with, not None."""
    from featvis.adversarial.cw import DEFAULTS

    assert main(["attacks", "--json"]) == 0
    cw = {a["name"]: a for a in json.loads(capsys.readouterr().out)}["cw"]["options"]
    for name in ("steps", "lr", "search_steps"):
        assert cw[name]["default_by_mode"] == {m: DEFAULTS[m][name] for m in ("targeted", "untargeted")}
    assert "default_by_mode" not in cw["c"]
    assert main(["attacks"]) == 0
    table = re.sub(r"[\s│]+", " ", capsys.readouterr().out)
    assert "steps=10 targeted/8 untargeted" in table and "steps=None" not in table


@pytest.mark.parametrize("argv,match", [
    (["classify", "/no/such.jpg"], "does not exist"),
    (["classify", "CHELSEA", "--model", "efficientnet-lite7"], "unknown model 'efficientnet-lite7'"),
    (["layers", "--model", "resnet"], "unknown model 'resnet'"),
    (["classify", "CHELSEA", "--device", "cuda:0"], "CUDA is not available|unknown device"),
])
def test_errors_are_one_line(capsys, argv, match):
    argv = [str(fv.samples.path("chelsea")) if a == "CHELSEA" else a for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(match, err), err


def test_bad_file_in_batch_is_skipped_not_fatal(capsys, tmp_path):
    shutil.copy(fv.samples.path("coffee"), tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    code, out, _ = run(capsys, "classify", str(tmp_path), "--json", "-o", str(tmp_path / "out"))
    data = json.loads(out)
    assert code == 1 and data["items"][0]["predictions"][0]["index"] == 967
    assert data["failed"][0]["input"].endswith("b.jpg") and "not an image" in data["failed"][0]["error"]


@pytest.mark.slow
def test_interrupted_batch_resumes_without_redoing(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    n = 480  # enough that the run is still going when the signal lands (classify does ~80 images/s here)
    for i in range(n):
        photo, dst = fv.samples.path(fv.samples.names()[i % 6]), src / f"img{i:03d}.jpg"
        try:
            os.link(photo, dst)
        except OSError:  # another file system
            shutil.copy(photo, dst)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "featvis.cli", "classify", str(src), "-o", str(out), "--json", "--batch-size", "2",
           "--device", "cpu"]
    # SIGINT at its default in the child: a test run started as a background job inherits it ignored, and Python
    # only turns SIGINT into KeyboardInterrupt when it starts at the default
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    batches = out / "records"  # one record file per finished batch of 2
    deadline = time.time() + 60
    while time.time() < deadline and (not batches.exists() or len(list(batches.glob("*.json"))) < 2):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"rerun the same command to resume" in err
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    done = {p.name: p.stat().st_mtime_ns for p in batches.glob("*.json")}
    assert 2 <= len(done) < n // 2, len(done)
    assert not list(out.rglob("*.tmp"))
    result = subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    data = json.loads(result.stdout)
    assert data["counts"]["skipped"] == 2 * len(done) and len(data["items"]) == n
    for name, mtime in done.items():  # finished batches were not redone
        assert (batches / name).stat().st_mtime_ns == mtime
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["counts"]["skipped"] == 2 * len(done)
