#!/usr/bin/env bash
# Drift check: installs the newest versions setup.py allows into a throw-away virtual environment,
# runs the test suite there, and lists every package whose version differs from constraints.txt.
# Usage: tools/check_latest.sh [VENV_DIR]   (default: a temporary folder, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-$(mktemp -d)/venv}"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --upgrade pip
./install.sh --latest
echo "== versions that differ from constraints.txt (pinned -> installed):"
python - <<'PY'
import re, subprocess
pinned = {}
for line in open("constraints.txt"):
    m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
    if m:
        pinned[m[1].lower().replace("_", "-")] = m[2]
out = subprocess.run(["python", "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True).stdout
for line in out.splitlines():
    m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
    if m:
        name = m[1].lower().replace("_", "-")
        if pinned.get(name) != m[2]:
            print(f"  {name}: {pinned.get(name, '(not pinned)')} -> {m[2]}")
PY
pytest
