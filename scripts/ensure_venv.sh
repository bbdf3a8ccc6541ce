# Sourced by test.sh and best_run.sh (POSIX sh): makes sure ./.venv exists and
# holds requirements.txt, reinstalling only when requirements.txt changed.
# Set MMER_PYTHON to use another interpreter to create the venv (default python3).
venv_dir="${MMER_VENV:-.venv}"
if [ ! -x "$venv_dir/bin/python" ]; then
    echo "[setup] creating virtual environment in $venv_dir"
    "${MMER_PYTHON:-python3}" -m venv "$venv_dir" || { echo "[setup] could not create $venv_dir (is python3-venv installed?)" >&2; exit 1; }
fi
req_sum=$(cat requirements.txt requirements-nodeps.txt | cksum | cut -d' ' -f1)
if [ "$(cat "$venv_dir/.requirements.sum" 2>/dev/null)" != "$req_sum" ]; then
    echo "[setup] installing requirements.txt into $venv_dir"
    "$venv_dir/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1
    "$venv_dir/bin/python" -m pip install -q -r requirements.txt || { echo "[setup] pip install -r requirements.txt failed" >&2; exit 1; }
    "$venv_dir/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt || { echo "[setup] pip install --no-deps -r requirements-nodeps.txt failed" >&2; exit 1; }
    echo "$req_sum" > "$venv_dir/.requirements.sum"
fi
PY="$venv_dir/bin/python"
