"""``evaluation.metrics`` against faster-coco-eval and hand-computed counts (METRICS.md)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from conftest import EVAL_KEYS

from perception.evaluation.metrics import (
    AREA_KEYS,
    DepthEvaluator,
    DetectionEvaluator,
    MetricsSuite,
    SegmentationEvaluator,
    to_coco,
)
from perception.structures import Batch, Detections, HeadOutputs

NUM_CLASSES = 3


# ------------------------------------------------------------------------------ detection
def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 200, size=(n, 2))
    wh = rng.uniform(4, 60, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def _random_split(seed: int, num_images: int = 20):
    """GT and predictions with the awkward cases: empty images, unused classes, duplicates."""
    rng = np.random.default_rng(seed)
    dets, gt_boxes, gt_labels = [], [], []
    for i in range(num_images):
        n_gt = 0 if i % 5 == 0 else int(rng.integers(1, 7))
        boxes = _random_boxes(rng, n_gt)
        labels = rng.integers(0, NUM_CLASSES, n_gt)
        size = np.tile(boxes[:, 2:] - boxes[:, :2], 2)  # [n, 4] (w, h, w, h)
        jitter = boxes + rng.normal(0, 0.08, size=boxes.shape) * size  # hits and near misses
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        pred_labels = np.where(rng.random(n_gt) < 0.85, labels, rng.integers(0, NUM_CLASSES, n_gt))
        extra = _random_boxes(rng, int(rng.integers(0, 6)))  # false positives
        p_boxes = np.concatenate([jitter, extra, jitter[:2]])  # duplicates, tied scores
        p_labels = np.concatenate([pred_labels, rng.integers(0, 2, len(extra)), pred_labels[:2]])
        hit_scores = rng.uniform(0.2, 1.0, n_gt)
        scores = np.concatenate([hit_scores, rng.uniform(0.001, 0.7, len(extra)), hit_scores[:2]])
        if i == 3:  # more than maxDets=100 detections of one class in one image
            p_boxes = np.concatenate([p_boxes, _random_boxes(rng, 120)])
            p_labels = np.concatenate([p_labels, np.zeros(120, np.int64)])
            scores = np.concatenate([scores, rng.uniform(0.001, 0.3, 120)])
        p_labels = np.where(p_labels == 2, 1, p_labels) if seed % 2 else p_labels  # no class 2
        dets.append(
            Detections(
                torch.tensor(p_boxes, dtype=torch.float32),
                torch.tensor(scores, dtype=torch.float32),
                torch.tensor(p_labels, dtype=torch.int64),
            )
        )
        gt_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        gt_labels.append(torch.tensor(labels, dtype=torch.int64))
    return dets, gt_boxes, gt_labels


def coco_reference(dets, gt_boxes, gt_labels, scales=None, ignore=None) -> dict[str, float]:
    from faster_coco_eval import COCO, COCOeval_faster

    gt, results = to_coco(dets, gt_boxes, gt_labels, NUM_CLASSES, scales, ignore=ignore)
    quiet = logging.getLogger("faster_coco_eval_test").debug
    coco_gt = COCO(gt, print_function=quiet)
    coco_dt = coco_gt.loadRes(results)
    for ann in coco_dt.dataset["annotations"] if scales is not None else []:
        ann["area"] /= float(scales[ann["image_id"] - 1]) ** 2  # loadRes: network pixels
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    recall = ev.eval["recall"][0, :, 0, -1]  # [T, K, A, M] -> IoU 0.5, all areas, 100 dets
    return {
        "det/mAP50": float(ev.stats[1]),
        "det/mAP50_95": float(ev.stats[0]),
        "det/recall": float(recall[recall > -1].mean()),
        # APs, APm, APl (maxDets 100); -1 = no ground truth in the range
        **{
            k: float(v) if v > -1 else math.nan
            for k, v in zip(AREA_KEYS, ev.stats[3:6], strict=True)
        },
    }


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_detection_map_agrees_with_faster_coco_eval(seed):
    dets, gt_boxes, gt_labels = _random_split(seed)
    if seed == 3:  # coarse scores: many ties across images and classes
        dets = [Detections(d.boxes, torch.round(d.scores * 5) / 5, d.labels) for d in dets]
    # letterbox scales: 4..60 px boxes straddle 32^2 and 96^2 source pixels (seed 0: none)
    scales = None if seed == 0 else np.random.default_rng(seed).choice([1.0, 0.5, 0.3], 20)
    ev = DetectionEvaluator()
    ev.update(dets, gt_boxes, gt_labels, [True] * len(dets), scales=scales)
    ours, ref = ev.compute(), coco_reference(dets, gt_boxes, gt_labels, scales)
    assert list(ours) == ["det/mAP50", "det/mAP50_95", "det/recall", *AREA_KEYS]
    assert 0.1 < ref["det/mAP50_95"] < ref["det/mAP50"] < 0.95  # a non-trivial case
    for key in ref:  # the area ranges agree to rounding
        tol = 1e-9 if key in AREA_KEYS else 1e-3
        assert ours[key] == pytest.approx(ref[key], abs=tol, nan_ok=True), key
    for key in AREA_KEYS[: 3 if seed else 2]:  # every range populated (scale 1: no large)
        assert 0.05 < ref[key] < 0.95, key


def _xyxy(*boxes: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def test_detection_small_missed_large_found():
    large = ((40.0, 0.0, 150.0, 100.0), (0.0, 110.0, 100.0, 220.0))  # 11000 px^2 each
    gt_boxes = [_xyxy((0.0, 0.0, 20.0, 20.0), *large)]  # 400 px^2: small
    dets = [Detections(_xyxy(*large), torch.tensor([0.9, 0.8]), torch.tensor([0, 0]))]
    ev = DetectionEvaluator()
    ev.update(dets, gt_boxes, [torch.tensor([0, 0, 0])], [True])
    ours = ev.compute()
    assert ours["det/mAP_small"] == 0.0 and ours["det/mAP_large"] == 1.0
    assert math.isnan(ours["det/mAP_medium"])  # no ground truth in range: NaN
    ref = coco_reference(dets, gt_boxes, [torch.tensor([0, 0, 0])])
    assert ours == pytest.approx(ref, abs=1e-12, nan_ok=True)
    # at letterbox scale 0.25 a found 30 x 30 box is 14400 source px^2 (large), and a
    # missed 5 x 5 one 400 (small); at scale 1 the found box would count as small
    gt_boxes = [_xyxy((0.0, 0.0, 5.0, 5.0), (10.0, 0.0, 40.0, 30.0))]
    gt_labels = [torch.tensor([0, 0])]
    dets = [Detections(gt_boxes[0][1:], torch.tensor([0.9]), torch.tensor([0]))]
    for scales, small, large in (([0.25], 0.0, 1.0), (None, 0.5, math.nan)):
        ev = DetectionEvaluator()
        ev.update(dets, gt_boxes, gt_labels, [True], scales=scales)
        ours = ev.compute()
        assert ours["det/mAP_small"] == pytest.approx(small, abs=0.01)
        assert ours["det/mAP_large"] == pytest.approx(large, nan_ok=True)
        assert ours == pytest.approx(
            coco_reference(dets, gt_boxes, gt_labels, scales), abs=1e-12, nan_ok=True
        )


def test_detection_area_range_prefers_the_counted_ground_truth():
    """A 1089 px^2 detection overlaps a small (992) and a medium (1122) GT with IoU .911 and
    .914: in each range it matches the counted GT, as COCO does, not the higher IoU; a
    GT of exactly 32^2 counts as small and medium (COCO's ranges are closed)."""
    gt_boxes = [_xyxy((0.0, 0.0, 31.0, 32.0), (1.0, 0.0, 34.0, 34.0), (50.0, 0.0, 82.0, 32.0))]
    gt_labels = [torch.tensor([1, 1, 2])]
    boxes = _xyxy((0.0, 0.0, 33.0, 33.0), (50.0, 0.0, 82.0, 32.0))
    dets = [Detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([1, 2]))]
    ev = DetectionEvaluator()
    ev.update(dets, gt_boxes, gt_labels, [True])
    ours = ev.compute()
    assert ours["det/mAP_small"] == pytest.approx((0.9 + 1.0) / 2)  # IoU .911 < 0.95
    assert ours["det/mAP_medium"] == pytest.approx((0.9 + 1.0) / 2)
    assert ours == pytest.approx(coco_reference(dets, gt_boxes, gt_labels), abs=1e-12, nan_ok=True)


