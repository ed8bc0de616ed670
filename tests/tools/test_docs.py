"""Every Python example in README.md and TECHNIQUES.md runs as written.

Each fenced ```python block is executed on its own, in a fresh namespace, in
order; a block that needs a GPU must say so in its first line (``# needs: cuda``)
and is skipped where there is none. A ```python torchrun block is a script for
``torchrun`` (its first line ``# name.py``): it runs as ``torchrun --standalone
--nproc-per-node 2``, on CPU processes joined by gloo.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("README.md", "TECHNIQUES.md")
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_TORCHRUN_BLOCK = re.compile(r"^```python torchrun\n(.*?)^```", re.S | re.M)


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


def _torchrun_examples():
    text = (ROOT / "README.md").read_text()
    for match in _TORCHRUN_BLOCK.finditer(text):
        name = match.group(1).splitlines()[0].lstrip("# ").strip()
        yield pytest.param(name, match.group(1), id=name)


def test_the_readme_has_torchrun_examples():
    assert len(list(_torchrun_examples())) >= 3


@pytest.mark.parametrize("name, code", list(_torchrun_examples()))
def test_torchrun_example_runs(name, code, tmp_path):
    if "import transformers" in code:
        pytest.importorskip("transformers")
    script = tmp_path / name
    script.write_text(code)
    # --standalone: a local rendezvous on a free port that torchrun picks itself.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
