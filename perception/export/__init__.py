"""ONNX export: ``export_onnx`` -> ``verify_onnx`` against eager PyTorch, fp16 and INT8.

Runs without Lightning (ARCHITECTURE: ``export`` never imports ``perception.training``).
"""

from perception.export.onnx import (
    ExportWrapper,
    NMSConfig,
    export_onnx,
    format_differences,
    read_metadata,
    verify_onnx,
)
from perception.export.quantize import quantize_int8

__all__ = [
    "ExportWrapper",
    "NMSConfig",
    "export_onnx",
    "format_differences",
    "quantize_int8",
    "read_metadata",
    "verify_onnx",
]