def test_detection_iou_exactly_at_a_threshold_matches_like_coco():
    gt_boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 40.0, 20.0]])]
    gt_labels = [torch.tensor([0, 0])]
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [20.0, 0.0, 40.0, 15.0]])  # IoU 0.5, 0.75
    dets = [Detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]))]
    ev = DetectionEvaluator()
    ev.update(dets, gt_boxes, gt_labels, [True])
    ours, ref = ev.compute(), coco_reference(dets, gt_boxes, gt_labels)
    assert ours["det/mAP50"] == 1.0
    assert ours == pytest.approx(ref, abs=1e-12, nan_ok=True)


def test_perfect_predictions_score_one():
    _, gt_boxes, gt_labels = _random_split(0)
    dets = [
        Detections(b, torch.ones(len(b)), lb) for b, lb in zip(gt_boxes, gt_labels, strict=True)
    ]
    ev = DetectionEvaluator()
    ev.update(dets, gt_boxes, gt_labels, [True] * len(dets))
    out = ev.compute()
    assert math.isnan(out.pop("det/mAP_large"))  # 4..60 px boxes at scale 1: none large
    assert out == dict.fromkeys(["det/mAP50", "det/mAP50_95", "det/recall", *AREA_KEYS[:2]], 1.0)


def test_detection_accumulation_and_unlabeled_images():
    dets, gt_boxes, gt_labels = _random_split(1)
    once = DetectionEvaluator()
    once.update(dets, gt_boxes, gt_labels, [True] * len(dets))
    chunked = DetectionEvaluator()
    for start in range(0, len(dets), 6):
        sl = slice(start, start + 6)
        chunked.update(dets[sl], gt_boxes[sl], gt_labels[sl], [True] * len(dets[sl]))
        junk = _random_split(start + 10, num_images=2)[0]  # unlabeled: must not count
        chunked.update(
            junk, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.int64)] * 2, [False, False]
        )
    assert chunked.compute() == once.compute()
    assert chunked.num_images == len(dets)


