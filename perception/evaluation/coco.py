"""COCO detection metrics over a whole split: mAP50, mAP50_95, recall, small/medium/large.

Computed by faster-coco-eval (COCO's own algorithm in C++, equal to pycocotools): 101-point
interpolated AP at IoU 0.50:0.05:0.95, greedy matching by score per image and class, at
most ``max_dets`` (100) detections per image and class, mean over classes with at least
one ground-truth box; COCO's small / medium / large area ranges with its ignore rules.
Our part is what COCO does not know: areas are measured in source-image pixels (the
network sees letterboxed images), and ignore regions apply to every class.

Ignore regions (``Batch.ignore``: DontCare, crowds) become COCO ``iscrowd=1`` annotations,
one per class: a detection that matches no counted ground truth but lies inside a region
(intersection over its own area ``>= t``) is ignored, neither TP nor FP, and one region can
absorb any number of detections. Regions are never ground truth, so they do not enter
recall or the AP denominators.

The evaluator keeps each image's boxes until ``compute``, so the images of several
processes (DDP) merge exactly, in split order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from perception.structures import Detections

EVAL_CONF = 0.001  # detection confidence threshold for metrics (det/recall is defined at it)
EVAL_IOU = 0.6  # NMS IoU for metrics
EVAL_MAX_DET = 300  # detections kept per image by NMS for metrics
COCO_MAX_DETS = 100  # COCO's maxDets: detections scored per image and class
AREA_KEYS = ("det/mAP_small", "det/mAP_medium", "det/mAP_large")  # COCO area ranges 1..3

_quiet = logging.getLogger(__name__).debug  # faster-coco-eval prints through this


class ImageRecord(NamedTuple):
    """One labeled image, as COCO needs it (numpy, picklable)."""

    key: tuple | None  # place in the split (``DetectionEvaluator.update``)
    boxes: np.ndarray  # [N, 4] float64 xyxy detections
    scores: np.ndarray  # [N] float64
    labels: np.ndarray  # [N] int64
    gt_boxes: np.ndarray  # [G, 4] float64 xyxy
    gt_labels: np.ndarray  # [G] int64
    ignore: np.ndarray  # [M, 4] float64 xyxy ignore regions
    scale: float  # network pixels per source pixel (areas are in source pixels)


def _numpy(t: torch.Tensor, dtype: type, cols: int | None = None) -> np.ndarray:
    array = t.detach().cpu().numpy().astype(dtype)
    return array.reshape(-1, cols) if cols else array.reshape(-1)


def image_record(
    det: Detections,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    scale: float = 1.0,
    ignore: torch.Tensor | None = None,
    key: tuple | None = None,
) -> ImageRecord:
    """One image's detections, ground truth and ignore regions as an ``ImageRecord``."""
    regions = torch.zeros(0, 4) if ignore is None else ignore
    return ImageRecord(
        key,
        _numpy(det.boxes, np.float64, 4),
        _numpy(det.scores, np.float64),
        _numpy(det.labels, np.int64),
        _numpy(gt_boxes, np.float64, 4),
        _numpy(gt_labels, np.int64),
        _numpy(regions, np.float64, 4),
        float(scale),
    )


