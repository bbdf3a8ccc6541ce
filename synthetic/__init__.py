"""The offline demo's material, beside training and inference: synthetic corpora in IEMOCAP's
and EmoBox's release layouts, spoken by a small vocoder, and tiny random models saved like the
real ones (wav2vec2, RoBERTa, Whisper). Used by best_run.sh, the tests and the benches."""
