import json

import pytest

import featvis as fv
from featvis.runs import Job, atomic_path, atomic_write_json, item_key


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-written")
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_job_resumes_and_refuses_other_params(tmp_path, clf):
    job = Job.open(tmp_path, "classify", {"k": 5}, clf=clf, seed=7)
    keys = [item_key(tmp_path / f"img{i}.png") for i in range(4)]
    assert job.pending(keys) == keys
    job.done(keys[0], {"ok": 1})
    job.done(keys[2], {"ok": 3})
    job.finish()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["model"]["weights_sha256"] == clf.weights_hash
    assert manifest["versions"]["torch"] and manifest["status"] == "done"
    again = Job.open(tmp_path, "classify", {"k": 5}, clf=clf)
    assert again.pending(keys) == [keys[1], keys[3]] and again.skipped == 2
    with pytest.raises(fv.FeatvisError, match="other parameters.*--overwrite"):
        Job.open(tmp_path, "classify", {"k": 3}, clf=clf)
    fresh = Job.open(tmp_path, "classify", {"k": 3}, clf=clf, overwrite=True)
    assert fresh.pending(keys) == keys


def test_item_keys_do_not_collide(tmp_path):
    a, b = tmp_path / "x" / "cat.jpg", tmp_path / "y" / "cat.jpg"
    assert item_key(a) != item_key(b) and item_key(a).startswith("cat-")