class DetectionEvaluator:
    """The COCO detection keys over a split, fed batch by batch.

    ``det/recall`` is the class-mean recall at IoU 0.5 of all scored detections (COCO's
    ``recall[0]``); METRICS.md defines it for predictions made with ``conf = EVAL_CONF``
    (0.001) and NMS IoU ``EVAL_IOU`` (0.6), so the caller decodes with those settings
    (``MetricsSuite`` does). Boxes are in network pixels; ``scales`` (per image, network
    pixels per source pixel) converts areas to source pixels for the area ranges. Ignore
    regions passed to ``update`` act as crowds of every class (module docstring).
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
        n = len(detections)
        scales = [1.0] * n if scales is None else scales
        ignore = [None] * n if ignore is None else ignore
        keys = [None] * n if keys is None else keys
        for det, boxes, labels, is_labeled, scale, regions, key in zip(
            detections, gt_boxes, gt_labels, labeled, scales, ignore, keys, strict=True
        ):
            if bool(is_labeled):
                self._images.append(image_record(det, boxes, labels, scale, regions, key))

    def compute(self) -> dict[str, float]:
        """The detection keys; NaN when no labeled image has a ground-truth box, and an
        area key NaN when no ground truth falls in its range."""
        images = self._images
        if images and all(r.key is not None for r in images):
            images = sorted(images, key=lambda r: r.key)  # stable: split order
        keys = ("det/mAP50", "det/mAP50_95", "det/recall", *AREA_KEYS)
        if not any(len(r.gt_labels) for r in images):
            return dict.fromkeys(keys, math.nan)
        classes = sorted({int(k) for r in images for k in (*r.labels, *r.gt_labels)})
        return coco_metrics(*coco_dicts(images, classes), max_dets=self.max_dets)


def coco_dicts(images: Sequence[ImageRecord], classes: Sequence[int]) -> tuple[dict, list]:
    """The images as a COCO ground-truth dict and a COCO results list.

    Image ``i`` gets id ``i + 1`` and class ``k`` category id ``k + 1``; boxes become
    ``[x, y, w, h]``; each annotation's and result's ``area`` is in source pixels
    (``w * h / scale ** 2``). Ignore regions become ``iscrowd=1`` annotations of every class
    in ``classes``, after the image's ground truth.
    """
    gt_images, annotations, results = [], [], []
    for i, r in enumerate(images):
        gt_images.append({"id": i + 1, "width": 0, "height": 0})
        crowds = [(box, k, 1) for box in r.ignore.tolist() for k in classes]
        objects = [
            (box, int(k), 0) for box, k in zip(r.gt_boxes.tolist(), r.gt_labels, strict=True)
        ]
        for box, label, iscrowd in objects + crowds:
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h / r.scale**2,
                    "iscrowd": iscrowd,
                }
            )
        for box, score, label in zip(r.boxes.tolist(), r.scores.tolist(), r.labels, strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [box[0], box[1], w, h],
                    "score": score,
                    "area": w * h / r.scale**2,
                }
            )
    categories = [{"id": k + 1, "name": str(k)} for k in classes]
    return {"images": gt_images, "annotations": annotations, "categories": categories}, results


def coco_metrics(gt: dict, results: list[dict], max_dets: int = COCO_MAX_DETS) -> dict[str, float]:
    """COCO ``evaluate`` + ``accumulate`` of ``coco_dicts`` output -> the detection keys."""
    from faster_coco_eval import COCO, COCOeval_faster  # imported when scoring starts

    coco_gt = COCO(gt, print_function=_quiet)
    coco_dt = COCO(print_function=_quiet)
    coco_dt.dataset = {
        "images": gt["images"],
        "categories": gt["categories"],
        "annotations": [{**r, "id": i + 1, "iscrowd": 0} for i, r in enumerate(results)],
    }
    coco_dt.createIndex()
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=_quiet)
    ev.params.maxDets = [1, 10, max_dets]
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][..., -1]  # [T, R, K, A] at max_dets
    recall = ev.eval["recall"][0, :, 0, -1]  # [K]: IoU 0.5, all areas, max_dets

    def mean(values: np.ndarray) -> float:
        counted = values[values > -1]  # -1: a class without ground truth (in that range)
        return float(counted.mean()) if counted.size else math.nan

    return {
        "det/mAP50": mean(precision[0, :, :, 0]),
        "det/mAP50_95": mean(precision[:, :, :, 0]),
        "det/recall": mean(recall),
        **{key: mean(precision[:, :, :, a]) for a, key in enumerate(AREA_KEYS, start=1)},
    }


def to_coco(
    detections: Sequence[Detections],
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    num_classes: int,
    scales: Sequence[float] | None = None,
    ignore: Sequence[torch.Tensor] | None = None,
) -> tuple[dict, list[dict]]:
    """``coco_dicts`` of tensors: the images as a COCO ground-truth dict and results list,
    for any COCO tool (``COCO(gt)``, ``loadRes(results)``, iouType ``"bbox"``). ``loadRes``
    recomputes result areas from the boxes: with a scale != 1 divide those by
    ``scale ** 2`` again."""
    n = len(detections)
    scales = [1.0] * n if scales is None else scales
    ignore = [None] * n if ignore is None else ignore
    records = [
        image_record(*parts)
        for parts in zip(detections, gt_boxes, gt_labels, scales, ignore, strict=True)
    ]
    return coco_dicts(records, range(num_classes))
