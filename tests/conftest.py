"""Shared fixtures: a small offline demo (synthetic release -> csv + audio -> RoBERTa
features, tiny encoders), built once per test worker through the real data_prep code."""
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from dataio.text_features import extract
from dataio.iemocap import prepare
from synthetic.iemocap import make_corpus
from synthetic.tiny_models import make_tiny_models


@dataclass
class Demo:
    root: Path
    csv: Path
    audio: Path
    roberta: Path
    wav2vec2_model: Path
    roberta_model: Path
    whisper_model: Path

    def flags(self, **overrides) -> list[str]:
        """run.py flags for a quick run on this corpus; overrides as flag=value (None drops it)."""
        values = {"csv_path": self.csv, "data_path_audio": self.audio, "data_path_roberta": self.roberta,
                  "wav2vec2": self.wav2vec2_model, "roberta": self.roberta_model, "epochs": 2,
                  "batch_size": 4, "accum_grad": 2, "learning_rate": 5e-4, "seed": 0, "device": "cpu",
                  "precision": "fp32", "sessions": "1 2", "log_every": 5}
        values.update(overrides)
        argv = []
        for key, value in values.items():
            if value is True:
                argv.append(f"--{key}")
            elif value is not None and value is not False:
                argv += [f"--{key}", *str(value).split()]
        return argv


def build_demo(root: Path, per_session: int = 6, seed: int = 0) -> Demo:
    models = make_tiny_models(root / "models", seed=seed)
    make_corpus(root / "release", per_session=per_session, seed=seed)
    prepared = root / "prepared"
    logging.disable(logging.WARNING)  # the synthetic corpus's counts differ from IEMOCAP's, by design
    try:
        prepare(root / "release", prepared, link=True)
    finally:
        logging.disable(logging.NOTSET)
    extract(prepared / "iemocap.csv", prepared / "roberta", roberta=models["roberta"], device="cpu")
    return Demo(root, prepared / "iemocap.csv", prepared / "audio", prepared / "roberta",
                models["wav2vec2"], models["roberta"], models["whisper"])


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Demo:
    return build_demo(tmp_path_factory.mktemp("demo"))
