"""Task-aligned assigner on hand-made cases (8-pixel grid of points, centres 4, 12, 20...)."""

from __future__ import annotations

import torch

from perception.losses.assigners import TaskAlignedAssigner, pad_targets
from perception.ops.boxes import aligned_iou, box_area
from perception.ops.points import dense_points, level_sizes

K = 3


def _grid(hw: tuple[int, int] = (64, 64)) -> torch.Tensor:
    points, _ = dense_points(level_sizes(hw, (8,)), (8,))
    return points  # [A, 2]


def _small_preds(points: torch.Tensor, batch: int = 1, half: float = 1.0) -> torch.Tensor:
    """``[B, A, 4]`` tiny boxes around each point: low IoU with any real GT."""
    box = torch.cat([points - half, points + half], dim=1)  # [A, 4]
    return box.expand(batch, -1, -1).clone()


def _index(points: torch.Tensor, x: float, y: float) -> int:
    return int(((points[:, 0] == x) & (points[:, 1] == y)).nonzero().item())


def _inside(points: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    x, y = points[:, 0], points[:, 1]
    return (x > box[0]) & (x < box[2]) & (y > box[1]) & (y < box[3])


def test_point_at_centre_gets_label_box_and_full_score() -> None:
    points = _grid()
    gt = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    centre = _index(points, 20.0, 20.0)
    preds = _small_preds(points)
    preds[0, centre] = gt[0]  # the centre point already predicts the box exactly
    scores = torch.full((1, points.shape[0], K), 0.5)
    out = TaskAlignedAssigner()(
        scores, preds, points, gt[None], torch.tensor([[2]]), torch.ones(1, 1, dtype=torch.bool)
    )
    assert out.fg[0, centre]
    assert out.labels[0, centre] == 2
    torch.testing.assert_close(out.boxes[0, centre], gt[0])
    torch.testing.assert_close(out.scores[0, centre], torch.tensor([0.0, 0.0, 1.0]))
    assert out.fg.sum() == 10  # top-k
    assert (out.labels[~out.fg] == K).all() and (out.scores[~out.fg] == 0).all()


def test_points_outside_gt_never_assigned() -> None:
    torch.manual_seed(0)
    points = _grid()
    gt = torch.tensor([[[10.0, 3.0, 30.0, 50.0], [33.0, 33.0, 63.0, 60.0]]])
    scores = torch.rand(1, points.shape[0], K)
    preds = _small_preds(points, half=12.0) + torch.randn(1, points.shape[0], 4)
    out = TaskAlignedAssigner(topk=50)(
        scores, preds, points, gt, torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool)
    )
    for g in range(2):
        assigned = out.fg[0] & (out.gt_index[0] == g)
        assert assigned.any()
        assert not (assigned & ~_inside(points, gt[0, g])).any()
        assert (out.labels[0, assigned] == g).all()


def test_contested_point_goes_to_higher_iou_gt() -> None:
    points = _grid()
    gts = torch.tensor([[[0.0, 0.0, 40.0, 40.0], [16.0, 16.0, 56.0, 56.0]]])
    contested = _index(points, 28.0, 28.0)
    preds = _small_preds(points)
    preds[0, contested] = torch.tensor([14.0, 14.0, 54.0, 54.0])  # IoU ~0.8 with B, ~0.3 with A
    scores = torch.full((1, points.shape[0], K), 0.5)
    out = TaskAlignedAssigner()(
        scores, preds, points, gts, torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool)
    )
    assert out.fg[0, contested]
    assert out.gt_index[0, contested] == 1 and out.labels[0, contested] == 1
    torch.testing.assert_close(out.boxes[0, contested], gts[0, 1])
    assert (out.scores.sum(-1) <= 1.0 + 1e-6).all()  # one class per point


def test_zero_gts_give_no_foreground() -> None:
    points = _grid()
    scores = torch.rand(2, points.shape[0], K)
    preds = _small_preds(points, batch=2)
    empty = TaskAlignedAssigner()(
        scores,
        preds,
        points,
        torch.zeros(2, 0, 4),
        torch.zeros(2, 0, dtype=torch.long),
        torch.zeros(2, 0, dtype=torch.bool),
    )
    assert not empty.fg.any() and (empty.labels == K).all() and (empty.scores == 0).all()
    gt, labels, mask = pad_targets(
        [torch.tensor([[0.0, 0.0, 40.0, 40.0]]), torch.zeros(0, 4)],
        [torch.tensor([1]), torch.zeros(0, dtype=torch.long)],
    )
    mixed = TaskAlignedAssigner()(scores, preds, points, gt, labels, mask)
    assert mixed.fg[0].any() and not mixed.fg[1].any()
    assert mixed.scores.shape == (2, points.shape[0], K)


def test_padded_rows_are_ignored() -> None:
    points = _grid()
    scores = torch.full((1, points.shape[0], K), 0.5)
    preds = _small_preds(points, half=6.0)
    gt = torch.tensor([[[0.0, 0.0, 24.0, 24.0], [0.0, 0.0, 64.0, 64.0]]])  # row 1 = padding
    mask = torch.tensor([[True, False]])
    out = TaskAlignedAssigner(topk=64)(scores, preds, points, gt, torch.tensor([[0, 2]]), mask)
    assert out.fg.any()
    assert (out.gt_index[0, out.fg[0]] == 0).all() and (out.labels[0, out.fg[0]] == 0).all()
    assert not (out.fg[0] & ~_inside(points, gt[0, 0])).any()


def test_soft_targets_peak_at_max_iou_and_no_grad() -> None:
    points = _grid()
    gt = torch.tensor([[[4.0, 4.0, 44.0, 36.0]]])
    preds = _small_preds(points, half=10.0).requires_grad_(True)
    scores = torch.rand(1, points.shape[0], K, requires_grad=True)
    out = TaskAlignedAssigner()(
        scores, preds, points, gt, torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool)
    )
    assert not out.scores.requires_grad and not out.boxes.requires_grad
    ious = aligned_iou(preds.detach()[0], gt[0, 0])[out.fg[0]]
    torch.testing.assert_close(out.scores[0, :, 1].max(), ious.max())


def test_pad_targets_and_large_batch_shapes() -> None:
    gen = torch.Generator().manual_seed(0)
    points, _ = dense_points(level_sizes((384, 640), (8, 16, 32)), (8, 16, 32))  # A = 5040
    xy = torch.rand(2, 50, 2, generator=gen) * 500
    boxes = [
        torch.cat([xy[i], xy[i] + 30 + torch.rand(50, 2, generator=gen) * 100], 1) for i in range(2)
    ]
    assert (box_area(boxes[0]) > 0).all()
    gt, labels, mask = pad_targets(boxes, [torch.randint(0, K, (50,), generator=gen)] * 2)
    assert gt.shape == (2, 50, 4) and mask.all()
    scores = torch.rand(2, points.shape[0], K, generator=gen)
    preds = _small_preds(points, batch=2, half=16.0)
    out = TaskAlignedAssigner()(scores, preds, points, gt, labels, mask)
    assert out.fg.shape == (2, 5040) and out.fg.any()
    assert out.fg.sum(dim=1).max() <= 500  # at most top-k per GT
