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


# ------------------------------------------------------------- fallback for tiny boxes
LEVELS = (8, 16, 32)
TINY = [[65.0, 41.0, 68.0, 44.0], [21.0, 29.0, 23.0, 34.0]]  # 3x3 and 2x5, between centres
NORMAL = [[40.0, 8.0, 80.0, 36.0], [4.0, 40.0, 36.0, 62.0], [44.0, 40.0, 60.0, 60.0]]


def _levels(hw: tuple[int, int] = (64, 96)) -> tuple[torch.Tensor, torch.Tensor]:
    return dense_points(level_sizes(hw, LEVELS), LEVELS)  # [A, 2], [A]


def _nearest_per_level(points: torch.Tensor, strides: torch.Tensor, box: torch.Tensor) -> set:
    """Brute force: index of the point nearest the box centre on each level."""
    centre = (box[:2] + box[2:]) / 2
    dist = (points - centre).square().sum(-1)  # [A]
    return {int(torch.where(strides == s, dist, torch.inf).argmin()) for s in strides.unique()}


def _positives(out, b: int, g: int) -> set:
    return set((out.fg[b] & (out.gt_index[b] == g)).nonzero().flatten().tolist())


def test_tiny_boxes_get_the_nearest_point() -> None:
    points = _grid()
    gt = torch.tensor([[[13.5, 5.0, 16.5, 8.0], [29.0, 33.0, 31.0, 38.0]]])  # 3x3, 2x5
    for g in range(2):
        assert not _inside(points, gt[0, g]).any()  # the case the fallback exists for
    scores = torch.rand(1, points.shape[0], K, generator=torch.Generator().manual_seed(0))
    out = TaskAlignedAssigner()(
        scores, _small_preds(points), points, gt, torch.tensor([[0, 2]]), torch.ones(1, 2).bool()
    )
    assert _positives(out, 0, 0) == {_index(points, 12.0, 4.0)}
    assert _positives(out, 0, 1) == {_index(points, 28.0, 36.0)}
    assert out.labels[0, _index(points, 28.0, 36.0)] == 2
    torch.testing.assert_close(out.boxes[0, _index(points, 12.0, 4.0)], gt[0, 0])


def test_fallback_positive_gets_its_iou_as_target_when_alignment_is_minute() -> None:
    points = _grid()
    gt = torch.tensor([[[13.5, 5.0, 16.5, 8.0]]])
    near = _index(points, 12.0, 4.0)
    preds = _small_preds(points)
    preds[0, near] = torch.tensor([8.0, 0.0, 16.0, 8.0])  # overlaps the GT a little
    iou = aligned_iou(preds[0, near], gt[0, 0])
    for score in (0.0, 1e-4):  # align exactly 0, and ~1e-10 (below the old eps of 1e-9)
        scores = torch.full((1, points.shape[0], K), score)
        out = TaskAlignedAssigner()(
            scores, preds, points, gt, torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool)
        )
        assert _positives(out, 0, 0) == {near}
        torch.testing.assert_close(out.scores[0, near], torch.stack([0 * iou, iou, 0 * iou]))


def _mixed_batch() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """4 images: tiny + normal, tiny only, normal only, empty."""
    t, n = torch.tensor(TINY), torch.tensor(NORMAL)
    boxes = [torch.cat([n[:2], t[:1], n[2:]]), t, n, torch.zeros(0, 4)]
    labels = [torch.tensor([0, 1, 2, 1]), torch.tensor([2, 0]), torch.tensor([0, 1, 2])]
    return boxes, [*labels, torch.zeros(0, dtype=torch.long)]


