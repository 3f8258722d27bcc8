"""docs/own_model.md's snippets (the README's "Your own model" section) run as written, offline: the weights that
loading by name would download are put in torchvision's and the Hugging Face hub's caches first."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "own_model.md"
HEADING = "Your own model"


def snippets(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S)]


def section(text: str, heading: str) -> str:
    """The text under a markdown heading (any level), up to the next heading of the same or a higher level."""
    m = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, flags=re.M | re.I)
    if m is None:
        return ""
    level = len(m.group(1))
    rest = text[m.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return rest[:end.start()] if end else rest


DOC_SNIPPETS = snippets(DOC.read_text())


def test_readme_snippets_are_the_tested_ones():
    """README's "Your own model" section (when it has one) shows only snippets that docs/own_model.md has, so the
    README cannot drift from what runs here."""
    readme = section((ROOT / "README.md").read_text(), HEADING)
    if not readme:
        pytest.skip(f"README.md has no '{HEADING}' section yet")
    normalized = {s.strip() for s in DOC_SNIPPETS}
    for code in snippets(readme):
        assert code.strip() in normalized, f"README snippet not in docs/own_model.md (so not tested):\n{code}"


@pytest.fixture
def offline_caches(tmp_path, monkeypatch):
    """torchvision's resnet50 and timm's vit_small_patch16_224 weights in their caches (random, seeded)."""
    import huggingface_hub.constants
    import timm
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = torchvision.models.ResNet50_Weights.DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(), cached)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    repo = timm.models.get_pretrained_cfg("vit_small_patch16_224").hf_hub_id
    snapshot = tmp_path / "hf" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    save_file(timm.create_model("vit_small_patch16_224").state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("code", DOC_SNIPPETS, ids=[f"snippet{i}" for i in range(len(DOC_SNIPPETS))])
def test_snippet_runs(code, offline_caches, capsys):
    exec(compile(code, str(DOC), "exec"), {"__name__": "__snippet__"})
    assert os.getcwd() == str(offline_caches)
