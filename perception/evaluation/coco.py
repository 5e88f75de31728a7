"""COCO detection metrics over a whole split: mAP50, mAP50_95, recall, small/medium/large.

Follows COCO (pycocotools / faster-coco-eval) bit for bit, crowds included: 101-point
interpolated AP at IoU 0.50:0.05:0.95, greedy matching by score per image and class, at
most ``max_dets`` (100) detections per image *and class*, mean over classes with at least
one ground-truth box; COCO's small / medium / large area ranges with its ignore rules,
areas measured in source-image pixels. Pure numpy / torch; ``metrics.MetricsSuite`` feeds it.

Ignore regions (``Batch.ignore``: DontCare, crowds) are COCO ``iscrowd=1`` annotations
of *every* class (they carry none): a detection that matches no counted ground truth but
lies inside a region (intersection over its own area ``>= t``, so ``>= 0.5`` for mAP50) is
ignored, neither TP nor FP, and one region can absorb any number of detections. Regions
are never ground truth, so they do not enter recall or the AP denominators. ``to_coco``
writes them as such annotations, so faster-coco-eval cross-checks this too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, overload

import numpy as np
import torch

from perception.ops import boxes as box_ops
from perception.structures import Detections

EVAL_CONF = 0.001  # detection confidence threshold for metrics (det/recall is defined at it)
EVAL_IOU = 0.6  # NMS IoU for metrics
EVAL_MAX_DET = 300  # detections kept per image by NMS for metrics
COCO_MAX_DETS = 100  # COCO's maxDets: detections scored per image and class
IOU_THRESHOLDS = np.linspace(0.5, 0.95, round((0.95 - 0.5) / 0.05) + 1, endpoint=True)  # [T]
RECALL_POINTS = np.linspace(0.0, 1.0, round(1.0 / 0.01) + 1, endpoint=True)  # [101]
# COCO's areaRng (source pixels, bounds inclusive): all, small, medium, large
AREA_RANGES = np.array([[0.0, 1e5**2], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e5**2]])
AREA_KEYS = ("det/mAP_small", "det/mAP_medium", "det/mAP_large")  # ranges 1..3


# ------------------------------------------------------------------------------ detection
class ImageRecord(NamedTuple):
    """One scored image: its scored detections (classes ascending, score-sorted within a
    class) with their match status, and its counted ground truth."""

    key: tuple | None  # place in the split (``DetectionEvaluator.update``)
    scores: np.ndarray  # [D] float64
    labels: np.ndarray  # [D] int64
    status: np.ndarray  # [D, R, T] int8: 1 TP, 0 FP, -1 ignored
    gt_labels: np.ndarray  # [G] int64
    gt_in: np.ndarray  # [G, R] bool: area in range r


@overload
def match_detections(ious: np.ndarray) -> np.ndarray: ...
@overload
def match_detections(
    ious: np.ndarray,
    gt_ignore: np.ndarray,
    dt_outside: np.ndarray,
    gt_crowd: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]: ...
def match_detections(
    ious: np.ndarray,
    gt_ignore: np.ndarray | None = None,
    dt_outside: np.ndarray | None = None,
    gt_crowd: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """COCO greedy matching of one image and class at every IoU threshold.

    Args:
        ious: ``[D, G]`` IoU of detections (sorted by decreasing score) with ground truth;
            intersection over the detection's area in crowd columns (COCO ``iscrowd``).
        gt_ignore: ``[G]`` bool, ground truth outside the area range (COCO ``gtIg``).
        dt_outside: ``[D]`` bool, detections whose area is outside the range.
        gt_crowd: ``[G]`` bool, crowd / ignore regions: always ignored, and never used up,
            so every detection inside one is absorbed (pycocotools' ``iscrowd``).

    Returns:
        ``[D, T]`` bool, True where the detection is a true positive at ``IOU_THRESHOLDS[t]``.
        Each detection takes the still-free ground truth of highest IoU ``>= t`` (ties go
        to the later ground truth, as in pycocotools). With the flags, a free counted
        ground truth beats any ignored one and the result is ``(tp, ignored)``, both
        ``[D, T]``: ignored = matched to an ignored ground truth, or unmatched and outside.
    """
    num_dt, num_gt = ious.shape
    crowd = np.zeros(num_gt, bool) if gt_crowd is None else np.asarray(gt_crowd, bool)
    gt_ig = np.zeros(num_gt, bool) if gt_ignore is None else np.asarray(gt_ignore, bool)
    gt_ig = gt_ig | crowd
    matched = np.zeros((num_dt, len(IOU_THRESHOLDS)), dtype=bool)
    on_ignored = np.zeros_like(matched)
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]  # [T, 1]
    taken = np.zeros((len(IOU_THRESHOLDS), num_gt), dtype=bool)  # [T, G]
    rows = np.arange(len(IOU_THRESHOLDS))
    for d in range(num_dt if num_gt else 0):  # no GT: nothing to match
        free = (~taken | crowd) & (ious[d] >= thresholds)  # [T, G]
        best, ok = _last_best(np.where(free & ~gt_ig, ious[d], -1.0))  # counted GT first
        best_ig, ok_ig = _last_best(np.where(free & gt_ig, ious[d], -1.0))
        ok_ig &= ~ok
        best = np.where(ok, best, best_ig)
        matched[d], on_ignored[d] = ok, ok_ig
        use_up = (ok | ok_ig) & ~crowd[best]  # [T], a crowd region stays free
        taken[rows[use_up], best[use_up]] = True
    if gt_ignore is None and dt_outside is None and gt_crowd is None:
        return matched
    outside = np.zeros(num_dt, bool) if dt_outside is None else np.asarray(dt_outside, bool)
    return matched, on_ignored | (~matched & ~on_ignored & outside[:, None])


def _last_best(cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[T, G]`` IoUs (-1 = not eligible) -> last argmax ``[T]`` and whether it is eligible."""
    best = cand.shape[1] - 1 - np.argmax(cand[:, ::-1], axis=1)  # [T] last maximum
    return best, cand[np.arange(cand.shape[0]), best] >= 0


def _range_status(
    ious: np.ndarray, gt_in: np.ndarray, dt_in: np.ndarray, crowd: np.ndarray | None = None
) -> np.ndarray:
    """COCO ``evaluateImg`` of one image and class for every area range.

    Args:
        ious: ``[D, G]`` as for ``match_detections``.
        gt_in, dt_in: ``[G, R]`` / ``[D, R]`` bool, area inside ``AREA_RANGES[r]``.
        crowd: ``[G]`` bool, columns that are ignore regions (None = none).

    Returns:
        ``[D, R, T]`` int8: 1 true positive, 0 false positive, -1 ignored.
    """
    has_crowd = crowd is not None and bool(crowd.any())
    # [D, T] matches without ranges; unused with crowd columns (every range matches again)
    matched = np.zeros((0, 0), bool) if has_crowd else match_detections(ious)
    status = np.empty((ious.shape[0], len(AREA_RANGES), len(IOU_THRESHOLDS)), np.int8)
    for r in range(len(AREA_RANGES)):
        ignore = ~gt_in[:, r]  # [G]
        if has_crowd or (ignore.any() and not ignore.all()):  # crowd or a split: match again
            tp, ignored = match_detections(ious, ignore, ~dt_in[:, r], crowd)
        else:  # same matches as with no range, to counted GTs only or ignored ones only
            on_ignored = matched & bool(ignore.any())
            tp = matched & ~on_ignored
            ignored = on_ignored | (~matched & ~dt_in[:, r, None])
        status[:, r] = np.where(ignored, -1, tp.astype(np.int8))
    return status


def _in_ranges(boxes: torch.Tensor, scale: float) -> np.ndarray:
    """``[N, 4]`` xyxy network pixels -> ``[N, R]`` bool, source-pixel area in each range."""
    area = box_ops.box_area(boxes).numpy() / scale**2  # [N], network -> source pixels
    return (area[:, None] >= AREA_RANGES[:, 0]) & (area[:, None] <= AREA_RANGES[:, 1])


def interpolated_ap(tp: np.ndarray, fp: np.ndarray, num_gt: int) -> float:
    """101-point interpolated AP from cumulative TP / FP counts in score order (COCO)."""
    recall = tp / num_gt
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")  # [101]
    sampled = np.zeros(len(RECALL_POINTS))
    inside = idx < len(precision)
    sampled[inside] = precision[idx[inside]]
    return float(sampled.mean())


class DetectionEvaluator:
    """COCO-style ``det/mAP50``, ``det/mAP50_95``, ``det/recall`` and ``det/mAP_small``,
    ``_medium``, ``_large`` (COCO's APs / APm / APl, mAP@[.5:.95]) over a split.

    ``det/recall`` is the class-mean recall at IoU 0.5 of all scored detections (COCO's
    ``recall[0]``); METRICS.md defines it for predictions made with ``conf = EVAL_CONF``
    (0.001) and NMS IoU ``EVAL_IOU`` (0.6) — the caller must decode with those settings
    (``MetricsSuite`` does). Boxes may be in any one pixel frame shared by predictions and
    ground truth (network pixels in this package); the area ranges are defined on the
    source image, so each image's ``scale`` (network / source pixels, the letterbox scale)
    converts areas. Per detection only its match status in each range is kept, not boxes.
    Ignore regions passed to ``update`` act as crowds of every class (module docstring).
    """

    def __init__(self, max_dets: int = COCO_MAX_DETS) -> None:
        self.max_dets = max_dets
        self.reset()

    def reset(self) -> None:
        self._images: list[ImageRecord] = []

    @property
    def num_images(self) -> int:
        return len(self._images)

    def state(self) -> list[ImageRecord]:
        """What ``compute`` needs, per image (picklable): merge with ``merge``."""
        return list(self._images)

    def merge(self, state: Sequence[ImageRecord]) -> None:
        """Add another evaluator's images (another process's shard of the split)."""
        self._images.extend(state)

    def update(
        self,
        detections: Sequence[Detections],
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        labeled: Sequence[bool],
        scales: Sequence[float] | None = None,
        ignore: Sequence[torch.Tensor] | None = None,
        keys: Sequence[tuple] | None = None,
    ) -> None:
        """Add images: detections, ``[G, 4]`` xyxy boxes, ``[G]`` labels; unlabeled skipped.

        ``scales``: per image network pixels per source pixel (``Batch.letterbox[:, 0]``),
        for the area ranges; None = 1 (boxes already in source pixels). ``ignore``: per
        image ``[M, 4]`` xyxy ignore regions in the boxes' frame (``Batch.ignore``).
        ``keys``: per image, its place in the split (e.g. ``(dataset, index)``). COCO breaks
        score ties by image order, so images gathered from several processes are put
        back in split order by key before scoring; None = the order they arrive in.
        """
        scales = [1.0] * len(detections) if scales is None else scales
        ignore = [None] * len(detections) if ignore is None else ignore
        keys = [None] * len(detections) if keys is None else keys
        for det, boxes, labels, is_labeled, scale, regions, key in zip(
            detections, gt_boxes, gt_labels, labeled, scales, ignore, keys, strict=True
        ):
            if bool(is_labeled):
                self._images.append(self._record(det, boxes, labels, float(scale), regions, key))

    def _record(
        self,
        det: Detections,
        gt_boxes: torch.Tensor,
        gt_labels: torch.Tensor,
        scale: float = 1.0,
        ignore: torch.Tensor | None = None,
        key: tuple | None = None,
    ) -> ImageRecord:
        regions = torch.zeros(0, 4) if ignore is None else ignore  # [M, 4]
        regions = regions.detach().to("cpu", torch.float64).reshape(-1, 4)
        crowd_in = np.ones((len(regions), len(AREA_RANGES)), bool)  # [M, R], unused: ignored
        gt_boxes = gt_boxes.detach().to("cpu", torch.float64).reshape(-1, 4)  # [G, 4]
        gt_labels_np = gt_labels.detach().cpu().numpy().astype(np.int64).reshape(-1)  # [G]
        dt_boxes = det.boxes.detach().to("cpu", torch.float64).reshape(-1, 4)  # [N, 4]
        scores = det.scores.detach().cpu().numpy().astype(np.float64).reshape(-1)  # [N]
        labels = det.labels.detach().cpu().numpy().astype(np.int64).reshape(-1)  # [N]
        gt_in, dt_in = _in_ranges(gt_boxes, scale), _in_ranges(dt_boxes, scale)  # [G|N, R]
        kept_scores, kept_labels, status = [], [], []  # per class present
        for k in np.unique(labels):
            idx = np.flatnonzero(labels == k)
            idx = idx[np.argsort(-scores[idx], kind="mergesort")][: self.max_dets]
            gt_k = gt_boxes[torch.from_numpy(gt_labels_np == k)]  # [G_k, 4]
            dt_k = dt_boxes[torch.from_numpy(idx)]  # [D_k, 4]
            # exact IoU as COCO (no eps: an IoU of exactly 0.5 must still match at 0.5)
            ious = box_ops.aligned_iou(dt_k[:, None], gt_k[None], eps=0.0)  # -> [D_k, G_k]
            ioa = box_ops.aligned_ioa(dt_k[:, None], regions[None])  # -> [D_k, M]
            ious = torch.cat([ious, ioa], dim=1)  # [D_k, G_k + M], regions as crowd columns
            crowd = np.arange(ious.shape[1]) >= len(gt_k)  # [G_k + M]
            gt_in_k = np.concatenate([gt_in[gt_labels_np == k], crowd_in])  # [G_k + M, R]
            kept_scores.append(scores[idx])
            kept_labels.append(np.full(len(idx), k, dtype=np.int64))
            status.append(_range_status(ious.numpy(), gt_in_k, dt_in[idx], crowd))
        empty = np.zeros((0, len(AREA_RANGES), len(IOU_THRESHOLDS)), np.int8)
        return ImageRecord(
            key,
            np.concatenate([np.zeros(0), *kept_scores]),
            np.concatenate([np.zeros(0, np.int64), *kept_labels]),
            np.concatenate([empty, *status]),
            gt_labels_np,
            gt_in,
        )

    def compute(self) -> dict[str, float]:
        """The detection keys; NaN when no labeled image has a ground-truth box, and an
        area key NaN when no ground truth falls in its range."""
        images = self._images
        if images and all(r.key is not None for r in images):
            images = sorted(images, key=lambda r: r.key)  # stable: split order
        gt_labels = np.concatenate([np.zeros(0, np.int64), *(r.gt_labels for r in images)])
        gt_in = np.concatenate(
            [np.zeros((0, len(AREA_RANGES)), bool), *(r.gt_in for r in images)]
        )  # [G, R]
        scores = np.concatenate([np.zeros(0), *(r.scores for r in images)])  # [M], image order
        labels = np.concatenate([np.zeros(0, np.int64), *(r.labels for r in images)])  # [M]
        empty = np.zeros((0, len(AREA_RANGES), len(IOU_THRESHOLDS)), np.int8)
        status = np.concatenate([empty, *(r.status for r in images)])  # [M, R, T]
        ap, recall = _class_ap(scores, labels, status[:, 0], np.bincount(gt_labels[gt_in[:, 0]]))
        out = {
            "det/mAP50": float(ap[:, 0].mean()) if ap.size else math.nan,
            "det/mAP50_95": float(ap.mean()) if ap.size else math.nan,
            "det/recall": float(recall.mean()) if recall.size else math.nan,
        }
        for r, key in enumerate(AREA_KEYS, start=1):
            ap, _ = _class_ap(scores, labels, status[:, r], np.bincount(gt_labels[gt_in[:, r]]))
            out[key] = float(ap.mean()) if ap.size else math.nan
        return out


def _class_ap(
    scores: np.ndarray, labels: np.ndarray, status: np.ndarray, num_gt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """COCO ``accumulate`` for one area range: AP ``[K', T]`` and recall at IoU 0.5 ``[K']``.

    Args:
        scores, labels: ``[M]`` all scored detections of the split, image order.
        status: ``[M, T]`` int8, 1 TP, 0 FP, -1 ignored (counts as neither).
        num_gt: ``[K]`` counted ground truths per class; classes with none are left out.
    """
    classes = np.flatnonzero(num_gt)
    ap = np.zeros((len(classes), len(IOU_THRESHOLDS)))  # [K', T]
    recall = np.zeros(len(classes))  # [K'] at IoU 0.5
    for i, k in enumerate(classes):
        sel = labels == k
        if not sel.any():
            continue  # a class with ground truth but no detection: AP 0, recall 0
        order = np.argsort(-scores[sel], kind="mergesort")  # stable, as COCO
        tp = np.cumsum(status[sel][order] == 1, axis=0, dtype=np.float64)  # [D, T]
        fp = np.cumsum(status[sel][order] == 0, axis=0, dtype=np.float64)  # [D, T]
        ap[i] = [interpolated_ap(tp[:, t], fp[:, t], num_gt[k]) for t in range(tp.shape[1])]
        recall[i] = tp[-1, 0] / num_gt[k]
    return ap, recall


def to_coco(
    detections: Sequence[Detections],
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    num_classes: int,
    scales: Sequence[float] | None = None,
    ignore: Sequence[torch.Tensor] | None = None,
) -> tuple[dict, list[dict]]:
    """The same images as a COCO ground-truth dict and a COCO results list.

    Image ``i`` gets id ``i + 1`` and class ``k`` category id ``k + 1``; boxes become
    ``[x, y, w, h]``. Feed to pycocotools / faster-coco-eval (``COCO(gt)``,
    ``loadRes(results)``, iouType ``"bbox"``) to cross-check ``DetectionEvaluator``.
    A ground truth's ``area`` is in source pixels (``w * h / scales[i] ** 2``), as
    ``DetectionEvaluator.update(..., scales)`` measures it; ``loadRes`` recomputes result
    areas from the boxes, so with a scale != 1 divide those by ``scale ** 2`` too.
    ``ignore`` regions become ``iscrowd=1`` annotations, one per class (COCO crowds have
    a class, ours apply to all), after the image's ground truth.
    """
    images, annotations, results = [], [], []
    scales = [1.0] * len(detections) if scales is None else scales
    ignore = [torch.zeros(0, 4)] * len(detections) if ignore is None else ignore
    for i, (det, boxes, labels) in enumerate(zip(detections, gt_boxes, gt_labels, strict=True)):
        images.append({"id": i + 1, "width": 0, "height": 0})
        crowds = [(box, k, 1) for box in ignore[i].tolist() for k in range(num_classes)]
        objects = [(box, int(k), 0) for box, k in zip(boxes.tolist(), labels.tolist(), strict=True)]
        for box, label, iscrowd in objects + crowds:
            xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3] / float(scales[i]) ** 2,
                    "iscrowd": iscrowd,
                }
            )
        for box, score, label in zip(
            det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True
        ):
            xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            results.append(
                {"image_id": i + 1, "category_id": int(label) + 1, "bbox": xywh, "score": score}
            )
    categories = [{"id": k + 1, "name": str(k)} for k in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}, results
