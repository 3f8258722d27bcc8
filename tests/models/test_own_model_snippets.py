"""docs/own_model.md's snippets that need neither torchvision nor timm run in the main suite too (all of them run
in tests/integration/test_own_model_docs.py)."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "own_model.md"
CODE = [m.group(1) for m in re.finditer(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)]
PLAIN = [c for c in CODE if not re.search(r"torchvision|timm", c)]


def test_docs_have_plain_snippets():
    assert len(CODE) >= 4 and PLAIN


@pytest.mark.parametrize("code", PLAIN, ids=[f"snippet{CODE.index(c)}" for c in PLAIN])
def test_plain_snippet_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {"__name__": "__snippet__"})
