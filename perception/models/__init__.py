"""Models: timm backbone -> PAFPN neck -> detection, lane/drivable and depth heads."""

from perception.models.model import ModelConfig, MultiTaskModel, build_model

__all__ = ["ModelConfig", "MultiTaskModel", "build_model"]
