"""The models users bring, end to end: real torchvision and timm architectures with weights the tests write.

These tests need torchvision and timm, which PyPI ships for a newer torch than the main suite's; they run in
.venv-integration (scripts/test_integration.sh) and are skipped, with the reason, anywhere they do not import.
Nothing is downloaded: each architecture is built with random weights (seeded; BatchNorm statistics estimated on
noise images, so activations have a trained network's scale), saved as a weights file, and loaded back through
featvis — by `weights=`, and by name from a torch-hub / Hugging Face cache the test fills with that file.

Every test item is marked `integration`; its duration lands in a model × feature table, printed at the end and
written to $FEATVIS_INTEGRATION_TABLE (markdown) when that is set.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

import pytest
import torch

from _cases import CASES, Built, Case, architecture, calibrate


def _why_not_importable(*modules: str) -> str | None:
    for name in modules:
        try:
            importlib.import_module(name)
        except (ImportError, OSError, RuntimeError, AttributeError) as e:  # a torchvision built for another torch
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return f"{name} does not import here ({type(e).__name__}: {first[:100]}); run scripts/test_integration.sh"
    return None


MISSING = _why_not_importable("torchvision", "timm")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.integration)
            if MISSING:
                item.add_marker(pytest.mark.skip(reason=MISSING))


@pytest.fixture(autouse=True)
def _threads():
    # More intra-op threads than free cores makes every parallel region wait for a descheduled thread (10x and
    # worse on a shared machine): FEATVIS_TEST_THREADS=1 there.
    torch.set_num_threads(int(os.environ.get("FEATVIS_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session", params=CASES, ids=[c.id for c in CASES])
def built(request, checkpoints) -> Built:
    import featvis as fv

    case: Case = request.param
    t0 = time.perf_counter()
    net = calibrate(architecture(case), case.size)
    path = checkpoints / f"{case.id}.{'safetensors' if case.id.startswith(('deit', 'vit_small')) else 'pt'}"
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    del net
    clf = fv.load_model(case.name, weights=path, input_size=case.size)
    return Built(case, clf, path, time.perf_counter() - t0)


# --- the model × feature table ---------------------------------------------------------------------------------

_ROWS: dict[str, dict[str, str]] = {}
_COLUMNS: list[str] = []
_SETUP: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if not report.nodeid.startswith("tests/integration/") or "[" not in report.nodeid or report.when == "teardown":
        return
    if report.when == "setup":
        _SETUP[report.nodeid] = report.duration  # building a model counts for the first test that needed it
        if report.passed:
            return
    test = report.nodeid.split("::")[-1].split("[")[0].removeprefix("test_")
    params = report.nodeid.split("[", 1)[1].rstrip("]").split("-", 1)
    model, feature = params[0], (params[1] if len(params) > 1 else test)
    if test == "snippet_runs":  # docs/own_model.md: one row
        model, feature = "docs/own_model.md", params[0]
    outcome = report.outcome if report.outcome != "passed" else dict(report.user_properties).get("outcome", "pass")
    took = report.duration + _SETUP.pop(report.nodeid, 0.0)
    if hasattr(report, "wasxfail"):
        outcome = "xfail"  # a known failure outside the models code, with its reason in the summary
    _ROWS.setdefault(model, {})[feature] = "skipped" if report.skipped and outcome != "xfail" \
        else f"{outcome} {took:.1f}s"
    if feature not in _COLUMNS:
        _COLUMNS.append(feature)


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    lines = ["| model | " + " | ".join(_COLUMNS) + " |", "|---" * (len(_COLUMNS) + 1) + "|"]
    for model, cells in _ROWS.items():
        lines.append(f"| {model} | " + " | ".join(cells.get(c, "") for c in _COLUMNS) + " |")
    table = "\n".join(lines)
    terminalreporter.write_sep("-", "integration: model × feature (outcome, seconds incl. building the model)")
    terminalreporter.write_line(table)
    out = os.environ.get("FEATVIS_INTEGRATION_TABLE")
    if out:
        Path(out).write_text(table + "\n")
