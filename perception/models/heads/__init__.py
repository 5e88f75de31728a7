"""Task heads: each maps neck features to raw tensors (decoding lives in postprocess)."""

from perception.models.heads.depth import DepthHead
from perception.models.heads.detection import DetectionHead
from perception.models.heads.lane import LaneHead

__all__ = ["DepthHead", "DetectionHead", "LaneHead"]
