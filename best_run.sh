#!/bin/sh
# The paper's best configuration: MMER with alpha 0.1, all five folds.
#   sh best_run.sh AUDIO_DIR ROBERTA_DIR IEMOCAP_CSV SAVE_DIR [more run.py flags]
# With no arguments: the same pipeline end to end on the offline demo (synthetic
# IEMOCAP-format corpus, tiny random encoders), results in data/demo/runs/mmer/.
set -e
cd "$(dirname "$0")"
. scripts/ensure_venv.sh

if [ "$#" -ge 4 ]; then
    audio=$1 roberta=$2 csv=$3 save=$4
    shift 4
    exec "$PY" run.py --run mmer --alpha 0.1 --data_path_audio "$audio" --data_path_roberta "$roberta" \
        --csv_path "$csv" --save_path "$save" "$@"
fi
if [ "$#" -ne 0 ]; then
    echo "usage: sh best_run.sh AUDIO_DIR ROBERTA_DIR IEMOCAP_CSV SAVE_DIR [run.py flags]" >&2
    echo "       sh best_run.sh            (offline demo)" >&2
    exit 2
fi

. scripts/demo_data.sh
"$PY" run.py --run mmer --alpha 0.1 $DEMO_FLAGS --save_path "$DEMO/runs" --overwrite
