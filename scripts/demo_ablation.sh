#!/bin/sh
# From the 2022 MMER to the 2023 one on the offline demo corpus: mmer in the 2022 configuration,
# + the supervised contrastive loss, + the augmentation contrastive loss, and the 2023
# configuration in full (--preset mmer2023: both losses, max pooling, audio cut, views), each with
# seeds 0 1 2 (SEEDS) on all five folds and the demo's schedule (10 epochs, batch 8, lr 1e-3);
# one table over the seeds: data/demo/ablation/comparison/seeds.md.
set -e
cd "$(dirname "$0")/.."
. scripts/ensure_venv.sh
. scripts/demo_data.sh
OUT=$DEMO/ablation
for seed in ${SEEDS:-0 1 2}; do
    "$PY" run.py --run mmer --alpha 0.1 $DEMO_FLAGS --seed "$seed" --save_path "$OUT/2022/seed$seed" --overwrite
    "$PY" run.py --run mmer --alpha 0.1 --supcon_weight 0.1 $DEMO_FLAGS --seed "$seed" \
        --save_path "$OUT/supcon/seed$seed" --overwrite
    "$PY" run.py --run mmer --alpha 0.1 --aug_weight 0.1 $DEMO_FLAGS --seed "$seed" \
        --save_path "$OUT/aug/seed$seed" --overwrite
    "$PY" run.py --preset mmer2023 $DEMO_FLAGS --seed "$seed" --save_path "$OUT/2023/seed$seed" --overwrite
done
"$PY" compare.py "$OUT/2022" "$OUT/supcon" "$OUT/aug" "$OUT/2023" --over_seeds --out "$OUT/comparison"
echo "ablation: $OUT/comparison/seeds.md"