def test_detection_without_labels_is_nan():
    ev = DetectionEvaluator()
    assert all(math.isnan(v) for v in ev.compute().values())
    dets, gt_boxes, gt_labels = _random_split(0, num_images=1)  # image 0: no GT
    ev.update(dets, gt_boxes, gt_labels, [True])
    assert all(math.isnan(v) for v in ev.compute().values())


# ---------------------------------------------------------------------------- segmentation
def _seg_case():
    """Lane: 2 x 4 x 4 with known counts; sample 1 is unlabeled for lane."""
    lane = torch.tensor(
        [[[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 255, 1], [0, 0, 0, 1]]], dtype=torch.uint8
    )
    prob = torch.tensor(
        [[[0.9, 0.2, 0.7, 0.1], [0.8, 0.1, 0.1, 0.1], [0.1, 0.1, 0.9, 0.9], [0.1, 0.9, 0.1, 0.9]]]
    )
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 3, 3] = False  # padding: a lane pixel predicted lane, must not count
    # counted: TP (0,0),(1,0),(2,3) = 3; FN (0,1) = 1; FP (0,2),(3,1) = 2; TN 16-3-1-2-2 = 8
    return lane, prob, valid, dict(tp=3, fp=2, fn=1, tn=8)


def test_segmentation_counts():
    lane, prob, valid, c = _seg_case()
    lane2 = torch.cat([lane, torch.ones_like(lane)])  # sample 1: all lane, but unlabeled
    probs = torch.stack([torch.cat([prob, torch.zeros_like(prob)])] * 2, dim=1)  # [2, 2, 4, 4]
    drivable = lane2.clone()
    drivable[0, 2, 2] = 0  # drivable has no ignore pixel: pred .9 on bg -> FP
    ev = SegmentationEvaluator()
    ev.update(
        probs,
        lane=lane2,
        drivable=drivable,
        valid=torch.cat([valid, valid]),
        has_lane=torch.tensor([True, False]),
        has_drivable=torch.tensor([True, False]),
    )
    out = ev.compute()
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    assert out["lane/iou"] == pytest.approx(tp / (tp + fp + fn))
    assert out["lane/acc"] == pytest.approx(tp / (tp + fn))
    assert out["lane/acc_balanced"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    fp += 1  # the former ignore pixel
    miou = (tp / (tp + fp + fn) + tn / (tn + fn + fp)) / 2
    assert out["drivable/miou"] == pytest.approx(miou)


def test_segmentation_accumulates_and_skips_unlabeled():
    lane, prob, valid, _ = _seg_case()
    probs = torch.stack([prob, prob], dim=1)  # [1, 2, 4, 4]
    kw = dict(lane=lane, drivable=lane, valid=valid)
    once, twice = SegmentationEvaluator(), SegmentationEvaluator()
    once.update(
        torch.cat([probs, probs]),
        lane=torch.cat([lane, lane]),
        drivable=torch.cat([lane, lane]),
        valid=torch.cat([valid, valid]),
        has_lane=torch.tensor([True, True]),
        has_drivable=torch.tensor([True, True]),
    )
    for _ in range(2):
        twice.update(probs, **kw, has_lane=torch.tensor([True]), has_drivable=torch.tensor([True]))
    twice.update(probs, **kw, has_lane=torch.tensor([False]), has_drivable=torch.tensor([False]))
    assert once.compute() == twice.compute()
    empty = SegmentationEvaluator().compute()
    assert all(math.isnan(v) for v in empty.values())


# ----------------------------------------------------------------------------------- depth
def test_depth_metrics_match_numpy():
    rng = np.random.default_rng(0)
    target = rng.uniform(0.5, 100.0, size=(3, 8, 8)).astype(np.float32)
    target[0, :2] = 0.0  # no measurement
    pred = (target * rng.uniform(0.7, 1.4, size=target.shape)).astype(np.float32)
    pred[1, 0, :3] = [0.0, 1e-6, 500.0]  # clamped to [1e-3, 80]
    valid = np.ones_like(target, dtype=bool)
    valid[1, :, -1] = False
    labeled = np.array([True, True, False])
    ev = DepthEvaluator()
    t = torch.from_numpy
    ev.update(t(pred)[:, None], t(target), valid=t(valid), labeled=t(labeled))
    mask = (target > 0) & valid & labeled[:, None, None]
    d = np.clip(pred[mask].astype(np.float64), 1e-3, 80.0)
    g = np.clip(target[mask].astype(np.float64), 1e-3, 80.0)
    ratio = np.maximum(d / g, g / d)
    expected = {
        "depth/abs_rel": np.mean(np.abs(d - g) / g),
        "depth/sq_rel": np.mean((d - g) ** 2 / g),
        "depth/rmse": np.sqrt(np.mean((d - g) ** 2)),
        "depth/rmse_log": np.sqrt(np.mean((np.log(d) - np.log(g)) ** 2)),
        **{f"depth/delta{k}": np.mean(ratio < 1.25**k) for k in (1, 2, 3)},
    }
    out = ev.compute()
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-6), key
    # accumulation: one sample at a time gives the same sums
    split = DepthEvaluator()
    for i in range(3):
        sl = slice(i, i + 1)
        split.update(t(pred)[sl], t(target)[sl], valid=t(valid)[sl], labeled=t(labeled)[sl])
    assert split.compute() == pytest.approx(out, rel=1e-12)
    assert all(math.isnan(v) for v in DepthEvaluator().compute().values())


