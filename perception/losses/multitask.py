"""The composite training criterion: three task losses and one combiner.

``MultiTaskLoss(outputs, batch, points, strides)`` is what the training module calls. It
reads raw ``HeadOutputs`` and the ``Batch`` targets only (never the model, never the
images) and returns the scalar to back-propagate plus unweighted parts for logging.
"""

from __future__ import annotations

import torch
from torch import nn

from perception.losses.combiners import (
    COMBINED_TASKS,
    COMBINERS,
    Combiner,
    FixedWeights,
    build_combiner,
)
from perception.losses.depth import DepthLoss
from perception.losses.detection import DetectionLoss
from perception.losses.segmentation import SegmentationLoss
from perception.losses.terms import TaskLoss
from perception.structures import Batch, HeadOutputs

__all__ = ["COMBINERS", "MultiTaskLoss", "build_combiner"]


class MultiTaskLoss(nn.Module):
    """Detection + segmentation (lane, drivable) + depth, combined by ``combiner``.

    Parts (all ``[]`` tensors; the caller adds the ``train/`` prefix):
    ``det_cls``, ``det_box``, ``lane_bce``, ``lane_dice``, ``drivable_bce``,
    ``drivable_dice`` (only with a drivable channel), ``depth_silog``, ``depth_grad`` —
    unweighted terms; ``det``, ``seg``, ``depth`` — per-task totals (within-task weights
    applied, combiner weights not); ``weight_det``, ``weight_seg``, ``weight_depth`` — the
    combiner's effective weights this step (detached).
    """

    def __init__(
        self,
        combiner: Combiner | None = None,
        *,
        detection: DetectionLoss | None = None,
        segmentation: SegmentationLoss | None = None,
        depth: DepthLoss | None = None,
    ) -> None:
        """Defaults: ``FixedWeights`` (all 1) and each task loss with its defaults."""
        super().__init__()
        self.combiner = combiner if combiner is not None else FixedWeights()
        if tuple(self.combiner.tasks) != COMBINED_TASKS:
            raise ValueError(f"combiner tasks {self.combiner.tasks} != {COMBINED_TASKS}")
        self.detection = detection or DetectionLoss()
        self.segmentation = segmentation or SegmentationLoss()
        self.depth = depth or DepthLoss()

    def forward(
        self, outputs: HeadOutputs, batch: Batch, points: torch.Tensor, strides: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and parts for one batch.

        Args:
            outputs: the model's raw outputs for ``batch``.
            batch: targets at network resolution (images are not read).
            points, strides: ``[A, 2]`` / ``[A]`` dense points of the detection head.

        Returns:
            ``(total, parts)``: ``total`` ``[]`` float32 to back-propagate; ``parts`` as in
            the class docstring.
        """
        tasks = self.task_losses(outputs, batch, points, strides)
        losses = {name: t.total for name, t in tasks.items()}
        present = {name: t.present for name, t in tasks.items()}
        total, weights = self.combiner(losses, present)
        parts: dict[str, torch.Tensor] = {}
        prefixes = {"det": "det_", "seg": "", "depth": "depth_"}  # seg terms are lane_/drivable_
        for name, task in tasks.items():
            parts.update({prefixes[name] + k: v for k, v in task.terms.items()})
            parts[name] = task.total
            parts[f"weight_{name}"] = weights[name]
        return total, parts

    def task_losses(
        self, outputs: HeadOutputs, batch: Batch, points: torch.Tensor, strides: torch.Tensor
    ) -> dict[str, TaskLoss]:
        """Each task's ``TaskLoss`` (``COMBINED_TASKS`` keys), before combining."""
        return {
            "det": self.detection(
                outputs.cls_logits,
                outputs.box_dist,
                batch.boxes,
                batch.labels,
                batch.has_det,
                points,
                strides,
            ),
            "seg": self.segmentation(
                outputs.seg_logits,
                batch.lane,
                batch.drivable,
                batch.valid,
                batch.has_lane,
                batch.has_drivable,
            ),
            "depth": self.depth(outputs.depth_log, batch.depth, batch.valid, batch.has_depth),
        }
