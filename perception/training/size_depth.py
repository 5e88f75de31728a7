"""Depth for the labeled boxes of images without depth, from how tall they are drawn.

When datasets label only some tasks (BDD100K: boxes and lanes, no depth), objects are
what only depth labels teach. But a pinhole camera of focal ``f`` draws an object of
height ``H`` at distance ``z`` as ``h = f H / z`` pixels, so ``z = f H / h``; and objects
of one class are about equally tall. ``H`` per class is measured, not assumed: on the
depth-labeled images of each training batch, every clean box gives ``log(z f^-1 h)``
with ``z`` the median true depth of its core, and the running mean of those is the
class's log height. The labels come from the data alone, never from the model, so a
student cannot hand its own errors back to itself through them.

Only *clean* boxes count, on both sides. A box is the extent of the visible pixels, so an
occluded object's box is short and reads too far, and a box cut by the image edge or by
padding is short too; a box must lie fully in view, overlap no other box, and be at least
``MIN_HEIGHT`` pixels tall. On the synthetic held-out split such labels are within 5.4 %
of the truth per box on average, against 34 % when every box is used.

Each clean box's label covers its core (the middle half of its columns, the lower 60 % of
its rows) and is trained as depth labels are (``losses.depth``), as a term of its own so
the real labels keep their share of the depth loss.
"""

from __future__ import annotations

import dataclasses

import torch

from perception.ops.boxes import box_masks
from perception.structures import Batch

MIN_HEIGHT = 8.0  # network pixels: shorter boxes are mostly far and their heights coarse
MIN_COUNT = 20  # clean boxes of a class seen before its height is trusted
CORE_COLUMNS = (0.25, 0.75)  # the middle half of a box's width
CORE_TOP = 0.4  # the core runs from 40 % of the box height down to its bottom edge


def cores(boxes: torch.Tensor) -> torch.Tensor:
    """``[M, 4]`` xyxy boxes -> ``[M, 4]`` their cores (see the module docstring)."""
    x0, y0, x1, y1 = boxes.float().unbind(1)  # [M] each
    width, height = x1 - x0, y1 - y0
    left, right = x0 + CORE_COLUMNS[0] * width, x0 + CORE_COLUMNS[1] * width
    return torch.stack([left, y0 + CORE_TOP * height, right, y1], 1)


def clean_boxes(boxes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[M]`` bool: boxes fully in view, overlapping no other box, ``MIN_HEIGHT`` tall.

    Args:
        boxes: ``[M, 4]`` xyxy network pixels.
        valid: ``[H, W]`` bool, False on padding.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.bool, device=boxes.device)
    h, w = valid.shape
    boxes = boxes.float()
    ring = boxes + boxes.new_tensor([-1.0, -1.0, 1.0, 1.0])  # one pixel around each box
    inside = (ring[:, 0] >= 0) & (ring[:, 1] >= 0) & (ring[:, 2] <= w) & (ring[:, 3] <= h)
    touches_padding = (box_masks(ring, h, w) & ~valid).flatten(1).any(1)  # [M]
    lo = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])  # [M, M, 2]
    hi = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    overlap = ((hi - lo).clamp(min=0).prod(2) > 0).fill_diagonal_(False).any(1)  # [M]
    tall = boxes[:, 3] - boxes[:, 1] >= MIN_HEIGHT
    return inside & ~touches_padding & ~overlap & tall


def core_depth(depth: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[M]`` median depth (metres) over each box's core, NaN where it has none.
    ``depth`` ``[H, W]`` (0 = no measurement), ``boxes`` ``[M, 4]``, ``valid`` ``[H, W]``."""
    h, w = depth.shape
    inside = box_masks(cores(boxes), h, w) & valid & (depth > 0)  # [M, H, W]
    values = torch.where(inside, depth.float(), torch.nan).flatten(1)  # [M, H*W]
    return values.nanmedian(1).values


class SizeDepth:
    """Per-class heights measured on the depth-labeled images, and the term they give.

    ``observe`` each training batch, then take its ``labeled`` copy; ``state_dict`` goes
    in the checkpoint.
    """

    def __init__(self, num_classes: int) -> None:
        self.log_height_sum = torch.zeros(num_classes, dtype=torch.float64)
        self.count = torch.zeros(num_classes, dtype=torch.int64)

    def heights(self) -> torch.Tensor:
        """``[C]`` metres per class, NaN for a class with fewer than ``MIN_COUNT`` boxes."""
        mean = self.log_height_sum / self.count.clamp(min=1)
        return torch.where(self.count >= MIN_COUNT, mean.exp(), torch.nan).float()

    def observe(self, batch: Batch) -> None:
        """Add the clean boxes of the batch's depth-labeled images to the heights."""
        focal_y = batch.camera[:, 1].float().cpu()  # [B]
        for row in batch.has_depth.nonzero().flatten().tolist():
            boxes, labels = batch.boxes[row], batch.labels[row]
            if len(boxes) == 0 or not bool(focal_y[row].isfinite()):
                continue
            clean = clean_boxes(boxes, batch.valid[row])
            z = core_depth(batch.depth[row], boxes[clean], batch.valid[row]).cpu()  # [M']
            height = (boxes[clean, 3] - boxes[clean, 1]).float().cpu()
            seen = z.isfinite()
            log_height = (z * height / focal_y[row]).log()[seen].double()
            classes = labels[clean].cpu()[seen]
            self.log_height_sum.index_add_(0, classes, log_height)
            self.count.index_add_(0, classes, torch.ones_like(classes))

    def labeled(self, batch: Batch) -> Batch | None:
        """A copy of ``batch`` whose images *without* depth carry the size labels on the
        cores of their clean boxes (which never overlap), flagged depth-labeled, and whose
        other images carry none; None when no such image got a label."""
        heights = self.heights().to(batch.depth.device)  # [C]
        size = tuple(batch.depth.shape[-2:])
        depth = torch.zeros_like(batch.depth)  # [B, H, W]
        for row in (~batch.has_depth.bool()).nonzero().flatten().tolist():
            boxes, labels = batch.boxes[row], batch.labels[row]
            if len(boxes) == 0 or not bool(batch.camera[row].isfinite().all()):
                continue
            keep = clean_boxes(boxes, batch.valid[row]) & heights[labels].isfinite()
            if not bool(keep.any()):
                continue
            boxes, labels = boxes[keep].float(), labels[keep]
            z = batch.camera[row, 1] * heights[labels] / (boxes[:, 3] - boxes[:, 1])  # [M]
            inside = box_masks(cores(boxes), *size) & batch.valid[row]  # [M, H, W]
            depth[row] = torch.where(inside, z[:, None, None], 0.0).amax(0)  # [H, W]
        rows = (depth > 0).flatten(1).any(1)  # [B]
        if not bool(rows.any()):
            return None
        return dataclasses.replace(batch, depth=depth, has_depth=rows)

    def state_dict(self) -> dict[str, list]:
        """Plain lists, so the checkpoint stays loadable without this class."""
        return {"log_height_sum": self.log_height_sum.tolist(), "count": self.count.tolist()}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.log_height_sum = torch.tensor(state["log_height_sum"], dtype=torch.float64)
        self.count = torch.tensor(state["count"], dtype=torch.int64)
