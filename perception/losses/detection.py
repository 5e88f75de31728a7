"""Detection loss: Varifocal classification + IoU-family box regression on assigned points.

Partial labels are the rule, not the exception (a lane dataset has no boxes): only images
with ``has_det`` take part — their raw outputs are *selected*, so an unlabeled image adds
nothing, not even background classification, and receives exactly zero gradient.

Ignore regions (``Batch.ignore``: DontCare, crowds) hold real objects nobody boxed. A
point whose centre lies inside one and that is not a positive of some GT is neither
positive nor negative: its classification weight is zero, so the head is not taught to
call those objects background. Positives stay positives (a GT may overlap a crowd) and
the normaliser (sum of soft targets, i.e. of positives) is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from perception.losses.assigners import (
    Assignment,
    TaskAlignedAssigner,
    pad_targets,
    points_in_regions,
)
from perception.losses.terms import TaskLoss
from perception.ops.boxes import aligned_ciou, aligned_giou, decode_box_dist
from perception.ops.distributed import all_reduce_sum, world_size

BOX_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "giou": aligned_giou,
    "ciou": aligned_ciou,
}


def varifocal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    counted: torch.Tensor | None = None,
) -> torch.Tensor:
    """Varifocal loss (Zhang et al., VarifocalNet 2021), summed over all elements.

    Positives (``target > 0``, an IoU-aware score) are weighted by the target itself, so
    high-quality points dominate; negatives by ``alpha * p^gamma``, so the many easy
    background points fade out (focal down-weighting applied to negatives only).

    Args:
        logits: ``[..., K]`` raw class logits.
        target: ``[..., K]`` soft targets in ``[0, 1]`` (0 = negative).
        alpha, gamma: negative weighting.
        counted: ``[...]`` bool (``logits`` without the class axis), False for points that
            add nothing (ignore regions); None = all count.

    Returns:
        ``[]`` the summed loss (callers normalise).
    """
    prob = logits.detach().sigmoid()
    positive = target > 0
    weight = torch.where(positive, target, alpha * prob.pow(gamma))  # [..., K]
    if counted is not None:
        weight = weight * counted[..., None].to(weight.dtype)  # [...] -> [..., 1]
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * weight).sum()


class DetectionLoss(nn.Module):
    """Varifocal + IoU loss for the anchor-free head, normalised by the sum of soft targets.

    Returns terms ``cls`` and ``box`` (unweighted) and ``total = cls_weight * cls +
    box_weight * box``. The defaults follow PP-YOLOE (VFL 1.0, GIoU 2.5), whose loss this
    is minus the distribution focal term (our head regresses distances directly).
    """

    def __init__(
        self,
        *,
        assigner: TaskAlignedAssigner | None = None,
        cls_weight: float = 1.0,
        box_weight: float = 2.5,
        box_loss: str = "giou",
        vfl_alpha: float = 0.75,
        vfl_gamma: float = 2.0,
    ) -> None:
        """``box_loss`` is a key of ``BOX_LOSSES`` ("giou" or "ciou")."""
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"unknown box_loss {box_loss!r}; valid: {', '.join(BOX_LOSSES)}")
        self.assigner = assigner or TaskAlignedAssigner()
        self.cls_weight = cls_weight
        self.box_weight = box_weight
        self.box_loss = box_loss
        self.vfl_alpha = vfl_alpha
        self.vfl_gamma = vfl_gamma

    def forward(
        self,
        cls_logits: torch.Tensor,
        box_dist: torch.Tensor,
        gt_boxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        has_det: torch.Tensor,
        points: torch.Tensor,
        strides: torch.Tensor,
        ignore: list[torch.Tensor] | None = None,
    ) -> TaskLoss:
        """Loss of one batch.

        Args:
            cls_logits: ``[B, A, K]`` raw class logits (``HeadOutputs.cls_logits``).
            box_dist: ``[B, A, 4]`` raw distances (``HeadOutputs.box_dist``).
            gt_boxes: B x ``[N_i, 4]`` xyxy network pixels.
            gt_labels: B x ``[N_i]`` int64.
            has_det: ``[B]`` bool, False = image not labeled for detection.
            points, strides: ``[A, 2]`` / ``[A]`` from ``ops.points.dense_points``.
            ignore: B x ``[M_i, 4]`` xyxy network pixels (``Batch.ignore``); a non-positive
                point whose centre lies inside one gets zero classification weight.

        Returns:
            ``TaskLoss`` with terms ``cls`` and ``box``; zeros (graph intact) and
            ``present`` False when no image has ``has_det``.
        """
        keep = has_det.nonzero().flatten().tolist()  # host list: the GT lists are ragged
        logits = cls_logits[keep].float()  # [B', A, K], B' labeled images
        pred = decode_box_dist(box_dist[keep].float(), points, strides)  # [B', A, 4] xyxy
        present = torch.tensor(bool(keep), device=cls_logits.device)
        if not keep:  # sums over empty selections: 0 with a graph to the raw outputs
            self._normaliser(logits.new_zeros(()))  # the other processes wait for ours
            zero = logits.sum() + pred.sum()
            return TaskLoss(zero, {"cls": zero, "box": zero}, present)
        boxes, labels, mask = pad_targets(
            [gt_boxes[i] for i in keep], [gt_labels[i] for i in keep], device=logits.device
        )
        target = self.assigner(
            logits.detach().sigmoid(), pred.detach(), points, boxes, labels, mask, strides
        )
        counted = None
        if ignore is not None and any(len(ignore[i]) for i in keep):
            ignored = points_in_regions(points, [ignore[i] for i in keep])  # [B', A]
            counted = ~ignored | target.fg  # [B', A], a positive always counts
        norm = self._normaliser(target.scores.sum())
        vfl = varifocal_loss(logits, target.scores, self.vfl_alpha, self.vfl_gamma, counted)
        cls = vfl / norm
        box = self._box_term(pred, target) / norm
        total = self.cls_weight * cls + self.box_weight * box
        return TaskLoss(total, {"cls": cls, "box": box}, present)

    def _normaliser(self, positives: torch.Tensor) -> torch.Tensor:
        """The loss divisor: this batch's soft positives, or in distributed training their
        mean over processes, so every process's gradient has the same scale and their
        average is the gradient of the whole global batch (not a mean of per-process
        ratios, which over-weights a process whose images hold few objects). Validation
        (eval mode) stays per process: its shards need not have equal batch counts."""
        if self.training and world_size() > 1:
            positives = all_reduce_sum(positives) / world_size()
        return positives.clamp(min=1.0)

    def _box_term(self, pred: torch.Tensor, target: Assignment) -> torch.Tensor:
        """``sum_fg (1 - IoU-family) * target score``: better-aligned points count more."""
        fg = target.fg  # [B', A]
        quality = target.scores.sum(dim=-1)[fg]  # [B', A, K] -> [F], one class non-zero
        overlap = BOX_LOSSES[self.box_loss](pred[fg], target.boxes[fg])  # [F]
        return ((1.0 - overlap) * quality).sum()
