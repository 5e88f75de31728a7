"""Training criteria. Layered above ``structures``/``ops``; never imports models or data.

``assigners`` (pure, no-grad target assignment) · ``detection`` · ``segmentation`` ·
``depth`` · ``combiners`` (fixed / uncertainty / DWA) · ``multitask`` (the composite loss
the training module calls).
"""

from perception.losses.assigners import Assignment, TaskAlignedAssigner, pad_targets
from perception.losses.combiners import (
    COMBINERS,
    Combiner,
    DynamicWeightAverage,
    FixedWeights,
    UncertaintyWeights,
    build_combiner,
)
from perception.losses.depth import DepthLoss
from perception.losses.detection import DetectionLoss, varifocal_loss
from perception.losses.multitask import LossConfig, MultiTaskLoss, build_loss
from perception.losses.segmentation import SegmentationLoss
from perception.losses.terms import TaskLoss

__all__ = [
    "COMBINERS",
    "Assignment",
    "Combiner",
    "DepthLoss",
    "DetectionLoss",
    "DynamicWeightAverage",
    "FixedWeights",
    "LossConfig",
    "MultiTaskLoss",
    "SegmentationLoss",
    "TaskAlignedAssigner",
    "TaskLoss",
    "UncertaintyWeights",
    "build_combiner",
    "build_loss",
    "pad_targets",
    "varifocal_loss",
]
