"""Every Python example in README.md and TECHNIQUES.md runs as written.

Each fenced ```python block is executed on its own, in a fresh namespace, in
order; a block that needs a GPU must say so in its first line (``# needs: cuda``)
and is skipped where there is none.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("README.md", "TECHNIQUES.md")
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _examples():
    for page in PAGES:
        text = (ROOT / page).read_text()
        for i, match in enumerate(_BLOCK.finditer(text)):
            line = text[: match.start()].count("\n") + 1
            yield pytest.param(match.group(1), id=f"{page}:{line}", marks=_marks(match.group(1)))


def _marks(code: str):
    if code.startswith("# needs: cuda") and not torch.cuda.is_available():
        return [pytest.mark.skip(reason="the example needs a CUDA device")]
    return []


def test_the_pages_have_examples():
    counts = {page: len(_BLOCK.findall((ROOT / page).read_text())) for page in PAGES}
    assert all(n >= 3 for n in counts.values()), counts


@pytest.mark.parametrize("code", list(_examples()))
def test_example_runs(code, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # examples may warn on purpose (e.g. fallbacks)
        exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})
