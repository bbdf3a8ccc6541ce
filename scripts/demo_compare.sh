#!/bin/sh
# Train all three variants on the offline demo corpus (same flags as `sh best_run.sh`), and the
# two CTC variants at alpha 0.01 too, and write one comparison table (with 95 % intervals), the paired
# tests between every two runs (significance.md/.csv) and one bar chart:
# data/demo/compare/comparison.{md,csv,png}.
# With --assets, also refresh the README's pictures in assets/ from these runs (tracked files:
# only then does the command modify the repository).
set -e
cd "$(dirname "$0")/.."
case "${1:-}" in
    "") assets=no ;;
    --assets) assets=yes ;;
    *) echo "usage: sh scripts/demo_compare.sh [--assets]" >&2; exit 2 ;;
esac
. scripts/ensure_venv.sh
. scripts/demo_data.sh
for run in unimodal_baseline cai_sota mmer; do
    "$PY" run.py --run "$run" --alpha 0.1 $DEMO_FLAGS --save_path "$DEMO/compare" --overwrite
done
# The CTC variants again with a 10x smaller weight: the tiny random encoders learn no CTC in 10
# epochs, and at upstream's scale alpha 0.1 lets the CTC gradient swamp the emotion task.
for run in cai_sota mmer; do
    "$PY" run.py --run "$run" --alpha 0.01 $DEMO_FLAGS --save_path "$DEMO/compare_alpha0.01" --overwrite
done
"$PY" compare.py "$DEMO/compare" "$DEMO/compare_alpha0.01" --paired --out "$DEMO/compare"
if [ "$assets" = yes ]; then
    mkdir -p assets
    cp "$DEMO/compare/comparison.png" assets/demo_comparison.png
    cp "$DEMO/compare/mmer/confusion_matrix.png" assets/demo_mmer_confusion.png
    cp "$DEMO/compare/mmer/learning_curves.png" assets/demo_mmer_learning_curves.png
    echo "pictures copied to assets/"
fi
echo "comparison: $DEMO/compare/comparison.md"
