"""The SPEC metrics over a whole split, exactly as defined in METRICS.md.

Pure torch / numpy (no Lightning), shared by validation, ``perception eval`` and any
Predictor-based evaluation. Every evaluator *accumulates* (confusion counts, error sums,
per-detection match flags) and ``compute`` reduces once over the split — never a mean of
per-batch values. Everything is at network resolution; padding (``valid`` False), ignore
pixels (255) and samples not labeled for a task never count. A ratio whose denominator is
zero (e.g. no labeled sample for a task, no lane pixel anywhere) is ``NaN``, not an error.

Detection is COCO's own (``evaluation.coco``: faster-coco-eval) and depth has its own
module (``evaluation.depth``, which the per-region split also builds on); both are
re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from perception.evaluation.coco import (
    AREA_KEYS,
    COCO_MAX_DETS,
    EVAL_CONF,
    EVAL_IOU,
    EVAL_MAX_DET,
    DetectionEvaluator,
    to_coco,
)
from perception.evaluation.depth import DepthEvaluator
from perception.evaluation.regions import RegionDepthEvaluator
from perception.ops.camera import depth_scale
from perception.postprocess.dense import depth_metres, seg_probabilities
from perception.postprocess.detection import postprocess_detections
from perception.structures import Batch, HeadOutputs

__all__ = [
    "AREA_KEYS",
    "DepthEvaluator",
    "DetectionEvaluator",
    "MetricsSuite",
    "SegmentationEvaluator",
    "to_coco",
]


# ---------------------------------------------------------------------------- segmentation
def confusion_counts(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[4]`` int64 ``(TP, FP, FN, TN)`` of bool ``pred`` vs ``target`` where ``mask``."""
    return torch.stack(
        [
            (pred & target & mask).sum(),
            (pred & ~target & mask).sum(),
            (~pred & target & mask).sum(),
            (~pred & ~target & mask).sum(),
        ]
    ).long()


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


