"""Layer 3, inference: a trained run's recognizer (the Python API), long recordings in windows,
the ONNX runtime backend. Never imports `training`.

    from inference import EmotionRecognizer
"""
from inference.recognizer import EmotionRecognizer, PredictError, Prediction

__all__ = ["EmotionRecognizer", "PredictError", "Prediction"]
