"""Layer 3, inference: a trained run's recognizer (the Python API), long recordings in windows,
the ONNX export and runtime backend, the shared Hugging Face model folder (export and model
card), the HTTP service. Never imports `training`.

    from inference import EmotionRecognizer
"""
from inference.recognizer import EmotionRecognizer, PredictError, Prediction, UnusableInputs

__all__ = ["EmotionRecognizer", "PredictError", "Prediction", "UnusableInputs"]
