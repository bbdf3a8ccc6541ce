# Sourced (POSIX sh) after ensure_venv.sh: builds the offline demo once, in data/demo/:
# a synthetic IEMOCAP-format release, tiny random encoders, the prepared csv + audio,
# and RoBERTa features. Each step skips work already done. Sets DEMO and DEMO_FLAGS.
DEMO=${MMER_DEMO_DIR:-data/demo}
"$PY" data_prep/make_synthetic_iemocap.py --out "$DEMO/release" --per_session 100 --seed 0
"$PY" data_prep/make_tiny_models.py --out "$DEMO/models" --seed 0
"$PY" data_prep/iemocap_prep.py --iemocap_root "$DEMO/release" --out_dir "$DEMO/prepared" --link
"$PY" data_prep/extract_roberta.py --csv "$DEMO/prepared/iemocap.csv" --out_dir "$DEMO/prepared/roberta" \
    --roberta "$DEMO/models/roberta"
# Tiny encoders start from random weights, so the demo trains faster than the paper's
# fine-tuning recipe (higher learning rate, fewer epochs); everything else is the same.
DEMO_FLAGS="--csv_path $DEMO/prepared/iemocap.csv --data_path_audio $DEMO/prepared/audio \
 --data_path_roberta $DEMO/prepared/roberta --wav2vec2 $DEMO/models/wav2vec2 --roberta $DEMO/models/roberta \
 --epochs 10 --batch_size 8 --accum_grad 1 --learning_rate 1e-3 --seed 0"
