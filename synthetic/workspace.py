"""The benches' synthetic workspace under data/bench/: a synthetic IEMOCAP-format corpus with
IEMOCAP's durations and its tiny-RoBERTa features, the tiny and base-size encoders with random
weights, one-fold runs of random models, and voiced-sounding test clips; each built once."""
import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch

from dataio.audio import TARGET_SR as SR

BENCH_DIR = Path(__file__).resolve().parents[1] / "data" / "bench"
# The random runs' folder: bench/onnx_rtf.py made them first, and the name is kept so that a
# workspace built before keeps serving bench/onnx_rtf.py and bench/long_recording.py.
RANDOM_RUNS = BENCH_DIR / "onnx_rtf"


# ---------------------------------------------------------------- the corpus and the tiny encoders
def tiny_encoders(bench_dir: Path = BENCH_DIR) -> dict:
    """The tiny encoders (synthetic/tiny_models.py), made once under <bench_dir>/models/tiny:
    {"models", "tiny_wav2vec2", "tiny_roberta"}, the paths the other builders take."""
    from synthetic.tiny_models import make_tiny_models

    models_dir = Path(bench_dir) / "models"
    paths = {"models": models_dir, "tiny_wav2vec2": models_dir / "tiny" / "wav2vec2",
             "tiny_roberta": models_dir / "tiny" / "roberta"}
    if not paths["tiny_wav2vec2"].is_dir():
        make_tiny_models(models_dir / "tiny", seed=0)
    return paths


def prepare_bench_corpus(per_session: int, seed: int = 0, bench_dir: Path = BENCH_DIR) -> dict:
    """Synthetic IEMOCAP-format release with IEMOCAP's durations -> csv + audio -> tiny
    RoBERTa features, plus the tiny encoders; every step skips work already done."""
    from dataio.iemocap import prepare
    from dataio.text_features import extract
    from synthetic.iemocap import make_corpus

    corpus_dir = Path(bench_dir) / f"iemocap-durations-{per_session}-seed{seed}"
    paths = {"csv": corpus_dir / "prepared" / "iemocap.csv", "audio": corpus_dir / "prepared" / "audio",
             "roberta": corpus_dir / "prepared" / "roberta-tiny", **tiny_encoders(bench_dir)}
    # The synthetic corpus's class and session counts differ from IEMOCAP's by design; the
    # preparation's loud warning about that says nothing here.
    quiet = logging.getLogger(prepare.__module__)
    level, quiet.level = quiet.level, logging.ERROR
    try:
        if not paths["csv"].is_file():
            with contextlib.redirect_stderr(io.StringIO()):  # progress bars
                make_corpus(corpus_dir / "release", per_session=per_session, seed=seed, durations="iemocap")
            prepare(corpus_dir / "release", corpus_dir / "prepared", link=True)
    finally:
        quiet.level = level
    extract(paths["csv"], paths["roberta"], roberta=str(paths["tiny_roberta"]), batch_size=32, device="cpu")
    return paths


def random_text_features(paths: dict, dim: int = 768, seed: int = 0) -> Path:
    """RoBERTa-base-sized stand-ins: random [1, T, dim] arrays with the token counts of the
    tiny RoBERTa's features (only their shapes matter for speed)."""
    from dataio.dataset import read_text_feature

    out = paths["roberta"].parent / f"roberta-random-{dim}"
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for source in sorted(paths["roberta"].glob("*.npy")):
        target = out / source.name
        if not target.exists():
            tokens = read_text_feature(source).shape[0]
            np.save(target, rng.standard_normal((1, tokens, dim), dtype=np.float32))
    return out


# ---------------------------------------------------------------- encoders with random weights
def speech_encoder_dir(paths: dict, size: str, norm: str = "group") -> Path:
    """The speech encoder the benches load, with random weights, saved like the real ones so
    that it loads through the project's own loader: tiny (synthetic/tiny_models.py) or
    wav2vec2-base-sized (its default config). norm="layer": the same sizes with a layer-norm
    feature encoder (wav2vec2-large-lv60's architecture choice), whose output
    --cache_conv_features may cache."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from synthetic.tiny_models import save_speech_encoder, tiny_speech_encoder

    if size == "tiny" and norm == "group":
        return paths["tiny_wav2vec2"]
    path = paths["models"] / f"wav2vec2-{size}-random{'-layer-norm' if norm == 'layer' else ''}"
    if not (path / "preprocessor_config.json").is_file():
        layer = dict(feat_extract_norm="layer", do_stable_layer_norm=True) if norm == "layer" else {}
        torch.manual_seed(0)
        encoder = (tiny_speech_encoder("wav2vec2", **layer) if size == "tiny"
                   else Wav2Vec2Model(Wav2Vec2Config(**layer)))
        save_speech_encoder(encoder, path)
    return path


def base_roberta_dir(paths: dict) -> Path:
    """A RoBERTa-base-sized text encoder with random weights and the tiny tokenizer, for the
    prediction path that embeds transcripts on the fly."""
    from transformers import AutoTokenizer, RobertaModel

    from synthetic.tiny_models import tiny_roberta_config

    path = paths["models"] / "roberta-base-random"
    if not (path / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(paths["tiny_roberta"])
        torch.manual_seed(0)
        config = tiny_roberta_config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=3072, max_position_embeddings=514, vocab_size=len(tokenizer))
        RobertaModel(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def encoders(size: str, bench_dir: Path = BENCH_DIR) -> tuple[Path, Path]:
    """The speech and text encoders of a random run: tiny, or base-size with random weights."""
    paths = tiny_encoders(bench_dir)
    speech = speech_encoder_dir(paths, size)
    return speech, (paths["tiny_roberta"] if size == "tiny" else base_roberta_dir(paths))


# ---------------------------------------------------------------- a run of a random model, and clips
def random_run(size: str, run: str, folder: Path = RANDOM_RUNS) -> Path:
    """A one-fold run folder of `run` on the `size` encoders, random weights (seed 0): its
    checkpoint 1_model.pt and a config.json naming the text encoder, as run.py writes them for
    inference.EmotionRecognizer.from_run and export.py; made once, as <folder>/<size>-<run>."""
    from models import ModelConfig, build_model
    from models.checkpoint import save_checkpoint

    run_dir = Path(folder) / f"{size}-{run}"
    speech, roberta = encoders(size)
    if not (run_dir / "1_model.pt").is_file():
        torch.manual_seed(0)
        text_dim = json.loads((Path(roberta) / "config.json").read_text())["hidden_size"]
        model = build_model(ModelConfig(run=run, wav2vec2=str(speech), text_dim=text_dim)).eval()
        save_checkpoint(run_dir / "1_model.pt", model, model_config=model.config.to_dict(), session=1, epoch=0)
        (run_dir / "config.json").write_text(json.dumps({"run": {"roberta": str(roberta)}}))
    return run_dir


def clips(n: int, shortest: float, longest: float, seed: int = 0) -> list[np.ndarray]:
    """n voiced-sounding clips with durations spread evenly over [shortest, longest] seconds."""
    rng = np.random.default_rng(seed)
    out = []
    for seconds in np.linspace(shortest, longest, n):
        t = np.arange(int(seconds * SR)) / SR
        pitch = rng.uniform(120, 280)
        voiced = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in range(1, 12))
        out.append((0.2 * (1 + 0.5 * np.sin(2 * np.pi * 1.7 * t)) * voiced / 3
                    + 0.01 * rng.standard_normal(len(t))).astype(np.float32))
    return out
