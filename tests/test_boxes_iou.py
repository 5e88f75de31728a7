"""``ops.boxes`` IoU family against torchvision, and the dense-point box encoding."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tv

from perception.ops import boxes as box_ops
from perception.ops.points import dense_points, level_sizes


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    """``[n, 4]`` valid xyxy boxes in a 100 x 100 canvas (some tiny, some overlapping)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 80
    wh = torch.rand(n, 2, generator=g) * 40 + 0.5
    return torch.cat([xy, xy + wh], dim=1).double()


def test_box_iou_and_giou_match_torchvision() -> None:
    a, b = _random_boxes(17, 0), _random_boxes(11, 1)
    torch.testing.assert_close(box_ops.box_iou(a, b), tv.box_iou(a, b))
    torch.testing.assert_close(box_ops.generalized_box_iou(a, b), tv.generalized_box_iou(a, b))
    assert box_ops.box_iou(a, b).shape == (17, 11)


def test_aligned_variants_match_torchvision_losses() -> None:
    a, b = _random_boxes(64, 2), _random_boxes(64, 3)
    torch.testing.assert_close(box_ops.aligned_iou(a, b), tv.box_iou(a, b).diagonal())
    torch.testing.assert_close(box_ops.aligned_giou(a, b), 1 - tv.generalized_box_iou_loss(a, b))
    torch.testing.assert_close(box_ops.aligned_ciou(a, b), 1 - tv.complete_box_iou_loss(a, b))


def test_aligned_broadcasts_over_leading_dims() -> None:
    a, b = _random_boxes(6, 4), _random_boxes(5, 5)
    pairwise = box_ops.aligned_iou(a.view(2, 3, 1, 4), b.view(1, 1, 5, 4))  # [2, 3, 5]
    torch.testing.assert_close(pairwise.reshape(6, 5), tv.box_iou(a, b))


@pytest.mark.parametrize("fn", [box_ops.aligned_iou, box_ops.aligned_giou, box_ops.aligned_ciou])
def test_degenerate_and_disjoint_boxes_are_finite_with_gradient(fn) -> None:
    a = torch.tensor([[0.0, 0, 0, 0], [0, 0, 10, 10], [0, 0, 10, 10]], requires_grad=True)
    b = torch.tensor([[0.0, 0, 0, 0], [20, 20, 30, 30], [0, 0, 10, 10]])
    out = fn(a, b)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(a.grad).all()
    assert out[2].item() == pytest.approx(1.0, abs=1e-5)  # identical boxes
    if fn is not box_ops.aligned_iou:  # disjoint boxes still pull together
        assert a.grad[1].abs().sum() > 0


def test_box_iou_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        box_ops.box_iou(torch.zeros(3, 5), torch.zeros(2, 4))


def test_distances_round_trip() -> None:
    points = torch.tensor([[10.0, 20.0], [50.0, 5.0]])
    dist = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [5.0, 0.5, 0.0, 2.0]]])  # [1, A, 4]
    boxes = box_ops.distances_to_boxes(points, dist)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([9.0, 18.0, 13.0, 24.0]))
    torch.testing.assert_close(box_ops.boxes_to_distances(points, boxes), dist)


def test_decode_encode_round_trip_on_dense_points() -> None:
    strides = (8, 16, 32)
    points, point_strides = dense_points(level_sizes((64, 96), strides), strides)
    raw = torch.rand(2, points.shape[0], 4, dtype=torch.float64) * 8 - 4  # softplus > 1e-3
    decoded = box_ops.decode_box_dist(raw, points.double(), point_strides.double())
    assert decoded.shape == raw.shape
    assert (decoded[..., 2:] >= decoded[..., :2]).all()
    back = box_ops.encode_box_dist(decoded, points.double(), point_strides.double())
    torch.testing.assert_close(back, raw)


def test_decode_uses_softplus_times_stride() -> None:
    points = torch.tensor([[12.0, 4.0]])
    raw = torch.zeros(1, 4)
    expected = torch.nn.functional.softplus(torch.tensor(0.0)).item() * 8
    box = box_ops.decode_box_dist(raw, points, torch.tensor([8.0]))
    torch.testing.assert_close(
        box, torch.tensor([[12 - expected, 4 - expected, 12 + expected, 4 + expected]])
    )
