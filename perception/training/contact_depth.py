"""Depth for the labeled boxes of images without depth, from where each box meets the ground.

When datasets label only some tasks (BDD100K: boxes and lanes, no depth), objects are
what only depth labels teach: a model trained on half the depth labels loses most depth
accuracy inside labeled boxes (``perception eval --depth-regions``). But an object stands
on the ground, and the ground is what a depth model learns best. So the EMA model (the
teacher) reads the depth of a thin ground strip just below each box's bottom edge, the
object's contact with the ground, and that depth becomes the label of the box's core:
the middle half of its columns and the lower 60 % of its rows, where the object rather
than what lies behind it fills the box. Nearer boxes paint over farther ones (a
z-buffer). A box whose bottom edge lies on the image border or in the padding has no
visible contact and gets nothing.

This is the ground-contact cue of monocular distance estimation, with the ground depth
taken from the learned model instead of a flat-road assumption, so it needs neither the
camera height nor its pitch. On the synthetic held-out split the teacher's contact depth
is closer to the true depth of box cores than the teacher's own depth of them
(docs/results.md). Only images that lack depth and carry box labels are touched, so on
fully labeled data this is a no-op.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from perception.losses.depth import DepthLoss
from perception.ops.boxes import box_masks
from perception.ops.camera import depth_scale
from perception.postprocess.dense import depth_metres
from perception.structures import Batch
from perception.training.pseudo import teacher_outputs

CORE_COLUMNS = (0.25, 0.75)  # the middle half of a box's width
CORE_TOP = 0.4  # the core runs from 40 % of the box height down to its bottom edge
STRIP_ROWS = 3.0  # ground rows read just below the bottom edge


def contact_depth(
    depth: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth labels for the cores of ``boxes`` from the ground just below them.

    Args:
        depth: ``[H, W]`` the teacher's depth in metres.
        boxes: ``[M, 4]`` xyxy network pixels.
        valid: ``[H, W]`` bool, False on padding.

    Returns:
        ``(cores, strips)``: ``[H, W]`` float32 metres over the box cores, each the median
        depth of its ground strip (nearer boxes over farther ones), 0 elsewhere; and the
        ``[H, W]`` bool ground strips that were read, outside the cores.
    """
    h, w = depth.shape
    cores = torch.zeros((h, w), dtype=torch.float32, device=depth.device)
    strips = torch.zeros((h, w), dtype=torch.bool, device=depth.device)
    if len(boxes) == 0:
        return cores, strips
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
        return cores, strips
    inside = box_masks(core[seen], h, w) & valid  # [M', H, W]
    nearest = torch.where(inside, z[seen][:, None, None], torch.inf).amin(0)  # [H, W]
    cores = torch.where(nearest.isfinite(), nearest, cores)
    return cores, ground[seen].any(0) & (cores == 0)


def pseudo_label_contact_depth(
    teacher: nn.Module, images: torch.Tensor, batch: Batch, canonical_focal: float
) -> Batch | None:
    """Contact depth labels for the images of ``batch`` that have boxes but no depth.

    Args:
        teacher: the EMA model.
        images: ``[B, 3, H, W]`` float network input of ``batch``.
        batch: the batch; images with depth labels get none.
        canonical_focal: the model's canonical focal length (0 = camera-blind): turns the
            teacher's output into metres with each image's camera.

    Returns:
        A copy of ``batch`` whose ``depth`` holds only the contact labels (the box cores)
        and the teacher's own depth of the ground strips below them, and whose
        ``has_depth`` flags only the images that got some; ``None`` when none did.
        ``batch`` itself is not modified.
    """
    scale = depth_scale(batch.camera, canonical_focal)  # [B], NaN for an unknown camera
    boxed = torch.tensor([len(b) > 0 for b in batch.boxes], dtype=torch.bool, device=scale.device)
    missing = ~batch.has_depth.bool() & batch.has_det.bool() & boxed & scale.isfinite()  # [B]
    if not bool(missing.any()):
        return None
    where = missing.nonzero().squeeze(1)  # [N] batch rows
    depth_log = teacher_outputs(teacher, images[where]).depth_log  # [N, 1, h, w]
    size = tuple(batch.depth.shape[-2:])
    if depth_log.shape[-2:] != size:
        depth_log = F.interpolate(
            depth_log.float(), size=size, mode="bilinear", align_corners=False
        )
    metres = depth_metres(depth_log, scale[where])[:, 0]  # [N, H, W]
    depth = torch.zeros_like(batch.depth)  # [B, H, W]
    for i, row in enumerate(where.tolist()):
        cores, strips = contact_depth(metres[i], batch.boxes[row], batch.valid[row])
        depth[row] = torch.where(strips, metres[i], cores)  # the strips keep the teacher's
    has_depth = (depth > 0).flatten(1).any(1)  # [B]
    if not bool(has_depth.any()):
        return None
    return dataclasses.replace(batch, depth=depth, has_depth=has_depth)


# Object depth relative to the ground below it, not the metric scale: a per-image shift of
# log depth costs nothing (SILog with lambda = 1), so a teacher whose scale is slightly off
# cannot pass that error on, and round by round drift the student's scale with its own.
RELATIVE_DEPTH = DepthLoss(silog_lambda=1.0, grad_weight=0.0)


def add_contact_loss(
    total: torch.Tensor,
    parts: dict[str, torch.Tensor],
    depth_log: torch.Tensor,
    contact: Batch,
    weight: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``total`` plus the loss of the contact labels, and ``parts`` with it as
    ``depth_contact``.

    The loss is scale-invariant (``RELATIVE_DEPTH``): it teaches where an object lies
    relative to the ground it stands on. It is kept apart from the depth task's loss, whose
    mean over the depth-labeled images would otherwise count each contact-labeled image as
    much as a real one and so shrink the real labels' share, and it is scaled like the
    depth task (its combiner weight, ``parts["weight_depth"]``, detached) times ``weight``.

    Args:
        total, parts: the multi-task loss of the batch (``losses.multitask``).
        depth_log: ``[B, 1, h, w]`` the model's depth output for the batch.
        contact: ``pseudo_label_contact_depth``'s labels for the batch.
        weight: the contact term's weight relative to the depth task.
    """
    term = RELATIVE_DEPTH(depth_log, contact.depth, contact.valid, contact.has_depth).total
    total = total + weight * parts["weight_depth"].detach() * term
    return total, {**parts, "depth_contact": term}
