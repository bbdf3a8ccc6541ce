"""Layer 1, the networks: the three variants (variants.py: `--run` picks one through a plain dict),
their fusion blocks, encoders, objectives and pooling, the checkpoint format, and the Hugging Face
wrapper a shared model folder runs (hf_model.py, hf_pipeline.py). The modules import one another
relatively and nothing of the project, so this folder ships as it is inside such a folder."""
from .base import EmotionOutput, ModelConfig, SpeechEmotionModel
from .cai_sota import CaiSota
from .mmer import MMER
from .unimodal_baseline import UnimodalBaseline
from .variants import MODELS, build_model, model_class

__all__ = ["MODELS", "MMER", "CaiSota", "UnimodalBaseline", "ModelConfig", "EmotionOutput", "SpeechEmotionModel",
           "build_model", "model_class"]
