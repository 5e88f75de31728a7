"""Label assignment for the anchor-free detection head: which point learns which object.

Task-Aligned assignment (TOOD, Feng et al. 2021; as used by YOLOv8/PP-YOLOE). A point is
a good positive for a ground-truth box when the head *already* scores the right class
highly **and** regresses a box that overlaps it well, so classification and localisation
are trained towards the same points (the misalignment plain centre-sampling leaves).

The assigner is pure: tensors in, tensors out, under ``torch.no_grad``. It never sees the
model (ARCHITECTURE rule 5) and never creates a gradient path to the predictions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from perception.ops.boxes import aligned_iou


class Assignment(NamedTuple):
    """Per-point training targets for a batch (``A`` dense points, ``K`` classes)."""

    fg: torch.Tensor  # [B, A] bool, True where the point is a positive
    labels: torch.Tensor  # [B, A] int64 class index; K (= background) where not fg
    boxes: torch.Tensor  # [B, A, 4] float xyxy network pixels; zeros where not fg
    scores: torch.Tensor  # [B, A, K] float soft targets in [0, 1]; zero rows where not fg
    gt_index: torch.Tensor  # [B, A] int64 row of the assigned GT; 0 where not fg


def pad_targets(
    boxes: list[torch.Tensor],
    labels: list[torch.Tensor],
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack ragged per-image ground truth into padded tensors for batched assignment.

    Args:
        boxes: B x ``[N_i, 4]`` xyxy network pixels.
        labels: B x ``[N_i]`` int64 class indices.
        device: where the result goes; default the device of ``boxes[0]`` (CPU if empty).

    Returns:
        ``gt_boxes`` ``[B, Nmax, 4]`` float32 (padding rows zero), ``gt_labels``
        ``[B, Nmax]`` int64 (padding 0), ``gt_mask`` ``[B, Nmax]`` bool (True = real row).
        ``Nmax`` is 0 when no image has objects.
    """
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} box tensors but {len(labels)} label tensors")
    num = max((int(b.shape[0]) for b in boxes), default=0)
    if device is None:
        device = boxes[0].device if boxes else torch.device("cpu")
    gt_boxes = torch.zeros(len(boxes), num, 4, dtype=torch.float32, device=device)
    gt_labels = torch.zeros(len(boxes), num, dtype=torch.int64, device=device)
    gt_mask = torch.zeros(len(boxes), num, dtype=torch.bool, device=device)
    for i, (b, lb) in enumerate(zip(boxes, labels, strict=True)):
        n = int(b.shape[0])
        gt_boxes[i, :n] = b.to(device=device, dtype=torch.float32)
        gt_labels[i, :n] = lb.to(device=device, dtype=torch.int64)
        gt_mask[i, :n] = True
    return gt_boxes, gt_labels, gt_mask


