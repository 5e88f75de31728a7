"""perception: multi-task driving-scene perception (detection, lanes, metric depth).

Public API only. Names are imported on first use (PEP 562), so ``import perception`` and
``perception --help`` stay instant and torch loads only when a model is needed.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Predictor": "perception.inference.predictor",
    "Prediction": "perception.structures",
    "build_model": "perception.models",
    "load_model": "perception.checkpoints",
    "ModelConfig": "perception.models",
}
__all__ = ["ModelConfig", "Prediction", "Predictor", "__version__", "build_model", "load_model"]

if TYPE_CHECKING:
    from perception.checkpoints import load_model
    from perception.inference.predictor import Predictor
    from perception.models import ModelConfig, build_model
    from perception.structures import Prediction


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'perception' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
