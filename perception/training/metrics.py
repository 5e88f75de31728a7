"""The SPEC metrics over a whole split, exactly as defined in METRICS.md.

Pure torch / numpy (no Lightning), shared by validation, ``perception eval`` and any
Predictor-based evaluation. Every evaluator *accumulates* (confusion counts, error sums,
per-detection match flags) and ``compute`` reduces once over the split — never a mean of
per-batch values. Everything is at network resolution; padding (``valid`` False), ignore
pixels (255) and samples not labeled for a task never count. A ratio whose denominator is
zero (e.g. no labeled sample for a task, no lane pixel anywhere) is ``NaN``, not an error.

Detection follows COCO (pycocotools / faster-coco-eval) bit for bit for boxes without
crowd or area ranges: 101-point interpolated AP at IoU 0.50:0.05:0.95, greedy matching by
score per image and class, at most ``max_dets`` (100) detections per image *and class*,
mean over classes with at least one ground-truth box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from perception.ops import boxes as box_ops
from perception.postprocess.dense import depth_metres, seg_probabilities
from perception.postprocess.detection import postprocess_detections
from perception.structures import Batch, Detections, HeadOutputs

EVAL_CONF = 0.001  # detection confidence threshold for metrics (det/recall is defined at it)
EVAL_IOU = 0.6  # NMS IoU for metrics
EVAL_MAX_DET = 300  # detections kept per image by NMS for metrics
COCO_MAX_DETS = 100  # COCO's maxDets: detections scored per image and class
IOU_THRESHOLDS = np.linspace(0.5, 0.95, round((0.95 - 0.5) / 0.05) + 1, endpoint=True)  # [T]
RECALL_POINTS = np.linspace(0.0, 1.0, round(1.0 / 0.01) + 1, endpoint=True)  # [101]


# ------------------------------------------------------------------------------ detection
def match_detections(ious: np.ndarray) -> np.ndarray:
    """COCO greedy matching of one image and class at every IoU threshold.

    Args:
        ious: ``[D, G]`` IoU of detections (sorted by decreasing score) with ground truth.

    Returns:
        ``[D, T]`` bool, True where the detection is a true positive at ``IOU_THRESHOLDS[t]``.
        Each detection takes the still-free ground truth of highest IoU ``>= t`` (ties go
        to the later ground truth, as in pycocotools).
    """
    num_dt, num_gt = ious.shape
    matched = np.zeros((num_dt, len(IOU_THRESHOLDS)), dtype=bool)
    if num_gt == 0:
        return matched
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]  # [T, 1]
    taken = np.zeros((len(IOU_THRESHOLDS), num_gt), dtype=bool)  # [T, G]
    rows = np.arange(len(IOU_THRESHOLDS))
    for d in range(num_dt):
        cand = np.where(~taken & (ious[d] >= thresholds), ious[d], -1.0)  # [T, G]
        best = num_gt - 1 - np.argmax(cand[:, ::-1], axis=1)  # [T] last maximum
        ok = cand[rows, best] >= 0  # [T]
        matched[d] = ok
        taken[rows[ok], best[ok]] = True
    return matched


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
    """COCO-style ``det/mAP50``, ``det/mAP50_95`` and ``det/recall`` over a split.

    ``det/recall`` is the class-mean recall at IoU 0.5 of all scored detections (COCO's
    ``recall[0]``); METRICS.md defines it for predictions made with ``conf = EVAL_CONF``
    (0.001) and NMS IoU ``EVAL_IOU`` (0.6) — the caller must decode with those settings
    (``MetricsSuite`` does). Boxes may be in any one pixel frame shared by predictions and
    ground truth (network pixels in this package).
    """

    def __init__(self, max_dets: int = COCO_MAX_DETS) -> None:
        self.max_dets = max_dets
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []  # per (image, class): [D] float64
        self._labels: list[np.ndarray] = []  # [D] int64
        self._matched: list[np.ndarray] = []  # [D, T] bool
        self._gt_labels: list[np.ndarray] = []  # per image: [G] int64
        self.num_images = 0

    def update(
        self,
        detections: Sequence[Detections],
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        labeled: Sequence[bool],
    ) -> None:
        """Add images: detections, ``[G, 4]`` xyxy boxes, ``[G]`` labels; unlabeled skipped."""
        for det, boxes, labels, is_labeled in zip(
            detections, gt_boxes, gt_labels, labeled, strict=True
        ):
            if bool(is_labeled):
                self._add_image(det, boxes, labels)

    def _add_image(self, det: Detections, gt_boxes: torch.Tensor, gt_labels: torch.Tensor) -> None:
        gt_boxes = gt_boxes.detach().to("cpu", torch.float64).reshape(-1, 4)  # [G, 4]
        gt_labels_np = gt_labels.detach().cpu().numpy().astype(np.int64).reshape(-1)  # [G]
        dt_boxes = det.boxes.detach().to("cpu", torch.float64).reshape(-1, 4)  # [N, 4]
        scores = det.scores.detach().cpu().numpy().astype(np.float64).reshape(-1)  # [N]
        labels = det.labels.detach().cpu().numpy().astype(np.int64).reshape(-1)  # [N]
        for k in np.unique(labels):
            idx = np.flatnonzero(labels == k)
            idx = idx[np.argsort(-scores[idx], kind="mergesort")][: self.max_dets]
            gt_k = gt_boxes[torch.from_numpy(gt_labels_np == k)]  # [G_k, 4]
            dt_k = dt_boxes[torch.from_numpy(idx)]  # [D_k, 4]
            # exact IoU as COCO (no eps: an IoU of exactly 0.5 must still match at 0.5)
            ious = box_ops.aligned_iou(dt_k[:, None], gt_k[None], eps=0.0)  # -> [D_k, G_k]
            self._scores.append(scores[idx])
            self._labels.append(np.full(len(idx), k, dtype=np.int64))
            self._matched.append(match_detections(ious.numpy()))
        self._gt_labels.append(gt_labels_np)
        self.num_images += 1

    def compute(self) -> dict[str, float]:
        """The three detection keys; NaN when no labeled image has a ground-truth box."""
        gt_labels = np.concatenate([np.zeros(0, np.int64), *self._gt_labels])
        classes = np.flatnonzero(np.bincount(gt_labels)) if gt_labels.size else []
        if len(classes) == 0:
            return {"det/mAP50": math.nan, "det/mAP50_95": math.nan, "det/recall": math.nan}
        num_gt = np.bincount(gt_labels)
        scores = np.concatenate([np.zeros(0), *self._scores])  # [M], image order
        labels = np.concatenate([np.zeros(0, np.int64), *self._labels])  # [M]
        matched = np.concatenate([np.zeros((0, len(IOU_THRESHOLDS)), bool), *self._matched])
        ap = np.zeros((len(classes), len(IOU_THRESHOLDS)))  # [K', T]
        recall = np.zeros(len(classes))  # [K'] at IoU 0.5
        for i, k in enumerate(classes):
            sel = labels == k
            if not sel.any():
                continue  # a class with ground truth but no detection: AP 0, recall 0
            order = np.argsort(-scores[sel], kind="mergesort")  # stable, as COCO
            tp = np.cumsum(matched[sel][order], axis=0, dtype=np.float64)  # [D, T]
            fp = np.cumsum(~matched[sel][order], axis=0, dtype=np.float64)  # [D, T]
            ap[i] = [interpolated_ap(tp[:, t], fp[:, t], num_gt[k]) for t in range(tp.shape[1])]
            recall[i] = tp[-1, 0] / num_gt[k]
        return {
            "det/mAP50": float(ap[:, 0].mean()),
            "det/mAP50_95": float(ap.mean()),
            "det/recall": float(recall.mean()),
        }


def to_coco(
    detections: Sequence[Detections],
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    num_classes: int,
) -> tuple[dict, list[dict]]:
    """The same images as a COCO ground-truth dict and a COCO results list.

    Image ``i`` gets id ``i + 1`` and class ``k`` category id ``k + 1``; boxes become
    ``[x, y, w, h]``. Feed to pycocotools / faster-coco-eval (``COCO(gt)``,
    ``loadRes(results)``, iouType ``"bbox"``) to cross-check ``DetectionEvaluator``.
    """
    images, annotations, results = [], [], []
    for i, (det, boxes, labels) in enumerate(zip(detections, gt_boxes, gt_labels, strict=True)):
        images.append({"id": i + 1, "width": 0, "height": 0})
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
            xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
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
class DepthEvaluator:
    """Metric depth errors (METRICS.md) over every valid ground-truth pixel of a split.

    Prediction and ground truth are clamped to ``[min_depth, max_depth]`` metres; no
    median scaling. Pixels count where ``target > 0``, ``valid`` and the sample is labeled.
    """

    _TERMS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")

    def __init__(self, max_depth: float = 80.0, min_depth: float = 1e-3) -> None:
        self.max_depth, self.min_depth = max_depth, min_depth
        self.reset()

    def reset(self) -> None:
        self._sums = torch.zeros(len(self._TERMS), dtype=torch.float64)
        self._count = 0

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        *,
        valid: torch.Tensor,
        labeled: torch.Tensor,
    ) -> None:
        """Add a batch: ``pred`` ``[B, 1, H, W]`` or ``[B, H, W]`` metres, ``target``
        ``[B, H, W]`` metres (0 = no measurement), ``valid`` ``[B, H, W]``, ``labeled`` ``[B]``."""
        pred = pred.reshape(target.shape)  # [B, 1, H, W] -> [B, H, W]
        mask = (target > 0) & valid.bool() & labeled.bool()[:, None, None]  # [B, H, W]
        dtype = torch.float32 if pred.device.type == "mps" else torch.float64
        d = pred[mask].to(dtype).clamp(self.min_depth, self.max_depth)  # [P]
        g = target[mask].to(dtype).clamp(self.min_depth, self.max_depth)  # [P]
        ratio = torch.maximum(d / g, g / d)
        sums = torch.stack(
            [
                ((d - g).abs() / g).sum(),
                ((d - g) ** 2 / g).sum(),
                ((d - g) ** 2).sum(),
                ((d.log() - g.log()) ** 2).sum(),
                *[(ratio < 1.25**k).sum().to(dtype) for k in (1, 2, 3)],
            ]
        )
        self._sums += sums.cpu().double()
        self._count += int(d.numel())

    def compute(self) -> dict[str, float]:
        if self._count == 0:
            return {f"depth/{name}": math.nan for name in self._TERMS}
        mean = dict(zip(self._TERMS, (self._sums / self._count).tolist(), strict=True))
        for name in ("rmse", "rmse_log"):
            mean[name] = math.sqrt(mean[name])
        return {f"depth/{name}": mean[name] for name in self._TERMS}


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
    ) -> None:
        self.detection = DetectionEvaluator(max_dets=max_dets)
        self.segmentation = SegmentationEvaluator(threshold=seg_threshold)
        self.depth = DepthEvaluator(max_depth=max_depth, min_depth=min_depth)
        self.num_images = 0

    def reset(self) -> None:
        self.detection.reset()
        self.segmentation.reset()
        self.depth.reset()
        self.num_images = 0

    @torch.no_grad()
    def update(
        self, outputs: HeadOutputs, batch: Batch, points: torch.Tensor, strides: torch.Tensor
    ) -> None:
        """Score one batch; ``points [A, 2]`` / ``strides [A]`` as from ``ops.points``."""
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
            self.detection.update(dets, batch.boxes, batch.labels, batch.has_det.tolist())
        self.segmentation.update(
            seg_probabilities(outputs.seg_logits),
            lane=batch.lane,
            drivable=batch.drivable,
            valid=batch.valid,
            has_lane=batch.has_lane,
            has_drivable=batch.has_drivable,
        )
        self.depth.update(
            depth_metres(outputs.depth_log),
            batch.depth,
            valid=batch.valid,
            labeled=batch.has_depth,
        )
        self.num_images += len(batch)

    def compute(self) -> dict[str, float]:
        """The SPEC keys in SPEC order (``num_images`` an int)."""
        return {
            **self.detection.compute(),
            **self.segmentation.compute(),
            **self.depth.compute(),
            "num_images": self.num_images,
        }
