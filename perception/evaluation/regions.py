"""Depth errors split by what each pixel shows: the road, a labeled object, or the rest.

One ``depth/abs_rel`` over whole images hides *where* a model is wrong. The road is a
smooth plane whose geometry lane and drivable-area labels also teach; an object or a
building facade only depth labels can. A model trained on datasets that each label only
some tasks may lose depth on one of them and not the other, and the split shows which.

The split reads the other tasks' labels of the same image, so only images labeled for
boxes, lanes, drivable area and depth count here:

- ``road``: lane or drivable-area pixels (label 1);
- ``objects``: pixels inside a labeled box (pixel centre inside, the pixel-edge convention
  of ``perception.ops.boxes``) that are not road;
- ``rest``: everything else (facades, pavements, vegetation, the far scenery).

The three partition every scored pixel, so the ``share``-weighted mean of the three
``abs_rel`` is the ``abs_rel`` over the same images.
"""

from __future__ import annotations

import math

import torch

from perception.evaluation.depth import DepthEvaluator
from perception.structures import Batch

DEPTH_REGIONS: tuple[str, ...] = ("road", "objects", "rest")


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[H, W]`` bool: pixels whose centre lies inside any of ``boxes`` ``[N, 4]`` xyxy."""
    rows = torch.arange(height, device=boxes.device) + 0.5  # [H] pixel centres
    cols = torch.arange(width, device=boxes.device) + 0.5  # [W]
    x0, y0, x1, y1 = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3], boxes[:, 3:4]  # [N, 1]
    inside_x = (cols >= x0) & (cols < x1)  # [N, W]
    inside_y = (rows >= y0) & (rows < y1)  # [N, H]
    return (inside_y[:, :, None] & inside_x[:, None, :]).any(0)  # [H, W]


def region_masks(batch: Batch) -> dict[str, torch.Tensor]:
    """``[B, H, W]`` bool per region of ``DEPTH_REGIONS``; together they cover every pixel once."""
    road = (batch.lane == 1) | (batch.drivable == 1)  # [B, H, W]
    h, w = road.shape[-2:]
    boxed = torch.stack([box_mask(b.to(road.device), h, w) for b in batch.boxes])  # [B, H, W]
    objects = boxed & ~road
    return {"road": road, "objects": objects, "rest": ~(road | objects)}


class RegionDepthEvaluator:
    """``depth_<region>/{share,abs_rel,delta1}`` over a split: one ``DepthEvaluator`` per
    region (the same clamping and sums), fed only that region's pixels."""

    def __init__(self, max_depth: float = 80.0, min_depth: float = 1e-3) -> None:
        self.evaluators = {r: DepthEvaluator(max_depth, min_depth) for r in DEPTH_REGIONS}

    def reset(self) -> None:
        for evaluator in self.evaluators.values():
            evaluator.reset()

    def update(self, pred: torch.Tensor, batch: Batch) -> None:
        """Add a batch: ``pred`` ``[B, 1, H, W]`` or ``[B, H, W]`` metres."""
        labeled = batch.has_depth & batch.has_det & batch.has_lane & batch.has_drivable  # [B]
        for region, mask in region_masks(batch).items():
            valid = batch.valid.bool() & mask  # [B, H, W]
            self.evaluators[region].update(pred, batch.depth, valid=valid, labeled=labeled)

    def state(self) -> dict[str, dict]:
        return {r: e.state() for r, e in self.evaluators.items()}

    def merge(self, state: dict[str, dict]) -> None:
        for region, evaluator in self.evaluators.items():
            evaluator.merge(state[region])

    def compute(self) -> dict[str, float]:
        counts = {r: e.state()["count"] for r, e in self.evaluators.items()}
        total = sum(counts.values())
        out = {}
        for region, evaluator in self.evaluators.items():
            depth = evaluator.compute()
            out[f"depth_{region}/share"] = counts[region] / total if total else math.nan
            out[f"depth_{region}/abs_rel"] = depth["depth/abs_rel"]
            out[f"depth_{region}/delta1"] = depth["depth/delta1"]
        return out
