"""Contracts of ``perception.postprocess``: detection decoding/NMS and dense maps to source."""

from __future__ import annotations

import math

import pytest
import torch

from perception.ops.points import dense_points, level_sizes
from perception.postprocess import (
    dense_to_source,
    depth_metres,
    detections_to_source,
    postprocess_detections,
    seg_probabilities,
)
from perception.structures import Detections, Letterbox

IMAGE_HW = (64, 128)
STRIDES = (8, 16, 32)
NUM_CLASSES = 3


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    return dense_points(level_sizes(IMAGE_HW, STRIDES), STRIDES)


def _silent(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs with every score ~0 and every box 1 stride wide around its point."""
    num_points = _grid()[0].shape[0]
    cls_logits = torch.full((batch, num_points, NUM_CLASSES), -20.0)
    box_dist = torch.full((batch, num_points, 4), math.log(math.expm1(0.5)))
    return cls_logits, box_dist


def _raw_for(distances: list[float], stride: float) -> torch.Tensor:
    """Inverse of ``softplus(raw) * stride``."""
    return torch.tensor([math.log(math.expm1(d / stride)) for d in distances])


def _point_index(points: torch.Tensor, strides: torch.Tensor, xy, stride: int) -> int:
    hit = (points == torch.tensor(xy, dtype=points.dtype)).all(1) & (strides == stride)
    return int(torch.nonzero(hit)[0, 0])


def test_zero_detections_are_correctly_shaped():
    points, strides = _grid()
    cls_logits, box_dist = _silent(batch=2)
    dets = postprocess_detections(cls_logits, box_dist, points, strides)
    assert len(dets) == 2
    for det in dets:
        assert isinstance(det, Detections)
        assert det.boxes.shape == (0, 4) and det.boxes.dtype == torch.float32
        assert det.scores.shape == (0,) and det.scores.dtype == torch.float32
        assert det.labels.shape == (0,) and det.labels.dtype == torch.int64


def test_one_strong_prediction_decodes_to_its_box_and_class():
    points, strides = _grid()
    cls_logits, box_dist = _silent()
    a = _point_index(points, strides, (52.0, 20.0), 8)  # stride-8 cell (row 2, col 6)
    cls_logits[0, a, 2] = 6.0
    box_dist[0, a] = _raw_for([10.0, 4.0, 6.0, 12.0], 8)
    (det,) = postprocess_detections(cls_logits, box_dist, points, strides)
    assert det.labels.tolist() == [2]
    torch.testing.assert_close(det.scores, torch.sigmoid(torch.tensor([6.0])))
    torch.testing.assert_close(det.boxes, torch.tensor([[42.0, 16.0, 58.0, 32.0]]))


def _two_overlapping(label_a: int, label_b: int) -> list[Detections]:
    points, strides = _grid()
    cls_logits, box_dist = _silent()
    for xy, label, logit in (((52.0, 20.0), label_a, 5.0), ((60.0, 20.0), label_b, 4.0)):
        a = _point_index(points, strides, xy, 8)
        cls_logits[0, a, label] = logit
        box_dist[0, a] = _raw_for([20.0, 10.0, 20.0, 10.0], 8)  # 40 x 20 boxes, IoU 0.67
    return postprocess_detections(cls_logits, box_dist, points, strides, iou=0.5)


def test_nms_is_class_aware():
    (same,) = _two_overlapping(1, 1)
    assert same.labels.tolist() == [1]
    (different,) = _two_overlapping(0, 1)
    assert sorted(different.labels.tolist()) == [0, 1]
    assert different.scores[0] > different.scores[1]  # decreasing score order


def test_multi_label_and_best_class():
    points, strides = _grid()
    cls_logits, box_dist = _silent()
    cls_logits[0, 7, 0], cls_logits[0, 7, 1] = 3.0, 2.0
    (multi,) = postprocess_detections(cls_logits, box_dist, points, strides)
    (best,) = postprocess_detections(cls_logits, box_dist, points, strides, multi_label=False)
    assert multi.labels.tolist() == [0, 1]
    assert best.labels.tolist() == [0]


def test_max_det_and_pre_nms_topk_are_respected():
    points, strides = _grid()
    cls_logits, box_dist = _silent()
    level8 = strides == 8  # tiny boxes (1 stride wide) never overlap their neighbours
    cls_logits[0, level8, 0] = torch.linspace(1.0, 5.0, int(level8.sum()))
    (det,) = postprocess_detections(cls_logits, box_dist, points, strides, max_det=7)
    assert len(det.scores) == 7
    assert torch.all(det.scores[:-1] >= det.scores[1:])
    assert det.scores[0] == torch.sigmoid(torch.tensor(5.0))
    (top,) = postprocess_detections(cls_logits, box_dist, points, strides, pre_nms_topk=5)
    assert len(top.scores) == 5


def test_image_size_clips_boxes_to_the_canvas():
    points, strides = _grid()
    cls_logits, box_dist = _silent()
    cls_logits[0, 0, 0] = 5.0
    box_dist[0, 0] = _raw_for([30.0, 30.0, 4.0, 4.0], 8)  # reaches far left / above
    (det,) = postprocess_detections(cls_logits, box_dist, points, strides, image_size=IMAGE_HW)
    torch.testing.assert_close(det.boxes, torch.tensor([[0.0, 0.0, 8.0, 8.0]]))


def test_detections_to_source_inverts_the_letterbox():
    lb = Letterbox(scale=0.5, pad_x=0.0, pad_y=14.0, src_h=72, src_w=256)  # 256x72 -> 128x36
    src = torch.tensor([[10.0, 4.0, 60.0, 40.0], [100.0, 0.0, 256.0, 72.0]])
    net = src * lb.scale + torch.tensor([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y])
    in_padding = torch.tensor([[5.0, 1.0, 20.0, 10.0]])  # entirely above the image
    det = Detections(
        torch.cat([net, in_padding]), torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 2, 1])
    )
    out = detections_to_source(det, lb)
    torch.testing.assert_close(out.boxes, src)
    assert out.scores.tolist() == pytest.approx([0.9, 0.8])
    assert out.labels.tolist() == [0, 2]


def test_dense_to_source_crops_padding_and_restores_size():
    src = torch.arange(2 * 36 * 128, dtype=torch.float32).reshape(2, 36, 128)
    canvas = torch.full((2, 64, 128), float("nan"))
    canvas[:, 14:50] = src  # pad 14 rows above and below, scale 1
    lb = Letterbox(scale=1.0, pad_x=0.0, pad_y=14.0, src_h=36, src_w=128)
    torch.testing.assert_close(dense_to_source(canvas, lb), src)
    # scale 0.5: a 72 x 256 source shown as 36 x 128; a constant map stays constant
    lb_half = Letterbox(scale=0.5, pad_x=0.0, pad_y=14.0, src_h=72, src_w=256)
    canvas[:, 14:50] = 3.0
    out = dense_to_source(canvas, lb_half)
    assert out.shape == (2, 72, 256)
    torch.testing.assert_close(out, torch.full((2, 72, 256), 3.0))
    labels = torch.full((1, 64, 128), 255, dtype=torch.uint8)
    labels[:, 14:50, :64] = 1
    labels[:, 14:50, 64:] = 0
    near = dense_to_source(labels, lb_half, mode="nearest")
    assert near.dtype == torch.uint8 and near.shape == (1, 72, 256)
    assert (near[:, :, :128] == 1).all() and (near[:, :, 128:] == 0).all()


def test_dense_decoding_units():
    logits = torch.tensor([[[[0.0, 100.0]]]])
    torch.testing.assert_close(seg_probabilities(logits), torch.tensor([[[[0.5, 1.0]]]]))
    depth_log = torch.log(torch.tensor([[[[2.0, 80.0]]]], dtype=torch.bfloat16))
    out = depth_metres(depth_log)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[[[2.0, 80.0]]]]), rtol=1e-2, atol=0)
