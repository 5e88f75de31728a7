"""The composite training criterion: three task losses and one combiner.

``MultiTaskLoss(outputs, batch, points, strides)`` is what the training module calls. It
reads raw ``HeadOutputs`` and the ``Batch`` targets only (never the model, never the
images) and returns the scalar to back-propagate plus unweighted parts for logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from perception.losses.assigners import TaskAlignedAssigner
from perception.losses.combiners import (
    COMBINED_TASKS,
    COMBINERS,
    Combiner,
    FixedWeights,
    build_combiner,
)
from perception.losses.depth import DepthLoss, check_depth_loss
from perception.losses.detection import DetectionLoss
from perception.losses.segmentation import SegmentationLoss
from perception.losses.terms import TaskLoss
from perception.structures import Batch, HeadOutputs

__all__ = ["COMBINERS", "LossConfig", "MultiTaskLoss", "build_combiner", "build_loss"]


@dataclass
class LossConfig:
    """The criterion's hyperparameters: the ``model.loss`` section of a training YAML.

    Primitive fields only (they are stored in the checkpoint). Defaults are each task
    loss's own; see those classes for why.

    Attributes:
        cls_weight, box_weight: detection Varifocal and IoU-loss weights (PP-YOLOE 1, 2.5).
        box_loss: ``giou`` or ``ciou``.
        vfl_alpha, vfl_gamma: Varifocal negative weighting ``alpha * p^gamma``.
        assigner_topk, assigner_alpha, assigner_beta: Task-Aligned assigner: positives
            per object and the alignment ``score^alpha * IoU^beta``.
        lane_pos_weight, drivable_pos_weight: BCE weight of foreground pixels.
        lane_tversky_alpha, lane_tversky_beta: Tversky false-positive / false-negative
            weights of the lane channel (drivable uses soft Dice, 0.5 / 0.5).
        seg_bce_weight, seg_dice_weight: weights of the two segmentation terms.
        depth_loss: the depth regression term on log depth: ``silog``, ``l1``, ``l2``,
            ``smooth_l1`` or ``huber`` (``losses.depth``; the gradient term stays).
        depth_loss_beta: where ``smooth_l1`` / ``huber`` turn linear (log units).
        silog_lambda: SILog scale-invariance (1 = fully invariant, metric scale unlearnt).
        silog_weight, depth_grad_weight: weights of the two depth terms (``silog_weight``
            weights the regression term whichever ``depth_loss`` is).
        depth_scales: resolutions of the depth gradient-matching term.
    """

    cls_weight: float = 1.0
    box_weight: float = 2.5
    box_loss: str = "giou"
    vfl_alpha: float = 0.75
    vfl_gamma: float = 2.0
    assigner_topk: int = 10
    assigner_alpha: float = 1.0
    assigner_beta: float = 6.0
    lane_pos_weight: float = 4.0
    drivable_pos_weight: float = 1.0
    lane_tversky_alpha: float = 0.3
    lane_tversky_beta: float = 0.7
    seg_bce_weight: float = 1.0
    seg_dice_weight: float = 1.0
    silog_lambda: float = 0.85
    silog_weight: float = 1.0
    depth_grad_weight: float = 0.5
    depth_scales: int = 4
    depth_loss: str = "silog"
    depth_loss_beta: float = 0.1

    def __post_init__(self) -> None:
        """A misspelt loss name fails when the config is read, not at the first batch."""
        check_depth_loss(self.depth_loss)


def build_loss(
    cfg: LossConfig, combiner: Combiner | None = None, *, canonical_focal: float = 0.0
) -> MultiTaskLoss:
    """The one factory: every knob of ``cfg`` reaches the task loss that uses it.

    ``canonical_focal`` is the model's (``perception.ops.camera``), so the depth loss
    compares in the same space the head predicts in.
    """
    assigner = TaskAlignedAssigner(
        topk=cfg.assigner_topk, alpha=cfg.assigner_alpha, beta=cfg.assigner_beta
    )
    detection = DetectionLoss(
        assigner=assigner,
        cls_weight=cfg.cls_weight,
        box_weight=cfg.box_weight,
        box_loss=cfg.box_loss,
        vfl_alpha=cfg.vfl_alpha,
        vfl_gamma=cfg.vfl_gamma,
    )
    segmentation = SegmentationLoss(
        pos_weight=(cfg.lane_pos_weight, cfg.drivable_pos_weight),
        fn_weight=(cfg.lane_tversky_beta, 0.5),
        fp_weight=(cfg.lane_tversky_alpha, 0.5),
        bce_weight=cfg.seg_bce_weight,
        dice_weight=cfg.seg_dice_weight,
    )
    depth = DepthLoss(
        loss=cfg.depth_loss,
        silog_lambda=cfg.silog_lambda,
        silog_weight=cfg.silog_weight,
        grad_weight=cfg.depth_grad_weight,
        num_scales=cfg.depth_scales,
        canonical_focal=canonical_focal,
        beta=cfg.depth_loss_beta,
    )
    return MultiTaskLoss(combiner, detection=detection, segmentation=segmentation, depth=depth)


class MultiTaskLoss(nn.Module):
    """Detection + segmentation (lane, drivable) + depth, combined by ``combiner``.

    Parts (all ``[]`` tensors; the caller adds the ``train/`` prefix):
    ``det_cls``, ``det_box``, ``lane_bce``, ``lane_dice``, ``drivable_bce``,
    ``drivable_dice`` (only with a drivable channel), ``depth_silog`` (``depth_<loss>``
    with another ``LossConfig.depth_loss``), ``depth_grad`` —
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
                ignore=batch.ignore,
            ),
            "seg": self.segmentation(
                outputs.seg_logits,
                batch.lane,
                batch.drivable,
                batch.valid,
                batch.has_lane,
                batch.has_drivable,
            ),
            "depth": self.depth(
                outputs.depth_log, batch.depth, batch.valid, batch.has_depth, batch.camera
            ),
        }
