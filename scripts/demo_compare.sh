#!/bin/sh
# Train all three variants on the offline demo corpus (same flags as `sh best_run.sh`)
# and write one comparison table and bar chart: data/demo/compare/comparison.{md,csv,png}.
# Then refresh the README's pictures in assets/ from these runs.
set -e
cd "$(dirname "$0")/.."
. scripts/ensure_venv.sh
. scripts/demo_data.sh
for run in unimodal_baseline cai_sota mmer; do
    "$PY" run.py --run "$run" --alpha 0.1 $DEMO_FLAGS --save_path "$DEMO/compare" --overwrite
done
"$PY" -m utils.report "$DEMO/compare" --out "$DEMO/compare"
mkdir -p assets
cp "$DEMO/compare/comparison.png" assets/demo_comparison.png
cp "$DEMO/compare/mmer/confusion_matrix.png" assets/demo_mmer_confusion.png
[ -f "$DEMO/compare/mmer/learning_curves.png" ] && cp "$DEMO/compare/mmer/learning_curves.png" assets/demo_mmer_learning_curves.png
echo "comparison: $DEMO/compare/comparison.md (pictures copied to assets/)"
