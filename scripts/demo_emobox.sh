#!/bin/sh
# The whole chain on a corpus that is not IEMOCAP: a synthetic six-class corpus in EmoBox's layout
# (speakers but no sessions, no transcripts, 22.05 kHz, some stereo files) is imported, transcribed
# by a tiny random Whisper, embedded by the tiny RoBERTa, and mmer and both baselines are trained
# on EmoBox's own speaker-independent folds; then one comparison table and chart.
# Everything goes to data/emobox_demo/ (MMER_EMOBOX_DIR); the tiny encoders are the demo's.
set -e
cd "$(dirname "$0")/.."
. scripts/ensure_venv.sh
OUT=${MMER_EMOBOX_DIR:-data/emobox_demo}
MODELS=${MMER_DEMO_DIR:-data/demo}/models
"$PY" data_prep/make_tiny_models.py --out "$MODELS" --seed 0
"$PY" data_prep/make_synthetic_emobox.py --out "$OUT/emobox" --corpus synth6 --per_class 20 --speakers 4 --folds 4
"$PY" data_prep/import_emobox.py --emobox_dir "$OUT/emobox/data/synth6" --wav_root "$OUT/emobox" --out_dir "$OUT/prepared"
"$PY" data_prep/transcribe.py --csv "$OUT/prepared/corpus.csv" --asr "$MODELS/whisper"
"$PY" data_prep/extract_roberta.py --csv "$OUT/prepared/corpus.csv" --out_dir "$OUT/prepared/roberta" \
    --roberta "$MODELS/roberta" --text_column transcript
for run in unimodal_baseline cai_sota mmer; do
    "$PY" run.py --run "$run" --alpha 0.1 --csv_path "$OUT/prepared/corpus.csv" --data_path_audio "$OUT/prepared/audio" \
        --data_path_roberta "$OUT/prepared/roberta" --wav2vec2 "$MODELS/wav2vec2" \
        --epochs 10 --batch_size 8 --accum_grad 1 --learning_rate 1e-3 --seed 0 --save_path "$OUT/runs" --overwrite
done
"$PY" compare.py "$OUT/runs" --out "$OUT/runs/comparison"
echo "comparison: $OUT/runs/comparison/comparison.md"
