"""Inference: ``Predictor`` turns images into ``Prediction``s with torch or onnxruntime."""

from perception.inference.inputs import InputError
from perception.inference.predictor import Predictor

__all__ = ["InputError", "Predictor"]