class TaskAlignedAssigner:
    """Batched Task-Aligned assigner.

    For every GT ``g`` and point ``a`` the alignment is ``t = s^alpha * IoU^beta`` with
    ``s`` the predicted probability of ``g``'s class at ``a`` and ``IoU`` between ``a``'s
    predicted box and ``g``. Each GT takes the ``topk`` points of highest ``t`` among its
    candidates, the points whose centre lies strictly inside it; a point claimed by several
    GTs keeps the one its predicted box overlaps most. The soft classification target of a
    positive is ``t / max_t(g) * max_IoU(g)``: the best point of each GT aims at the best
    IoU reached for it, so the score learns to rank localisation quality (as Varifocal loss
    expects).

    A GT whose box contains no point centre (smaller than the stride, between centres)
    would get no positive and be trained as background, yet tiny objects are the ones
    detectors miss most. Its candidates are instead the point nearest its centre on each
    stride level; they go through the same top-k and conflict resolution (so a tiny GT can
    still lose a point claimed by a GT that point's box overlaps more). Its ``t`` is often
    minute, above all at init (``IoU^beta`` of a few-pixel box), so the ratio ``t / max_t``
    is taken without an additive eps, which would swamp it; when every claim of a GT has
    ``t == 0`` (score or ``IoU^beta`` underflowing) the target is the point's own IoU, so a
    positive whose predicted box overlaps its GT at all still gets a non-zero target.

    Memory is ``O(B * Nmax * A)`` (a few such float tensors): about 30 MB each for
    ``B=32, Nmax=50, A=5040`` (384x640 at strides 8/16/32).
    """

    def __init__(self, topk: int = 10, alpha: float = 1.0, beta: float = 6.0, eps: float = 1e-9):
        """``beta`` > ``alpha`` makes localisation quality dominate point selection (TOOD).

        ``eps`` is the margin by which a point centre must lie inside a box to count.
        """
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    @torch.no_grad()
    def __call__(
        self,
        scores: torch.Tensor,
        pred_boxes: torch.Tensor,
        points: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_mask: torch.Tensor,
        strides: torch.Tensor | None = None,
    ) -> Assignment:
        """Assign targets.

        Args:
            scores: ``[B, A, K]`` predicted class probabilities (sigmoid), detached.
            pred_boxes: ``[B, A, 4]`` predicted xyxy network pixels, detached.
            points: ``[A, 2]`` point centres (x, y) in network pixels.
            gt_boxes: ``[B, N, 4]`` padded GT xyxy network pixels (``pad_targets``).
            gt_labels: ``[B, N]`` int64 class indices (any value in padding rows).
            gt_mask: ``[B, N]`` bool, True for real GT rows.
            strides: ``[A]`` stride of each point, to find the levels of the nearest-point
                fallback for GTs without an inside point; None = all points one level.

        Returns:
            ``Assignment``; all background when ``N == 0`` or an image has no real GT.
        """
        batch, num_points, num_classes = scores.shape
        if gt_boxes.shape[1] == 0 or not bool(gt_mask.any()):
            return _background(batch, num_points, num_classes, scores)
        scores, pred_boxes = scores.float(), pred_boxes.float()
        gt_boxes, points = gt_boxes.float(), points.float()
        gt_labels = torch.where(gt_mask, gt_labels, 0).clamp(0, num_classes - 1)
        inside = _points_inside(points, gt_boxes, self.eps) & gt_mask[:, :, None]  # [B, N, A]
        needy = gt_mask & ~inside.any(dim=-1)  # [B, N] real GTs without an inside point
        candidates = inside | _nearest_points(points, strides, gt_boxes, needy)  # [B, N, A]
        iou = aligned_iou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :])  # [B, N, A]
        iou = torch.where(candidates, iou, 0.0)
        cls_score = torch.gather(  # [B, A, K] -> [B, K, A] -> [B, N, A]
            scores.transpose(1, 2), 1, gt_labels[:, :, None].expand(-1, -1, num_points)
        )
        align = cls_score.pow(self.alpha) * iou.pow(self.beta)  # [B, N, A], 0 off candidates
        claims = self._top_candidates(align, candidates)
        claims = _resolve_conflicts(claims, iou)
        return self._targets(claims, align, iou, gt_boxes, gt_labels, num_classes)

    def _top_candidates(self, align: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``[B, N, A]`` bool: the ``topk`` best-aligned candidate points of each GT."""
        k = min(self.topk, align.shape[-1])
        ranked = torch.where(candidates, align, -1.0)  # candidates first, even at align 0
        top = ranked.topk(k, dim=-1).indices  # [B, N, k]
        chosen = torch.zeros_like(candidates).scatter_(-1, top, True)
        return chosen & candidates  # fewer than k candidates: topk also returned others

    def _targets(
        self,
        claims: torch.Tensor,
        align: torch.Tensor,
        iou: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_labels: torch.Tensor,
        num_classes: int,
    ) -> Assignment:
        """Gather per-point labels, boxes and normalised soft scores from ``claims``."""
        fg = claims.any(dim=1)  # [B, A]
        gt_index = claims.to(torch.uint8).argmax(dim=1)  # [B, A], one claim left per point
        labels = torch.gather(gt_labels, 1, gt_index)  # [B, A]
        labels = torch.where(fg, labels, num_classes)
        boxes = torch.gather(gt_boxes, 1, gt_index[..., None].expand(-1, -1, 4))  # [B, A, 4]
        boxes = torch.where(fg[..., None], boxes, 0.0)
        align = torch.where(claims, align, 0.0)
        iou = torch.where(claims, iou, 0.0)
        max_align = align.amax(dim=-1, keepdim=True)  # [B, N, 1]
        max_iou = iou.amax(dim=-1, keepdim=True)  # [B, N, 1]
        ratio = align / max_align.clamp_min(torch.finfo(align.dtype).tiny)  # no eps: t is tiny
        quality = torch.where(max_align > 0, ratio * max_iou, iou)  # all t == 0: own IoU
        quality = quality.amax(dim=1)  # [B, N, A] -> [B, A]
        one_hot = F.one_hot(labels, num_classes + 1)[..., :num_classes]  # [B, A, K]
        scores = one_hot.to(align.dtype) * quality[..., None]
        gt_index = torch.where(fg, gt_index, 0)
        return Assignment(fg, labels, boxes, scores, gt_index)


def points_in_regions(
    points: torch.Tensor, regions: list[torch.Tensor], eps: float = 1e-9
) -> torch.Tensor:
    """Which point centres lie strictly inside any of each image's ignore regions.

    Uses the same inside test as candidate selection, so "inside" means the same thing
    for a GT box and for an ignore region.

    Args:
        points: ``[A, 2]`` point centres (x, y) in network pixels.
        regions: B x ``[M_i, 4]`` xyxy network pixels (``[0, 4]`` = none).

    Returns:
        ``[B, A]`` bool on ``points.device``.
    """
    boxes, _, mask = pad_targets(
        regions, [torch.zeros(len(r), dtype=torch.int64) for r in regions], points.device
    )  # [B, M, 4], [B, M]
    inside = _points_inside(points.float(), boxes, eps) & mask[:, :, None]  # [B, M, A]
    return inside.any(dim=1)  # [B, M, A] -> [B, A]


def _points_inside(points: torch.Tensor, gt_boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """``[A, 2]`` points, ``[B, N, 4]`` boxes -> ``[B, N, A]`` bool, centre strictly inside."""
    x = points[:, 0][None, None, :]  # [A] -> [1, 1, A]
    y = points[:, 1][None, None, :]
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))  # each [B, N, 1]
    margin = torch.minimum(torch.minimum(x - x1, y - y1), torch.minimum(x2 - x, y2 - y))
    return margin > eps


def _nearest_points(
    points: torch.Tensor, strides: torch.Tensor | None, gt_boxes: torch.Tensor, needy: torch.Tensor
) -> torch.Tensor:
    """Fallback candidates: per stride level, the point centre nearest each needy GT's centre.

    Args:
        points: ``[A, 2]`` point centres; ``strides``: ``[A]`` or None (a single level).
        gt_boxes: ``[B, N, 4]`` xyxy; ``needy``: ``[B, N]`` bool, the GTs that need it.

    Returns:
        ``[B, N, A]`` bool, one True per level in each needy row. Distances are computed
        only for the needy GTs (``[M, A_l]``), so the common case costs nothing.
    """
    near = torch.zeros(*needy.shape, points.shape[0], dtype=torch.bool, device=points.device)
    rows = needy.nonzero()  # [M, 2] (image, GT) pairs
    if rows.shape[0] == 0:
        return near
    boxes = gt_boxes[rows[:, 0], rows[:, 1]]  # [M, 4]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [M, 2]
    level_of = torch.zeros_like(points[:, 0]) if strides is None else strides.to(points)
    for stride in level_of.unique():
        idx = (level_of == stride).nonzero().flatten()  # [A_l] points of this level
        dist = (centres[:, None, :] - points[idx][None, :, :]).square().sum(-1)  # [M, A_l]
        near[rows[:, 0], rows[:, 1], idx[dist.argmin(dim=1)]] = True
    return near


def _resolve_conflicts(claims: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """A point claimed by several GTs keeps only the claiming GT of highest IoU.

    Args:
        claims: ``[B, N, A]`` bool candidate matrix.
        iou: ``[B, N, A]`` IoU of each point's predicted box with each GT.
    """
    contested = claims.sum(dim=1, keepdim=True) > 1  # [B, 1, A]
    best = torch.where(claims, iou, -1.0).argmax(dim=1, keepdim=True)  # [B, 1, A]
    winner = torch.zeros_like(claims).scatter_(1, best, True)
    return torch.where(contested, winner & claims, claims)


def _background(batch: int, num_points: int, num_classes: int, like: torch.Tensor) -> Assignment:
    """An all-background assignment (no GT in the batch)."""
    device = like.device
    return Assignment(
        fg=torch.zeros(batch, num_points, dtype=torch.bool, device=device),
        labels=torch.full((batch, num_points), num_classes, dtype=torch.int64, device=device),
        boxes=torch.zeros(batch, num_points, 4, dtype=torch.float32, device=device),
        scores=torch.zeros(batch, num_points, num_classes, dtype=torch.float32, device=device),
        gt_index=torch.zeros(batch, num_points, dtype=torch.int64, device=device),
    )
