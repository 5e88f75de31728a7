"""Detection ignore regions (KITTI ``DontCare``, crowds) end to end: manifest, check-data,
loading, geometry, collate, loss and COCO evaluation.

Every expected coordinate is computed by hand from the transform's definition, so a region
that drifted away from the objects it hides would fail here.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import numpy as np
import pytest
import test_metrics as tm  # as a module: its tests must not be collected here twice
import torch
from conftest import CLASSES, write_manifest

from perception.data.check import check_dataset
from perception.data.collate import collate
from perception.data.datasets import V1Dataset
from perception.data.formats import v1
from perception.data.transforms import AugmentConfig, SampleTransform, letterbox_sample
from perception.evaluation.metrics import DetectionEvaluator, MetricsSuite
from perception.losses import DetectionLoss, MultiTaskLoss
from perception.ops.points import dense_points, level_sizes
from perception.structures import Batch, Detections, HeadOutputs, Sample

H, W = 64, 96
GT = [30.0, 20.0, 50.0, 36.0]
REGION = [60.0, 8.0, 90.0, 40.0]  # right of the GT box, fully inside the image
GEOMETRY_ONLY = dict(photometric=0.0, weather_p=0.0)


# ------------------------------------------------------------------------------- format
def test_manifest_round_trip_and_empty_ignore_is_not_written():
    rec = v1.Record("a", "a.png", W, H, boxes=[GT], labels=["car"], ignore=[REGION])
    raw = json.loads(rec.to_json())
    assert raw["ignore"] == [REGION]
    back = v1.parse_record(raw, 3)
    assert back.ignore == [REGION] and back.boxes == [GT] and back.line == 3
    assert "ignore" not in json.loads(replace(rec, ignore=[]).to_json())
    assert "ignore" not in json.loads(replace(rec, ignore=None).to_json())
    assert v1.parse_record(json.loads(replace(rec, ignore=[]).to_json()), 1).ignore is None


@pytest.mark.parametrize(
    ("ignore", "boxes", "expected"),
    [
        ([REGION, [1, 2, 3]], [GT], "manifest.jsonl:7: ignore box 1 is not [x1, y1, x2, y2]"),
        ([["a", 0, 4, 4]], [GT], "manifest.jsonl:7: ignore box 0 has a non-numeric value"),
        ({"x": 1}, [GT], "manifest.jsonl:7: 'ignore' must be a list"),
        ([REGION], None, "manifest.jsonl:7: 'ignore' needs 'boxes'"),
    ],
)
def test_parse_errors_name_line_and_index(ignore, boxes, expected):
    raw = {"id": "a", "image": "a.png", "width": W, "height": H, "ignore": ignore}
    if boxes is not None:
        raw.update(boxes=boxes, labels=["car"])
    with pytest.raises(v1.DatasetFormatError) as err:
        v1.parse_record(raw, 7)
    assert str(err.value).startswith(expected), str(err.value)


def test_check_data_flags_each_bad_ignore_box(tiny_dataset):
    root = tiny_dataset(num=3)
    records = v1.read_manifest(root)
    records[1] = replace(records[1], ignore=[[0, 0, 10, 10], [40, 20, 30, 30], [90, 0, 120, 9]])
    write_manifest(root, records)
    problems, num = check_dataset(root)
    assert num == 3
    assert [(p.where, p.sample_id) for p in problems] == [("manifest.jsonl:2", "000001")] * 2
    assert problems[0].message == (
        "ignore box 1 [40.0, 20.0, 30.0, 30.0] is degenerate (needs x2 > x1, y2 > y1)"
    )
    assert problems[1].message == (
        "ignore box 2 [90.0, 0.0, 120.0, 9.0] lies outside the 96x64 image"
    )
    records[1] = replace(records[1], ignore=[[0, 0, 10, 10]])
    write_manifest(root, records)
    assert check_dataset(root) == ([], 3)


# ----------------------------------------------------------------------- loading, geometry
def test_dataset_loads_clips_and_collates_ignore(tiny_dataset, caplog):
    root = tiny_dataset(num=3)
    records = v1.read_manifest(root)
    records[1] = replace(records[1], ignore=[[50, 0, 98, 30]])  # 2 px overhang: clipped
    write_manifest(root, records)
    ds = V1Dataset(root, CLASSES)
    assert ds[0].ignore is None
    np.testing.assert_array_equal(ds[1].ignore, [[50, 0, 96, 30]])
    assert ds[1].ignore.dtype == np.float32
    # letterbox 64x96 -> 32x64: scale 0.5, pad_x 8 (net = src * 0.5 + (8, 0))
    net = V1Dataset(root, CLASSES, transform=SampleTransform((32, 64)))
    batch = collate([net[0], net[1]])
    assert batch.ignore[0].shape == (0, 4)
    torch.testing.assert_close(batch.ignore[1], torch.tensor([[33.0, 0.0, 56.0, 15.0]]))
    moved = batch.to("cpu")
    assert len(moved.ignore) == 2 and moved.ignore[1].dtype == torch.float32
    records[1] = replace(records[1], ignore=[[50, 0, 200, 30]])  # far outside: bad sample
    write_manifest(root, records)
    with caplog.at_level(logging.WARNING, logger="perception.data"):
        assert V1Dataset(root, CLASSES)[1] is None
    assert "ignore box 0" in caplog.text


def test_batch_without_ignore_gets_empty_regions():
    batch = collate([Sample("a", np.zeros((8, 8, 3), np.uint8))] * 2)
    assert [tuple(r.shape) for r in batch.ignore] == [(0, 4), (0, 4)]
    bare = replace(batch, ignore=[])  # built without the field, as older code does
    assert len(bare.ignore) == 2
    with pytest.raises(ValueError, match="1 ignore tensors for 2 images"):
        replace(batch, ignore=[torch.zeros(0, 4)])


def _scene() -> Sample:
    return Sample(
        id="s",
        image=np.full((H, W, 3), 30, np.uint8),
        boxes=np.array([GT], np.float32),
        labels=np.array([1]),
        ignore=np.array([REGION], np.float32),
    )


def _augment(**cfg) -> Sample:
    transform = SampleTransform((H, W), AugmentConfig(**cfg, **GEOMETRY_ONLY), None)
    return transform(_scene(), np.random.default_rng(0))


def test_letterbox_moves_ignore_with_the_boxes():
    out = letterbox_sample(_scene(), 32, 64)  # scale 0.5, pad_x 8
    np.testing.assert_allclose(out.boxes, [[23, 10, 33, 18]])
    np.testing.assert_allclose(out.ignore, [[38, 4, 53, 20]])


def test_flip_mirrors_ignore_with_the_boxes():
    out = _augment(flip_p=1.0, zoom_p=0.0)
    np.testing.assert_allclose(out.boxes, [[W - 50, 20, W - 30, 36]])
    np.testing.assert_allclose(out.ignore, [[W - 90, 8, W - 60, 40]])  # x -> W - x
    np.testing.assert_array_equal(out.labels, [1])  # the region did not become a box


def test_zoom_scales_ignore_about_the_centre_and_clips_it():
    s, cx, cy = 1.5, W / 2, H / 2
    out = _augment(flip_p=0.0, zoom_p=1.0, zoom_range=(s, s), translate=0.0)

    def zoom(box):
        return [cx + s * (box[0] - cx), cy + s * (box[1] - cy),
                cx + s * (box[2] - cx), cy + s * (box[3] - cy)]  # fmt: skip

    np.testing.assert_allclose(out.boxes, [zoom(GT)], atol=1e-3)
    x1, y1, x2, y2 = zoom(REGION)  # [66, -4, 111, 44]: sticks out at the top and right
    assert y1 < 0 and x2 > W
    np.testing.assert_allclose(out.ignore, [[x1, 0, W, y2]], atol=1e-3)  # clipped like a box


def test_random_geometry_keeps_region_and_box_offset():
    """Letterbox + random flip / zoom / translate: one affine map moves box and region."""
    for seed in range(4):
        transform = SampleTransform(
            (48, 96), AugmentConfig(zoom_range=(0.8, 1.1), translate=0.05, **GEOMETRY_ONLY), None
        )
        out = transform(_scene(), np.random.default_rng(seed))
        box, region = out.boxes[0], out.ignore[0]
        scale = (box[2] - box[0]) / (GT[2] - GT[0])  # letterbox 0.75 times the zoom
        flipped = region[0] < box[0]
        # left edges 30 px apart in the source; mirrored, the right edges are 30 px apart
        dx = region[0] - box[0] if not flipped else box[2] - region[2]
        assert dx == pytest.approx(scale * (REGION[0] - GT[0]), abs=0.05)
        assert region[1] - box[1] == pytest.approx(scale * (REGION[1] - GT[1]), abs=0.05)


# ------------------------------------------------------------------------------------ loss
LH, LW, K, STRIDES = 32, 64, 3, (8, 16, 32)
POINTS, POINT_STRIDES = dense_points(level_sizes((LH, LW), STRIDES), STRIDES)
A = POINTS.shape[0]
LOSS_GT = torch.tensor([[8.0, 4.0, 24.0, 20.0]])
LOSS_REGION = torch.tensor([[40.0, 0.0, 64.0, 32.0]])  # far from the GT: no positive inside


def _point(x: float, y: float, stride: int = 8) -> int:
    hit = (torch.tensor([x, y]) == POINTS).all(1) & (stride == POINT_STRIDES)
    return int(hit.nonzero()[0, 0])


def _det_loss(logits: torch.Tensor, ignore: torch.Tensor | None) -> tuple[float, torch.Tensor]:
    """``cls`` term and the gradient of ``total`` w.r.t. ``logits`` ``[1, A, K]``."""
    logits = logits.clone().requires_grad_(True)
    box = torch.full((1, A, 4), 0.3)
    out = DetectionLoss()(
        logits,
        box,
        [LOSS_GT],
        [torch.tensor([0])],
        torch.tensor([True]),
        POINTS,
        POINT_STRIDES,
        ignore=None if ignore is None else [ignore],
    )
    out.total.backward()
    return float(out.terms["cls"].detach()), logits.grad


def test_confident_point_inside_ignore_region_adds_no_loss():
    logits = torch.randn(1, A, K, generator=torch.Generator().manual_seed(0)) - 3.0
    a = _point(52.0, 12.0)  # inside the region
    logits[0, a] = 8.0  # "there is an object here" — which is true, nobody boxed it
    without, _ = _det_loss(logits, None)
    empty, _ = _det_loss(logits, torch.zeros(0, 4))
    with_region, grad = _det_loss(logits, LOSS_REGION)
    assert empty == without
    assert with_region < without
    assert torch.equal(grad[0, a], torch.zeros(K))  # neither positive nor negative
    changed = logits.clone()
    changed[0, a] = -8.0
    assert _det_loss(changed, LOSS_REGION)[0] == with_region
    outside = _point(4.0, 28.0)  # background outside every region still learns
    assert grad[0, outside].abs().sum() > 0


def test_positives_inside_an_ignore_region_still_count():
    logits = torch.randn(1, A, K, generator=torch.Generator().manual_seed(1)) - 3.0
    everywhere = torch.tensor([[0.0, 0.0, LW, LH]])
    cls_all, grad = _det_loss(logits, everywhere)
    assert cls_all > 0
    nonzero = grad.abs().sum(-1)[0] > 0  # [A]
    assert 0 < int(nonzero.sum()) <= 10  # only the GT's positives (topk 10) are trained
    assert bool(nonzero[_point(12.0, 12.0)])  # a point at the GT centre


def test_multitask_loss_reads_batch_ignore():
    logits = torch.full((1, A, K), -3.0)
    logits[0, _point(52.0, 12.0)] = 8.0
    outputs = HeadOutputs(
        logits, torch.full((1, A, 4), 0.3), torch.zeros(1, 2, LH, LW), torch.zeros(1, 1, LH, LW)
    )
    batch = _batch([LOSS_GT], [torch.tensor([0])])
    parts = [
        MultiTaskLoss()(outputs, replace(batch, ignore=ig), POINTS, POINT_STRIDES)[1]["det_cls"]
        for ig in ([torch.zeros(0, 4)], [LOSS_REGION])
    ]
    assert float(parts[1]) < float(parts[0])


def _batch(boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> Batch:
    b = len(boxes)
    flags = torch.ones(b, dtype=torch.bool)
    return Batch(
        images=torch.zeros(b, 3, LH, LW, dtype=torch.uint8),
        boxes=boxes,
        labels=labels,
        lane=torch.full((b, LH, LW), 255, dtype=torch.uint8),
        drivable=torch.full((b, LH, LW), 255, dtype=torch.uint8),
        depth=torch.zeros(b, LH, LW),
        valid=torch.ones(b, LH, LW, dtype=torch.bool),
        has_det=flags,
        has_lane=~flags,
        has_drivable=~flags,
        has_depth=~flags,
        camera=torch.full((b, 4), math.nan),
        letterbox=torch.tensor([[1.0, 0.0, 0.0, LH, LW]] * b),
    )


# ------------------------------------------------------------------------------ evaluation
def _dets(boxes: list[list[float]], scores: list[float]) -> Detections:
    labels = torch.zeros(len(boxes), dtype=torch.int64)
    return Detections(torch.tensor(boxes).reshape(-1, 4), torch.tensor(scores), labels)


def _evaluate(dets: list[Detections], ignore: list[list[list[float]]] | None) -> dict[str, float]:
    gt_boxes = [
        torch.tensor([[10.0, 10, 50, 50], [60, 10, 100, 50]]),
        torch.tensor([[10.0, 60, 40, 100]]),
    ]
    gt_labels = [torch.zeros(2, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)]
    regions = None if ignore is None else [torch.tensor(r).reshape(-1, 4) for r in ignore]
    ev = DetectionEvaluator()
    ev.update(dets, gt_boxes, gt_labels, [True, True], ignore=regions)
    return ev.compute()


CLEAN = [
    _dets([[10, 10, 50, 50], [60, 10, 100, 50]], [0.9, 0.8]),
    _dets([[10, 60, 40, 100]], [0.7]),
]
FALSE = [120.0, 120.0, 140.0, 140.0]  # no GT near it, scored above every true positive


def _with_false_detection() -> list[Detections]:
    first = CLEAN[0]
    return [
        _dets([*first.boxes.tolist(), FALSE], [*first.scores.tolist(), 0.95]),
        CLEAN[1],
    ]


def test_false_detection_inside_ignore_region_does_not_lower_map():
    clean = _evaluate(CLEAN, None)
    assert clean["det/mAP50"] == pytest.approx(1.0)
    hurt = _evaluate(_with_false_detection(), None)
    assert hurt["det/mAP50"] < clean["det/mAP50"] - 0.1
    region = [[110.0, 110.0, 200.0, 200.0]]  # holds the false detection entirely
    forgiven = _evaluate(_with_false_detection(), [region, []])
    assert forgiven == clean
    # the rule is intersection over the detection's own area >= 0.5 (COCO crowd at IoU .5)
    half = _evaluate(_with_false_detection(), [[[130.0, 100.0, 300.0, 300.0]], []])  # 0.5
    assert half["det/mAP50"] == clean["det/mAP50"]
    less = _evaluate(_with_false_detection(), [[[131.0, 100.0, 300.0, 300.0]], []])  # 0.45
    assert less["det/mAP50"] == hurt["det/mAP50"]


def test_ignore_regions_are_not_ground_truth():
    """A region nobody detects costs no recall; a true positive inside one stays a TP."""
    clean = _evaluate(CLEAN, None)
    assert _evaluate(CLEAN, [[[150.0, 150.0, 190.0, 190.0]], [[0, 0, 200, 200]]]) == clean
    assert clean["det/recall"] == 1.0


def test_metrics_suite_passes_batch_ignore_to_the_evaluator():
    """End to end from raw head outputs: one TP at (12, 12), a higher-scored FP at (52, 12)."""
    tp, fp = _point(12.0, 12.0), _point(52.0, 12.0)
    logits = torch.full((1, A, K), -20.0)
    logits[0, tp, 1], logits[0, fp, 1] = 8.0, 10.0
    box = torch.full((1, A, 4), math.log(math.expm1(4.0 / 8)))  # 4 px each side
    box[0, tp, 2:] = math.log(math.expm1(12.0 / 8))  # TP: [8, 8, 24, 24]
    outputs = HeadOutputs(logits, box, torch.zeros(1, 2, LH, LW), torch.zeros(1, 1, LH, LW))
    batch = _batch([torch.tensor([[8.0, 8.0, 24.0, 24.0]])], [torch.tensor([1])])
    scores = {}
    for name, ig in (("without", torch.zeros(0, 4)), ("with", LOSS_REGION)):
        suite = MetricsSuite()
        suite.update(outputs, replace(batch, ignore=[ig]), POINTS, POINT_STRIDES)
        scores[name] = suite.compute()["det/mAP50"]
    assert scores == {"without": pytest.approx(0.5), "with": pytest.approx(1.0)}


def _regions_near(dets: list[Detections], seed: int) -> list[torch.Tensor]:
    """0-3 regions per image: detections grown or shrunk about their centre (so their
    overlap ratio straddles every IoU threshold) and a random one."""
    rng = np.random.default_rng(100 + seed)
    out = []
    for det in dets:
        boxes = det.boxes.numpy().astype(np.float64)
        pick = boxes[rng.permutation(len(boxes))[: int(rng.integers(0, 3))]]  # [P, 4]
        centre, half = (pick[:, :2] + pick[:, 2:]) / 2, (pick[:, 2:] - pick[:, :2]) / 2
        half = half * rng.uniform(0.6, 2.0, size=(len(pick), 2))
        regions = np.concatenate([centre - half, centre + half], axis=1)
        if rng.random() < 0.5:
            xy = rng.uniform(0, 180, size=2)
            regions = np.concatenate([regions, [[*xy, *(xy + rng.uniform(20, 80, 2))]]])
        out.append(torch.tensor(regions, dtype=torch.float32).reshape(-1, 4))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ignore_regions_agree_with_faster_coco_eval_crowds(seed):
    """Our evaluator with regions == faster-coco-eval with them as ``iscrowd=1`` boxes."""
    dets, gt_boxes, gt_labels = tm._random_split(seed)
    regions = _regions_near(dets, seed)
    scales = None if seed == 0 else np.random.default_rng(seed).choice([1.0, 0.5, 0.3], 20)
    ev, plain = DetectionEvaluator(), DetectionEvaluator()
    ev.update(dets, gt_boxes, gt_labels, [True] * len(dets), scales=scales, ignore=regions)
    plain.update(dets, gt_boxes, gt_labels, [True] * len(dets), scales=scales)
    ours, ref = ev.compute(), tm.coco_reference(dets, gt_boxes, gt_labels, scales, ignore=regions)
    assert ours["det/mAP50"] > plain.compute()["det/mAP50"]  # the regions forgave something
    assert ours["det/recall"] == plain.compute()["det/recall"]  # and are not ground truth
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-9, nan_ok=True), key
