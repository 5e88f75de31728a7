"""THE box module: every box operation of the package lives here.

One format everywhere: **xyxy in pixels**, ``[N, 4]`` rows ``(x1, y1, x2, y2)`` with
``x1 <= x2`` and ``y1 <= y2``, pixel-edge convention (pixel column ``i`` spans
``[i, i + 1)``, so a box around exactly that pixel is ``x1 = i, x2 = i + 1``). Which pixel
frame (source image or network canvas) is stated by each function.

Functions accept numpy arrays or torch tensors and return the same kind, so the data
pipeline (numpy) and postprocess (torch) share one implementation.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from perception.structures import Letterbox

Boxes = TypeVar("Boxes", np.ndarray, torch.Tensor)


def _check_shape(boxes: np.ndarray | torch.Tensor) -> None:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [N, 4] (xyxy), got {tuple(boxes.shape)}")


def clip_boxes(boxes: Boxes, width: float, height: float) -> Boxes:
    """Clip xyxy pixel boxes to the image ``[0, width] x [0, height]``.

    Args:
        boxes: ``[N, 4]`` xyxy pixels in the frame of the ``width`` x ``height`` image.
        width, height: image size in pixels.

    Returns:
        ``[N, 4]`` xyxy, a new array/tensor of the same kind and dtype. A box lying fully
        outside collapses to zero width or height (see ``box_area``); callers that need
        only real boxes drop those.
    """
    _check_shape(boxes)
    if isinstance(boxes, torch.Tensor):
        x = boxes[:, 0::2].clamp(0, width)
        y = boxes[:, 1::2].clamp(0, height)
        return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
    out = boxes.copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    return out


def box_area(boxes: Boxes) -> Boxes:
    """Area in square pixels of xyxy boxes.

    Args:
        boxes: ``[N, 4]`` xyxy pixels; ``x2 < x1`` or ``y2 < y1`` counts as zero extent.

    Returns:
        ``[N]`` areas, same kind and dtype as ``boxes``.
    """
    _check_shape(boxes)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    if isinstance(boxes, torch.Tensor):
        return w.clamp(min=0) * h.clamp(min=0)
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def letterbox_to_source(boxes: Boxes, letterbox: Letterbox, clip: bool = True) -> Boxes:
    """Map xyxy boxes from network pixels back to source-image pixels.

    The letterbox placed the source as ``net = src * scale + pad``, so
    ``src = (net - pad) / scale``.

    Args:
        boxes: ``[N, 4]`` xyxy in network (letterboxed canvas) pixels.
        letterbox: how the source image was placed into the canvas.
        clip: clip the result to the source image (predictions reaching into the
            padding otherwise land outside it).

    Returns:
        ``[N, 4]`` xyxy in source pixels, same kind as ``boxes`` (float32 if ``boxes``
        is an integer type, else the same dtype).
    """
    _check_shape(boxes)
    offset = [letterbox.pad_x, letterbox.pad_y, letterbox.pad_x, letterbox.pad_y]
    if isinstance(boxes, torch.Tensor):
        boxes = boxes if boxes.is_floating_point() else boxes.float()
        pad = torch.tensor(offset, dtype=boxes.dtype, device=boxes.device)
    else:
        boxes = boxes if np.issubdtype(boxes.dtype, np.floating) else boxes.astype(np.float32)
        pad = np.asarray(offset, dtype=boxes.dtype)
    out = (boxes - pad) / letterbox.scale
    if clip:
        out = clip_boxes(out, letterbox.src_w, letterbox.src_h)
    return out


# --------------------------------------------------------------------------- IoU family
# Torch only (training and postprocess): autograd flows through every function below.


def aligned_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of paired xyxy boxes, broadcasting over leading dimensions.

    Args:
        a, b: ``[..., 4]`` xyxy pixels (same frame), broadcastable against each other.
        eps: added to the union so degenerate (zero-area) pairs give 0, not NaN.

    Returns:
        ``[...]`` IoU in ``[0, 1]``.
    """
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / (union + eps)


def aligned_ioa(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over the area of ``a``: how much of each ``a`` lies inside its ``b``.

    COCO's overlap of a detection ``a`` with a crowd / ignore region ``b`` (``iscrowd``):
    a detection fully inside a large region scores 1 however small it is.

    Args:
        a, b: ``[..., 4]`` xyxy pixels (same frame), broadcastable against each other.

    Returns:
        ``[...]`` in ``[0, 1]``; 0 where ``a`` has zero area.
    """
    inter = _intersection(a, b)
    area = _area(a).expand_as(inter)
    return torch.where(area > 0, inter / area.clamp_min(torch.finfo(inter.dtype).tiny), 0.0)


def aligned_giou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Generalized IoU (Rezatofighi et al., 2019) of paired xyxy boxes, broadcasting.

    GIoU = IoU - (hull - union) / hull, in ``[-1, 1]``; unlike IoU it still has a gradient
    when the boxes do not overlap, which is why the box loss uses ``1 - GIoU``.

    Args:
        a, b: ``[..., 4]`` xyxy pixels, broadcastable.

    Returns:
        ``[...]`` GIoU.
    """
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    iou = inter / (union + eps)
    hull_wh = torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])
    hull = hull_wh.clamp(min=0).prod(dim=-1)
    return iou - (hull - union) / (hull + eps)