def _level_preds(points: torch.Tensor, strides: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B, A, 4]`` stride-sized boxes around each point, jittered."""
    gen = torch.Generator().manual_seed(1)
    half = (2.5 * strides)[:, None]  # [A] -> [A, 1]
    box = torch.cat([points - half, points + half], dim=1)  # [A, 4]
    return box + torch.randn(batch, *box.shape, generator=gen)


def test_tiny_and_normal_boxes_on_several_levels_all_get_positives() -> None:
    points, strides = _levels()
    boxes, labels = _mixed_batch()
    gt, gt_labels, mask = pad_targets(boxes, labels)
    scores = torch.rand(4, points.shape[0], K, generator=torch.Generator().manual_seed(0))
    preds = _level_preds(points, strides, 4)
    out = TaskAlignedAssigner()(scores, preds, points, gt, gt_labels, mask, strides)
    for b, image_boxes in enumerate(boxes):
        for g, box in enumerate(image_boxes):
            assert _positives(out, b, g), (b, g)
            if box.tolist() in TINY:
                assert not _inside(points, box).any()
                assert _positives(out, b, g) == _nearest_per_level(points, strides, box)
    assert not out.fg[3].any()
    # normal boxes are assigned as if the tiny ones were not there
    keep = [torch.tensor([bx not in TINY for bx in b.tolist()], dtype=torch.bool) for b in boxes]
    clean = [b[k] for b, k in zip(boxes, keep, strict=True)]
    clean_labels = [lb[k] for lb, k in zip(labels, keep, strict=True)]
    ref = TaskAlignedAssigner()(
        scores, preds, points, *pad_targets(clean, clean_labels), strides=strides
    )
    for b in range(4):
        rows = [g for g, bx in enumerate(boxes[b].tolist()) if bx not in TINY]
        for g_ref, g in enumerate(rows):
            sel = out.fg[b] & (out.gt_index[b] == g)
            assert torch.equal(sel, ref.fg[b] & (ref.gt_index[b] == g_ref))
            torch.testing.assert_close(out.scores[b, sel], ref.scores[b, sel])


def _inside_only(scores, preds, points, gt, labels, mask, topk=10, alpha=1.0, beta=6.0):
    """The assigner without the fallback, loop by loop: ``(fg, gt_index, quality)``."""
    batch, num_points, _ = scores.shape
    claim = torch.zeros(batch, gt.shape[1], num_points, dtype=torch.bool)  # [B, N, A]
    iou = aligned_iou(gt[:, :, None], preds[:, None])  # [B, N, A]
    align = scores.gather(2, labels[:, None, :].expand(-1, num_points, -1)).transpose(1, 2)
    align = align.pow(alpha) * iou.pow(beta)  # [B, A, N] -> [B, N, A]
    for b, g in mask.nonzero().tolist():
        cand = _inside(points, gt[b, g]).nonzero().flatten()
        claim[b, g, cand[align[b, g, cand].argsort(descending=True)[:topk]]] = True
    for b, a in claim.any(dim=1).nonzero().tolist():
        best = torch.where(claim[b, :, a], iou[b, :, a], -1.0).argmax()
        claim[b, :, a] = False
        claim[b, best, a] = True
    quality = torch.zeros(batch, num_points)
    for b, g in mask.nonzero().tolist():
        a = claim[b, g].nonzero().flatten()
        t = align[b, g, a]
        quality[b, a] = t / t.max() * iou[b, g, a].max()
    return claim.any(dim=1), claim.to(torch.uint8).argmax(dim=1), quality


def test_assignment_without_tiny_boxes_matches_inside_only_reference() -> None:
    points, strides = _levels()
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(3, 6, 2, generator=gen) * torch.tensor([70.0, 40.0])
    wh = 10 + torch.rand(3, 6, 2, generator=gen) * 30
    boxes = [torch.cat([xy[i, : 2 + 2 * i], (xy + wh)[i, : 2 + 2 * i]], dim=1) for i in range(3)]
    labels = [torch.randint(0, K, (len(b),), generator=gen) for b in boxes]
    gt, gt_labels, mask = pad_targets(boxes, labels)
    for b, g in mask.nonzero().tolist():
        assert _inside(points, gt[b, g]).any()  # no fallback needed anywhere
    scores = torch.rand(3, points.shape[0], K, generator=gen)
    preds = _level_preds(points, strides, 3)
    out = TaskAlignedAssigner()(scores, preds, points, gt, gt_labels, mask, strides)
    fg, gt_index, quality = _inside_only(scores, preds, points, gt, gt_labels, mask)
    assert torch.equal(out.fg, fg) and out.fg.any()
    assert torch.equal(out.gt_index[fg], gt_index[fg])
    torch.testing.assert_close(out.scores.sum(-1), quality)