class SegmentationEvaluator:
    """``lane/iou``, ``lane/acc``, ``lane/acc_balanced`` and ``drivable/miou`` over a split.

    A pixel is predicted foreground when its probability ``> threshold`` (0.5 by default).
    Counted pixels: ``valid``, label 0 or 1 (255 = ignore is skipped), sample labeled.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._lane = torch.zeros(4, dtype=torch.int64)  # (TP, FP, FN, TN)
        self._drivable = torch.zeros(4, dtype=torch.int64)

    def update(
        self,
        probs: torch.Tensor,
        *,
        lane: torch.Tensor,
        drivable: torch.Tensor,
        valid: torch.Tensor,
        has_lane: torch.Tensor,
        has_drivable: torch.Tensor,
    ) -> None:
        """Add a batch.

        Args:
            probs: ``[B, S, H, W]`` probabilities (channel 0 lane, 1 drivable if ``S == 2``;
                with ``S == 1`` drivable labels are not scored).
            lane, drivable: ``[B, H, W]`` uint8 labels (0, 1, 255 ignore).
            valid: ``[B, H, W]`` bool, False on padding.
            has_lane, has_drivable: ``[B]`` bool, whether each sample is labeled.
        """
        if probs.shape[-2:] != lane.shape[-2:]:
            raise ValueError(f"probs {tuple(probs.shape)} and labels {tuple(lane.shape)} differ")
        pred = probs > self.threshold  # [B, S, H, W]
        self._lane += self._counts(pred[:, 0], lane, valid, has_lane)
        if probs.shape[1] > 1:
            self._drivable += self._counts(pred[:, 1], drivable, valid, has_drivable)

    @staticmethod
    def _counts(
        pred: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, labeled: torch.Tensor
    ) -> torch.Tensor:
        mask = valid.bool() & (labels <= 1) & labeled.bool()[:, None, None]  # [B, H, W]
        return confusion_counts(pred, labels == 1, mask).cpu()

    def state(self) -> dict[str, torch.Tensor]:
        """The sum states (confusion counts): merged across processes by adding."""
        return {"lane": self._lane.clone(), "drivable": self._drivable.clone()}

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        self._lane += state["lane"]
        self._drivable += state["drivable"]

    def compute(self) -> dict[str, float]:
        tp, fp, fn, tn = self._lane.tolist()
        tpr, tnr = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
        d_tp, d_fp, d_fn, d_tn = self._drivable.tolist()
        miou = (_ratio(d_tp, d_tp + d_fp + d_fn) + _ratio(d_tn, d_tn + d_fn + d_fp)) / 2
        return {
            "lane/iou": _ratio(tp, tp + fp + fn),
            "lane/acc": tpr,
            "lane/acc_balanced": (tpr + tnr) / 2,
            "drivable/miou": miou,
        }


# ----------------------------------------------------------------------------------- depth
# ----------------------------------------------------------------------------------- suite
class MetricsSuite:
    """All SPEC metric keys from raw ``HeadOutputs`` and their ``Batch``.

    Decodes through ``perception.postprocess`` (detections with ``EVAL_CONF`` /
    ``EVAL_IOU`` / ``EVAL_MAX_DET``, clipped to the canvas) and feeds the three evaluators.
    A task with no labeled sample yields NaN for its keys.
    """

    def __init__(
        self,
        *,
        seg_threshold: float = 0.5,
        max_depth: float = 80.0,
        min_depth: float = 1e-3,
        max_dets: int = COCO_MAX_DETS,
        canonical_focal: float = 0.0,
        depth_regions: bool = False,
    ) -> None:
        """``canonical_focal``: the model's (``perception.ops.camera``); depth is scored in
        metres for each image's own camera (``Batch.camera``). ``depth_regions`` adds the
        ``depth_<region>/*`` keys after the SPEC ones (``evaluation.regions``)."""
        self.canonical_focal = canonical_focal
        self.detection = DetectionEvaluator(max_dets=max_dets)
        self.segmentation = SegmentationEvaluator(threshold=seg_threshold)
        self.depth = DepthEvaluator(max_depth=max_depth, min_depth=min_depth)
        self.regions = RegionDepthEvaluator(max_depth, min_depth) if depth_regions else None
        self.num_images = 0

    def reset(self) -> None:
        self.detection.reset()
        self.segmentation.reset()
        self.depth.reset()
        if self.regions is not None:
            self.regions.reset()
        self.num_images = 0

    def state(self) -> dict:
        """Everything ``compute`` needs, picklable: sum states and detection's per-image
        records. ``merge`` adds another suite's (another process's shard of the split)."""
        return {
            "detection": self.detection.state(),
            "segmentation": self.segmentation.state(),
            "depth": self.depth.state(),
            "regions": None if self.regions is None else self.regions.state(),
            "num_images": self.num_images,
        }

    def merge(self, state: dict) -> None:
        self.detection.merge(state["detection"])
        self.segmentation.merge(state["segmentation"])
        self.depth.merge(state["depth"])
        if self.regions is not None:
            self.regions.merge(state["regions"])
        self.num_images += int(state["num_images"])

    @torch.no_grad()
    def update(
        self,
        outputs: HeadOutputs,
        batch: Batch,
        points: torch.Tensor,
        strides: torch.Tensor,
        keys: Sequence[tuple] | None = None,
    ) -> None:
        """Score one batch; ``points [A, 2]`` / ``strides [A]`` as from ``ops.points``;
        ``keys`` per image its place in the split (``DetectionEvaluator.update``)."""
        if len(batch) == 0:
            return
        if bool(batch.has_det.any()):
            dets = postprocess_detections(
                outputs.cls_logits,
                outputs.box_dist,
                points,
                strides,
                conf=EVAL_CONF,
                iou=EVAL_IOU,
                max_det=EVAL_MAX_DET,
                image_size=tuple(batch.valid.shape[-2:]),
            )
            self.detection.update(
                dets,
                batch.boxes,
                batch.labels,
                batch.has_det.tolist(),
                scales=batch.letterbox[:, 0].tolist(),
                ignore=batch.ignore,
                keys=keys,
            )
        self.segmentation.update(
            seg_probabilities(outputs.seg_logits),
            lane=batch.lane,
            drivable=batch.drivable,
            valid=batch.valid,
            has_lane=batch.has_lane,
            has_drivable=batch.has_drivable,
        )
        depth = depth_metres(outputs.depth_log, depth_scale(batch.camera, self.canonical_focal))
        self.depth.update(depth, batch.depth, valid=batch.valid, labeled=batch.has_depth)
        if self.regions is not None:
            self.regions.update(depth, batch)
        self.num_images += len(batch)

    def compute(self) -> dict[str, float]:
        """The SPEC keys in SPEC order (``num_images`` an int), then any region keys."""
        return {
            **self.detection.compute(),
            **self.segmentation.compute(),
            **self.depth.compute(),
            "num_images": self.num_images,
            **(self.regions.compute() if self.regions is not None else {}),
        }


# The headline metric of each task for choosing the best checkpoint (``combined_score``).
SCORE_KEYS = ("det/mAP50_95", "lane/iou", "drivable/miou", "depth/delta1")


def combined_score(metrics: dict[str, float]) -> float:
    """Mean of the headline metric of each evaluated task (all in [0, 1], higher better).

    Picks the best checkpoint across tasks without letting one task's scale dominate.
    """
    values = [metrics[k] for k in SCORE_KEYS if k in metrics and not math.isnan(metrics[k])]
    return float(sum(values) / len(values)) if values else 0.0