def aligned_ciou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU (Zheng et al., 2020) of paired xyxy boxes, broadcasting.

    CIoU = IoU - rho^2 / c^2 - alpha * v: the centre distance ``rho`` over the hull diagonal
    ``c`` pulls centres together, ``v`` penalises aspect-ratio mismatch with
    ``alpha = v / (1 - IoU + v)`` treated as a constant (as in the paper).

    Args:
        a, b: ``[..., 4]`` xyxy pixels, broadcastable.

    Returns:
        ``[...]`` CIoU in ``[-1.5, 1]``.
    """
    iou = aligned_iou(a, b, eps)
    hull_wh = torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])
    diag2 = hull_wh.pow(2).sum(dim=-1) + eps
    centre_a = (a[..., :2] + a[..., 2:]) / 2
    centre_b = (b[..., :2] + b[..., 2:]) / 2
    rho2 = (centre_a - centre_b).pow(2).sum(dim=-1)
    wh_a = (a[..., 2:] - a[..., :2]).clamp(min=0)
    wh_b = (b[..., 2:] - b[..., :2]).clamp(min=0)
    angle_a = torch.atan(wh_a[..., 0] / (wh_a[..., 1] + eps))
    angle_b = torch.atan(wh_b[..., 0] / (wh_b[..., 1] + eps))
    v = (4 / math.pi**2) * (angle_a - angle_b).pow(2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - rho2 / diag2 - alpha * v


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of two sets of xyxy boxes (same frame), as ``torchvision.ops.box_iou``.

    Args:
        a: ``[N, 4]`` xyxy pixels.
        b: ``[M, 4]`` xyxy pixels.

    Returns:
        ``[N, M]`` IoU, entry ``(i, j)`` for ``a[i]`` vs ``b[j]``.
    """
    _check_shape(a)
    _check_shape(b)
    return aligned_iou(a[:, None, :], b[None, :, :])  # [N, 1, 4] x [1, M, 4] -> [N, M]


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU, as ``torchvision.ops.generalized_box_iou``: ``[N, 4] x [M, 4] -> [N, M]``."""
    _check_shape(a)
    _check_shape(b)
    return aligned_giou(a[:, None, :], b[None, :, :])  # [N, 1, 4] x [1, M, 4] -> [N, M]


def _area(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` xyxy -> ``[...]`` area, negative extents counted as zero."""
    return (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(dim=-1)


def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` x ``[..., 4]`` xyxy (broadcast) -> ``[...]`` overlap area."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    return (rb - lt).clamp(min=0).prod(dim=-1)


# --------------------------------------------------------------------------- dense points
# The detection head predicts, at each dense point, distances (l, t, r, b) from the point to
# the four box sides. These four functions are the only place that encoding is spelt out:
# the loss and postprocess both call ``decode_box_dist``, so they cannot disagree.


def distances_to_boxes(points: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Side distances from points to xyxy boxes.

    Args:
        points: ``[A, 2]`` (x, y) network pixels.
        dist: ``[..., A, 4]`` (l, t, r, b) pixels from the point to the left, top, right
            and bottom sides (non-negative for a box containing its point).

    Returns:
        ``[..., A, 4]`` xyxy network pixels: ``(x - l, y - t, x + r, y + b)``.
    """
    return torch.cat([points - dist[..., :2], points + dist[..., 2:]], dim=-1)


def boxes_to_distances(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Inverse of ``distances_to_boxes``: ``[A, 2]`` points, ``[..., A, 4]`` xyxy -> (l, t, r, b).

    Distances are negative where the point lies outside its box; they are not clamped.
    """
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)


def decode_box_dist(raw: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """THE decode of ``HeadOutputs.box_dist``: ``softplus(raw) * stride`` distances -> xyxy.

    softplus keeps the distances positive and smooth; scaling by the level's stride lets
    every level predict values of the same order (a few units).

    Args:
        raw: ``[..., A, 4]`` raw (l, t, r, b) head outputs.
        points: ``[A, 2]`` point centres in network pixels (``ops.points.dense_points``).
        strides: ``[A]`` stride in pixels of each point's level.

    Returns:
        ``[..., A, 4]`` xyxy boxes in network pixels, in ``raw``'s dtype.
    """
    dist = F.softplus(raw) * strides[:, None].to(raw.dtype)  # [A] -> [A, 1] broadcast
    return distances_to_boxes(points.to(raw.dtype), dist)


def encode_box_dist(
    boxes: torch.Tensor, points: torch.Tensor, strides: torch.Tensor, min_dist: float = 1e-3
) -> torch.Tensor:
    """Inverse of ``decode_box_dist``: xyxy boxes -> the raw values that decode to them.

    Args:
        boxes: ``[..., A, 4]`` xyxy network pixels, each containing its point.
        points: ``[A, 2]`` point centres in network pixels.
        strides: ``[A]`` stride of each point.
        min_dist: distances (in units of stride) are clamped to at least this, since
            softplus never reaches 0.

    Returns:
        ``[..., A, 4]`` raw (l, t, r, b): ``softplus^-1(dist / stride)``.
    """
    scaled = (boxes_to_distances(points, boxes) / strides[:, None]).clamp(min=min_dist)
    return scaled + torch.log(-torch.expm1(-scaled))  # stable inverse softplus
