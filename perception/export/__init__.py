"""ONNX export: ``export_onnx`` -> ``verify_onnx`` against eager PyTorch, fp16 and INT8.

Runs without Lightning (ARCHITECTURE: ``export`` never imports ``perception.training``).
"""

from perception.export.onnx import ExportWrapper, NMSConfig, export_onnx, read_metadata
from perception.export.quantize import quantize_int8
from perception.export.verify import format_differences, verify_onnx

__all__ = [
    "ExportWrapper",
    "NMSConfig",
    "export_onnx",
    "format_differences",
    "quantize_int8",
    "read_metadata",
    "verify_onnx",
]
