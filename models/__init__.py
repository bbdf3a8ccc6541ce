"""Layer 1, the networks: the three variants (variants.py: `--run` picks one through a plain dict),
their fusion blocks, encoders, objectives and pooling, the checkpoint format, and the Hugging Face
wrapper a shared model folder runs (hf_model.py, hf_pipeline.py). The modules import one another
relatively and nothing of the project, so this folder ships as it is inside such a folder.

The names below load on first use (PEP 562), so that `models.settings` and `models.errors`,
which need no torch, are read without it: run.py refuses a bad flag before torch loads."""
import importlib

_WHERE = {"EmotionOutput": "base", "SpeechEmotionModel": "base", "ModelConfig": "settings", "CaiSota": "cai_sota",
          "MMER": "mmer", "UnimodalBaseline": "unimodal_baseline", "MODELS": "variants", "build_model": "variants",
          "model_class": "variants", "Probe": "probe"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


__all__ = ["MODELS", "MMER", "CaiSota", "UnimodalBaseline", "ModelConfig", "EmotionOutput", "SpeechEmotionModel",
           "build_model", "model_class", "Probe"]
