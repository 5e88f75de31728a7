"""Depth for the labeled boxes of images without depth, from where each box meets the
ground, calibrated on the images that have depth.

When datasets label only some tasks (BDD100K: boxes and lanes, no depth), objects are
what only depth labels teach. But an object stands on the ground, and the ground is what
a depth model learns best. So the EMA model (the teacher) reads the depth of a thin
ground strip just below each box's bottom edge, and that depth becomes the label of the
box's core: the middle half of its columns and the lower 60 % of its rows. Nearer boxes
paint over farther ones (a z-buffer). A box whose strip is out of view gets nothing.

Read this way the labels are biased: the ground below a box is nearer than the object's
visible body, and the teacher's scale is not the truth's. Uncorrected, a student fitting
them drifts near, and its teacher (an average of it) hands the drift back. So the same
labels are also made on the images of the batch that *have* depth, where the truth is
known: the mean log error of the labels there, averaged over steps, is the correction
applied to the labels of the images without depth.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from perception.ops.boxes import box_masks
from perception.ops.camera import depth_scale
from perception.postprocess.dense import depth_metres
from perception.structures import Batch
from perception.training.pseudo import teacher_outputs

CORE_COLUMNS = (0.25, 0.75)  # the middle half of a box's width
CORE_TOP = 0.4  # the core runs from 40 % of the box height down to its bottom edge
STRIP_ROWS = 3.0  # ground rows read just below the bottom edge


def contact_depth(depth: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Depth labels for the cores of ``boxes`` from the ground just below them.

    Args:
        depth: ``[H, W]`` the teacher's depth in metres.
        boxes: ``[M, 4]`` xyxy network pixels.
        valid: ``[H, W]`` bool, False on padding.

    Returns:
        ``[H, W]`` float32 metres over the box cores, each the median depth of its ground
        strip (nearer boxes over farther ones), 0 elsewhere.
    """
    h, w = depth.shape
    cores = torch.zeros((h, w), dtype=torch.float32, device=depth.device)
    if len(boxes) == 0:
        return cores
    x0, y0, x1, y1 = boxes.float().unbind(1)  # [M] each
    left = x0 + CORE_COLUMNS[0] * (x1 - x0)
    right = x0 + CORE_COLUMNS[1] * (x1 - x0)
    strip = torch.stack([left, y1, right, y1 + STRIP_ROWS], 1)  # [M, 4]
    core = torch.stack([left, y0 + CORE_TOP * (y1 - y0), right, y1], 1)  # [M, 4]
    ground = box_masks(strip, h, w) & valid & (depth > 0)  # [M, H, W]
    values = torch.where(ground, depth.float(), torch.nan).flatten(1)  # [M, H*W]
    z = values.nanmedian(1).values  # [M], NaN where the strip is out of view
    seen = z.isfinite()
    if not bool(seen.any()):
        return cores
    inside = box_masks(core[seen], h, w) & valid  # [M', H, W]
    nearest = torch.where(inside, z[seen][:, None, None], torch.inf).amin(0)  # [H, W]
    return torch.where(nearest.isfinite(), nearest, cores)


def contact_labels(
    teacher: nn.Module, images: torch.Tensor, batch: Batch, canonical_focal: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncorrected contact labels for every image of ``batch`` with boxes and a camera.

    Returns:
        ``(labels, rows)``: ``[B, H, W]`` metres over the box cores (0 elsewhere and on
        rows without labels) and the ``[B]`` bool rows that got any.
    """
    scale = depth_scale(batch.camera, canonical_focal)  # [B], NaN for an unknown camera
    boxed = torch.tensor([len(b) > 0 for b in batch.boxes], dtype=torch.bool, device=scale.device)
    rows = batch.has_det.bool() & boxed & scale.isfinite() & (scale > 0)  # [B]
    labels = torch.zeros_like(batch.depth)  # [B, H, W]
    if not bool(rows.any()):
        return labels, rows
    where = rows.nonzero().squeeze(1)  # [N] batch rows
    depth_log = teacher_outputs(teacher, images[where]).depth_log.float()  # [N, 1, h, w]
    size = tuple(batch.depth.shape[-2:])
    if depth_log.shape[-2:] != size:
        depth_log = F.interpolate(depth_log, size=size, mode="bilinear", align_corners=False)
    metres = depth_metres(depth_log, scale[where])[:, 0]  # [N, H, W]
    for i, row in enumerate(where.tolist()):
        labels[row] = contact_depth(metres[i], batch.boxes[row], batch.valid[row])
    return labels, (labels > 0).flatten(1).any(1)


def label_log_error(labels: torch.Tensor, batch: Batch) -> torch.Tensor | None:
    """Mean ``log(true) - log(label)`` over the core pixels of the depth-labeled images
    that have a measurement; None when there is none. ``labels`` ``[B, H, W]``."""
    truth = batch.depth  # [B, H, W]
    mask = (labels > 0) & (truth > 0) & batch.has_depth.bool()[:, None, None]
    if not bool(mask.any()):
        return None
    return (truth[mask].log() - labels[mask].log()).mean()


def calibrated_batch(labels: torch.Tensor, batch: Batch, log_bias: float) -> Batch | None:
    """A copy of ``batch`` holding the labels of the images *without* depth, times
    ``exp(log_bias)``, flagged depth-labeled; None when no such image got any."""
    rows = ~batch.has_depth.bool() & (labels > 0).flatten(1).any(1)  # [B]
    if not bool(rows.any()):
        return None
    depth = torch.where(rows[:, None, None], labels * float(torch.tensor(log_bias).exp()), 0.0)
    return dataclasses.replace(batch, depth=depth, has_depth=rows)