# ----------------------------------------------------------------------------------- suite
def _batch(num: int, h: int = 32, w: int = 64, labeled: bool = True) -> Batch:
    flags = torch.full((num,), labeled)
    lane = torch.zeros(num, h, w, dtype=torch.uint8)
    lane[:, :, w // 2] = 1
    return Batch(
        images=torch.zeros(num, 3, h, w, dtype=torch.uint8),
        boxes=[torch.tensor([[8.0, 8.0, 24.0, 24.0]])] * num,
        labels=[torch.tensor([1])] * num,
        lane=lane if labeled else torch.full_like(lane, 255),
        drivable=lane.clone() if labeled else torch.full_like(lane, 255),
        depth=torch.full((num, h, w), 10.0 if labeled else 0.0),
        valid=torch.ones(num, h, w, dtype=torch.bool),
        has_det=flags,
        has_lane=flags.clone(),
        has_drivable=flags.clone(),
        has_depth=flags.clone(),
        camera=torch.full((num, 4), float("nan")),
        letterbox=torch.tensor([[1.0, 0.0, 0.0, h, w]] * num),
    )


def _perfect_outputs(batch: Batch, points: torch.Tensor, strides: torch.Tensor) -> HeadOutputs:
    num, h, w = batch.lane.shape
    a = int(torch.nonzero((points == torch.tensor([12.0, 12.0])).all(1) & (strides == 8))[0, 0])
    cls_logits = torch.full((num, len(points), NUM_CLASSES), -20.0)
    cls_logits[:, a, 1] = 8.0
    raw = math.log(math.expm1(4.0 / 8))  # 4 px left/up, 12 px right/down from (12, 12)
    box_dist = torch.full((num, len(points), 4), raw)
    box_dist[:, a, 2:] = math.log(math.expm1(12.0 / 8))
    seg = (batch.lane.float() * 40 - 20)[:, None].repeat(1, 2, 1, 1)  # [B, 2, H, W]
    depth_log = torch.full((num, 1, h, w), math.log(10.0))
    return HeadOutputs(cls_logits, box_dist, seg, depth_log)


def test_metrics_suite_keys_perfect_scores_and_nan_for_unlabeled():
    from perception.ops.points import dense_points, level_sizes

    points, strides = dense_points(level_sizes((32, 64), (8, 16, 32)), (8, 16, 32))
    suite = MetricsSuite()
    for labeled in (True, False):
        batch = _batch(2, labeled=labeled)
        suite.update(_perfect_outputs(batch, points, strides), batch, points, strides)
    out = suite.compute()
    assert list(out) == EVAL_KEYS and out["num_images"] == 4
    for key in (
        "det/mAP50",
        "det/mAP50_95",
        "det/recall",
        "det/mAP_small",  # 16 x 16 boxes at letterbox scale 1
        "lane/iou",
        "lane/acc",
        "lane/acc_balanced",
        "drivable/miou",
        "depth/delta1",
    ):
        assert out[key] == pytest.approx(1.0), key
    assert out["depth/abs_rel"] == pytest.approx(0.0, abs=1e-6)
    suite.reset()
    batch = _batch(2, labeled=False)
    suite.update(_perfect_outputs(batch, points, strides), batch, points, strides)
    out = suite.compute()
    assert out["num_images"] == 2
    assert all(math.isnan(v) for k, v in out.items() if k != "num_images")


def test_metrics_suite_measures_areas_in_source_pixels():
    from perception.ops.points import dense_points, level_sizes

    points, strides = dense_points(level_sizes((32, 64), (8, 16, 32)), (8, 16, 32))
    for scale, key in ((1.0, "det/mAP_small"), (0.25, "det/mAP_medium")):  # 256 px^2 boxes
        batch = _batch(2)
        batch.letterbox[:, 0] = scale  # source pixels = network pixels / scale
        suite = MetricsSuite()
        suite.update(_perfect_outputs(batch, points, strides), batch, points, strides)
        out = suite.compute()
        assert out[key] == pytest.approx(1.0), scale
        assert sum(math.isnan(out[k]) for k in AREA_KEYS) == 2, scale
