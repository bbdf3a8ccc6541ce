"""The variants (and the frozen-encoder probe), picked by `--run` through a plain dict, and built around a speech encoder."""
from .base import ModelConfig, SpeechEmotionModel
from .cai_sota import CaiSota
from .encoders import load_speech_encoder
from .mmer import MMER
from .probe import Probe
from .unimodal_baseline import UnimodalBaseline

MODELS = {"mmer": MMER, "cai_sota": CaiSota, "unimodal_baseline": UnimodalBaseline, "probe": Probe}


def model_class(run: str) -> type[SpeechEmotionModel]:
    if run not in MODELS:
        raise ValueError(f"unknown --run {run!r}; choose one of {', '.join(MODELS)}")
    return MODELS[run]


def build_model(config: ModelConfig, pretrained: bool = True, encoder=None) -> SpeechEmotionModel:
    """Build a variant around the encoder at config.wav2vec2 (or a given encoder).
    pretrained=False skips the encoder's weights, for models about to load a checkpoint. A model
    on cached hidden states (config.ssl_states) gets no encoder unless one is given."""
    cls = model_class(config.run)
    if encoder is None and not config.ssl_states:
        encoder = load_speech_encoder(config.wav2vec2, pretrained=pretrained,
                                      specaugment=config.specaugment,
                                      attn_implementation=config.attn_implementation)
    return cls(config, encoder)
