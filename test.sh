#!/bin/sh
# The project's test command: installs requirements into ./.venv, then runs pytest.
# Extra arguments go to pytest (e.g. `sh test.sh -k masking`).
set -e
cd "$(dirname "$0")"
. scripts/ensure_venv.sh
exec "$PY" -m pytest -q -n 2 "$@"
