"""Lane and drivable-area pseudo-labels from the EMA model, for the images that lack them.

When datasets label only some tasks (KITTI: boxes and depth, no lanes), a depth-labeled
image never carries road-layout labels, while in a fully labeled set every depth image
also teaches the shared features where the road and its lane lines are. Here the EMA
weights (the teacher) segment each image of the batch that has no lane (or no drivable)
labels, and the confident pixels become its labels: probability ``>= threshold`` is
foreground, ``<= 1 - threshold`` background, the rest ignored (255), as is padding. The
live model is then trained on them exactly as on real labels (mean-teacher self-training
with hard, confidence-filtered targets; Tarvainen & Valpola 2017, Sohn et al. 2020).

An image that has the labels is never touched, so on fully labeled data this is a no-op.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from perception.data.transforms import IGNORE
from perception.errors import PerceptionError
from perception.losses.segmentation import CHANNELS
from perception.structures import Batch


def check_channels(fill: Sequence[str]) -> None:
    """A non-empty subset of the segmentation channels."""
    if not fill or not set(fill) <= set(CHANNELS):
        raise PerceptionError(
            f"model.seg_pseudo_channels must be among {list(CHANNELS)}, got {list(fill)}"
        )


def check_threshold(threshold: float) -> None:
    """0 (off) or a confidence in (0.5, 1): below 0.5 a pixel could be both classes."""
    if threshold != 0 and not 0.5 < threshold < 1:
        raise PerceptionError(
            f"model.seg_pseudo_labels must be 0 (off) or a confidence in (0.5, 1), got {threshold}"
        )


def confident_labels(prob: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """``prob`` ``[N, H, W]`` foreground probability -> ``[N, H, W]`` uint8 labels.

    1 where ``prob >= threshold``, 0 where ``prob <= 1 - threshold``, ``IGNORE`` between
    and wherever ``valid`` (``[N, H, W]`` bool) is False.
    """
    labels = torch.full(prob.shape, IGNORE, dtype=torch.uint8, device=prob.device)
    labels[prob <= 1 - threshold] = 0
    labels[prob >= threshold] = 1
    labels[~valid] = IGNORE
    return labels


@torch.no_grad()
def teacher_seg_prob(
    teacher: nn.Module, images: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """``images`` ``[N, 3, H, W]`` -> the teacher's ``[N, S, *size]`` float probabilities.

    Runs in eval mode (running BatchNorm statistics: a train-mode forward would move the
    teacher's averages, and the statistics of a few images are noisy), then restores the
    mode it found. Logits are resized bilinearly to the label size, as the loss does.
    """
    was_training = teacher.training
    teacher.eval()
    try:
        logits = teacher(images).seg_logits.float()  # [N, S, h, w]
    finally:
        teacher.train(was_training)
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.sigmoid()


def pseudo_label_segmentation(
    teacher: nn.Module,
    images: torch.Tensor,
    batch: Batch,
    threshold: float,
    channels: int = len(CHANNELS),
    fill: Sequence[str] = CHANNELS,
) -> tuple[Batch, int]:
    """Fill the missing lane / drivable labels of ``batch`` from ``teacher``.

    Args:
        teacher: the EMA model.
        images: ``[B, 3, H, W]`` float network input of ``batch``.
        batch: the batch; rows with ``has_lane`` (``has_drivable``) True keep their labels.
        threshold: confidence in (0.5, 1) for a pixel to become a label.
        channels: the model's segmentation channels, in ``CHANNELS`` order (1: lane only).
        fill: the channels to pseudo-label (``CHANNELS`` names); the others stay as they are.

    Returns:
        ``(batch, rows)``: a new batch whose filled rows are flagged labeled, and how many
        images got pseudo-labels. ``batch`` itself is not modified.
    """
    check_threshold(threshold)
    flags = [batch.has_lane.bool(), batch.has_drivable.bool()]  # [B] each
    wanted = [c for c, name in enumerate(CHANNELS[:channels]) if name in fill]
    if threshold == 0 or not wanted:
        return batch, 0
    missing = ~torch.stack([flags[c] for c in wanted]).all(0)  # [B]
    if not bool(missing.any()):
        return batch, 0
    prob = teacher_seg_prob(teacher, images[missing], tuple(batch.lane.shape[-2:]))
    where = missing.nonzero().squeeze(1)  # [N] batch rows of ``prob``
    labels = [batch.lane.clone(), batch.drivable.clone()]  # [B, H, W] uint8 each
    filled = [batch.has_lane.clone(), batch.has_drivable.clone()]  # [B] each
    for c in wanted:
        rows = ~flags[c][where]  # [N] rows of ``prob`` lacking this channel
        target = where[rows]
        labels[c][target] = confident_labels(prob[rows, c], batch.valid[target], threshold)
        filled[c][target] = True
    new = dataclasses.replace(
        batch, lane=labels[0], drivable=labels[1], has_lane=filled[0], has_drivable=filled[1]
    )
    return new, int(missing.sum())
