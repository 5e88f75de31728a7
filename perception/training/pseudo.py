"""Depth pseudo-labels from the EMA model, for the images of a mix that have no depth.

When datasets label only some tasks (BDD100K: no depth; KITTI: no lanes), the depth head
learns from the depth-labeled images alone while the backbone sees all of them. Here the
EMA weights (the teacher) predict depth on each depth-less image of the batch, and the
live model is trained towards that prediction with the labeled images' own depth loss
(``DepthLoss.log_error`` on ``student - teacher`` log depth), at a weight that ramps in
once the teacher has learned something (mean-teacher self-training, Tarvainen & Valpola
2017). An image that has depth labels is never pseudo-labeled, so on fully labeled data
this changes nothing.

Both predictions are for the same image and camera, so their log difference is already in
the canonical space the depth head predicts in; no camera is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from perception.errors import PerceptionError
from perception.losses.depth import DepthLoss
from perception.losses.terms import TaskLoss


@dataclass
class PseudoLabelConfig:
    """The ``model.pseudo_labels`` section of a training YAML (off by default).

    Attributes:
        depth_weight: weight of the pseudo-label depth loss relative to the labeled one,
            once ramped in (0 = off).
        start: optimizer step at which the ramp starts: before it the teacher is close to
            the random initialisation and its depth is noise.
        ramp: steps over which the weight grows linearly from 0 to ``depth_weight``.
    """

    depth_weight: float = 0.0
    start: int = 0
    ramp: int = 0

    def __post_init__(self) -> None:
        if self.depth_weight < 0 or self.start < 0 or self.ramp < 0:
            raise PerceptionError(
                f"model.pseudo_labels: depth_weight, start and ramp must be >= 0, got {self}"
            )

    def weight(self, step: int) -> float:
        """The depth pseudo-label weight at optimizer step ``step``."""
        if self.depth_weight == 0 or step < self.start:
            return 0.0
        if self.ramp == 0:
            return self.depth_weight
        return self.depth_weight * min(1.0, (step - self.start) / self.ramp)


@torch.no_grad()
def teacher_depth(teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images`` ``[N, 3, H, W]`` -> the teacher's ``[N, 1, H, W]`` log depth.

    Runs in eval mode (running BatchNorm statistics: batch statistics of a few images
    would be noisy, and a train-mode forward would move the teacher's running averages),
    then restores the mode it found.
    """
    was_training = teacher.training
    teacher.eval()
    try:
        return teacher(images).depth_log.float()
    finally:
        teacher.train(was_training)


def pseudo_depth_loss(
    loss: DepthLoss,
    student_log: torch.Tensor,
    teacher_log: torch.Tensor,
    valid: torch.Tensor,
    weight: float,
) -> TaskLoss:
    """``weight`` times the depth loss of the student against the teacher.

    Args:
        loss: the labeled images' depth loss, reused so both are scored alike.
        student_log, teacher_log: ``[N, 1, H, W]`` log depth of the depth-less images.
        valid: ``[N, H, W]`` bool, False on padding.
        weight: from ``PseudoLabelConfig.weight``.

    Returns:
        ``TaskLoss``: ``total`` weighted, ``terms`` unweighted, ``present`` if any pixel.
    """
    diff = student_log.float()[:, 0] - teacher_log[:, 0]  # [N, H, W]
    task = loss.log_error(diff, valid)
    return TaskLoss(task.total * weight, task.terms, task.present)
