"""Every Python block of README.md runs as written (issue 11, item 2).

Each fenced ```python block is run in a fresh interpreter, in an empty folder, with the environment
variables the README documents for small sizes (``LB_README_PROBES``). A block may be skipped only
when the README marks it, on the line before the fence, with
``<!-- readme-test: skip (reason) -->``, and only for a file the user brings.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<why>[^)]*)\)\s*-->\s*$")
ENV = {"LB_README_PROBES": "3000"}


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line number of the fence, code, skip reason or None) for each ```python block."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if j == len(lines):
                raise AssertionError(f"README.md:{start + 1}: ```python block is never closed")
            prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            m = SKIP.search(prev.strip())
            blocks.append((start + 1, "\n".join(lines[start + 1:j]) + "\n", m["why"] if m else None))
            i = j + 1
        else:
            i += 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_parser_finds_blocks_and_markers():
    text = "a\n```python\nx = 1\n```\n<!-- readme-test: skip (needs a file the user brings) -->\n```python\ny\n```\n"
    got = python_blocks(text)
    assert [(n, why) for n, _, why in got] == [(2, None), (6, "needs a file the user brings")]
    assert got[0][1] == "x = 1\n"
    # the README has runnable blocks, and only blocks that need a user's file are skipped
    assert sum(why is None for *_, why in BLOCKS) >= 3
    for n, _, why in BLOCKS:
        assert why is None or "user brings" in why, f"README.md:{n}: only blocks needing a user's file may be skipped"


@pytest.mark.parametrize("line,code,skip", BLOCKS, ids=[f"README.md:{n}" for n, _, _ in BLOCKS])
def test_readme_block_runs(line, code, skip, tmp_path):
    if skip:
        pytest.skip(f"README.md:{line}: {skip}")
    env = {**os.environ, **ENV}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"README.md:{line} failed:\n{code}\n--- stderr ---\n{proc.stderr[-4000:]}"


def test_readme_states_the_pinned_versions():
    """The README names the versions its figures come from, and they are the ones constraints.txt pins."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- versions -->\n(.*?)\n<!-- /versions -->", text, re.S)
    assert m, "README.md lacks the <!-- versions --> line"
    stated = dict(item.strip().rsplit(" ", 1) for item in m[1].replace("\n", " ").split(",") if item.strip())
    pinned = {}
    for line in (README.parent / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.strip().lower().replace("_", "-")] = version.strip()
    assert {"torch", "numpy", "scipy", "scikit-learn", "onnxruntime"} <= set(stated)
    for name, version in stated.items():
        assert pinned.get(name.lower()) == version, f"README says {name} {version}, constraints.txt pins {pinned.get(name.lower())}"
    # and install.sh installs with those constraints
    assert "-c constraints.txt" in (README.parent / "install.sh").read_text()
