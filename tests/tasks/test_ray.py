"""The Ray executor on a local Ray instance (num_cpus=2): the same bytes as the local executor, a killed worker
loses and duplicates nothing, and an interrupted driver resumes like the local executor."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import featvis as fv
from featvis.tasks import FoolTask, SaliencyTask, run_task
from featvis.tasks.results import read_batches

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
N_IMAGES = 40
SIZE = 64  # Lite0 at 64 px: every stage is exercised at a fraction of the cost


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def small():
    return fv.load_model("efficientnet-lite0", input_size=SIZE)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-in")
    names = fv.samples.names()
    for i in range(N_IMAGES):
        shutil.copy(fv.samples.path(names[i % len(names)]), folder / f"img{i:02d}.jpg")
    return folder


def tasks():
    return {"saliency": SaliencyTask(methods=("gradient", "smoothgrad"), metrics=True, metric_steps=4,
                                     options={"samples": 2}),
            "fool": FoolTask(method="pgd", target="random", options={"steps": 3, "random_start": True})}


def artifacts(folder: Path) -> dict[str, str]:
    skip = {"manifest.json", "results.json", ".featvis.lock"}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip and "records" not in p.parts}


def local(task, images, out, small):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker (1 CPU): float sums are then the same bit for bit
    try:
        return run_task(task, [images], out, clf=small, batch_size=4, seed=7)
    finally:
        torch.set_num_threads(threads)


def records_once(folder: Path) -> list[str]:
    keys = [r["key"] for f in sorted((folder / "records").glob("*.json"))
            for r in json.loads(f.read_text())["items"]]
    assert len(keys) == len(set(keys)), "an item was recorded twice"
    return keys


@pytest.mark.parametrize("name", ["saliency", "fool"])
def test_ray_equals_local_and_survives_a_killed_worker(cluster, small, images, tmp_path, name):
    from featvis.tasks.ray_executor import RayExecutor

    task = tasks()[name]
    base = local(task, images, tmp_path / "local", small)
    executor = RayExecutor(workers=2, cpus_per_worker=1)
    actors = executor.start(small)
    pids = ray.get([a.pid.remote() for a in actors])
    killed = []

    def kill_one(event):
        if event.kind == "batch" and not killed:  # the other batches are running or queued right now
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    run = run_task(task, [images], tmp_path / "ray", clf=small, executor=executor, batch_size=4, seed=7,
                   progress=kill_one)
    assert killed and len(run.items) == N_IMAGES and not run.failed
    assert sorted(records_once(tmp_path / "ray")) == sorted(r["key"] for r in base.items)
    assert not list((tmp_path / "ray").rglob("*.tmp"))
    assert artifacts(tmp_path / "ray") == artifacts(tmp_path / "local")  # identical bytes
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(run.items) == strip(base.items)
    assert run.manifest["executor"]["name"] == "ray" and sum(run.manifest["workers"].values()) == N_IMAGES


def test_interrupted_driver_resumes(cluster, small, images, tmp_path):
    task = tasks()["saliency"]
    seen = []

    def stop(event):
        if event.kind == "batch":
            seen.append(event.done)
            if len(seen) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_task(task, [images], tmp_path, clf=small, executor="ray", batch_size=4, seed=7, progress=stop)
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "interrupted"
    done, _, _ = read_batches(tmp_path)
    assert 8 <= len(done) < N_IMAGES
    events = []
    run = run_task(task, [images], tmp_path, clf=small, executor="ray", batch_size=4, seed=7,
                   progress=events.append)
    assert events[0].skipped == len(done) and run.manifest["counts"]["skipped"] == len(done)
    assert len(run.items) == N_IMAGES and sorted(records_once(tmp_path)) == sorted(r["key"] for r in run.items)


def test_wrapped_models_and_missing_ray_give_one_line(cluster, tmp_path, monkeypatch):
    from featvis.tasks.ray_executor import RayExecutor

    from _models import TinyConvNet

    tiny = fv.Classifier.wrap(TinyConvNet(), labels=list("abcd"), input_size=32)
    with pytest.raises(fv.FeatvisError, match="Classifier.wrap; save it"):
        RayExecutor().start(tiny)
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(fv.FeatvisError, match=r"pip install 'featvis\[ray\]'"):
        RayExecutor()
