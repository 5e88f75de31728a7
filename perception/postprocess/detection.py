"""Detection decoding: raw head tensors -> scored, NMS-filtered boxes per image.

Pipeline per image (all in network pixels of the ``H x W`` canvas):

1. ``scores = sigmoid(cls_logits)`` — one independent probability per class.
2. Candidates: **multi-label** by default (as YOLOv8's validation): every
   ``(point, class)`` pair with ``score > conf`` is a candidate, so one point may yield
   boxes of two classes. ``multi_label=False`` keeps only the best class of each point.
3. The ``pre_nms_topk`` highest-scoring candidates survive (bounds the NMS cost).
4. Boxes ``(px - l, py - t, px + r, py + b)`` with ``(l, t, r, b) = softplus(raw) * stride``
   (``ops.boxes.decode_box_dist``), optionally clipped to the canvas.
5. Class-aware NMS (``torchvision.ops.batched_nms``: boxes of different classes never
   suppress each other), then the ``max_det`` best, in decreasing score order.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from perception.ops import boxes as box_ops
from perception.structures import Detections, Letterbox


def empty_detections(device: torch.device | str | None = None) -> Detections:
    """Zero detections: boxes ``[0, 4]`` float32, scores ``[0]`` float32, labels ``[0]`` int64."""
    return Detections(
        boxes=torch.zeros((0, 4), dtype=torch.float32, device=device),
        scores=torch.zeros((0,), dtype=torch.float32, device=device),
        labels=torch.zeros((0,), dtype=torch.int64, device=device),
    )


@torch.no_grad()
def postprocess_detections(
    cls_logits: torch.Tensor,
    box_dist: torch.Tensor,
    points: torch.Tensor,
    strides: torch.Tensor,
    conf: float = 0.25,
    iou: float = 0.6,
    max_det: int = 300,
    pre_nms_topk: int = 1000,
    *,
    multi_label: bool = True,
    image_size: tuple[int, int] | None = None,
) -> list[Detections]:
    """Decode a batch of raw detection outputs into per-image detections.

    Args:
        cls_logits: ``[B, A, K]`` class logits (``HeadOutputs.cls_logits``).
        box_dist: ``[B, A, 4]`` raw ``(l, t, r, b)``; pixels = ``softplus(raw) * stride``.
        points: ``[A, 2]`` point centres ``(x, y)`` in network pixels (``ops.points``).
        strides: ``[A]`` stride of each point in pixels.
        conf: keep candidates with ``sigmoid(logit) > conf``.
        iou: NMS IoU threshold (a box is suppressed by a higher-scoring box of the
            same class overlapping it by more than ``iou``).
        max_det: at most this many detections per image after NMS.
        pre_nms_topk: at most this many candidates per image enter NMS.
        multi_label: one candidate per ``(point, class)`` above ``conf`` (default), or
            only the best class per point (``False``).
        image_size: ``(H, W)`` of the network canvas to clip boxes to; ``None`` = no clip.

    Returns:
        ``B`` ``Detections`` in **network pixels**, boxes ``[N, 4]`` float32 xyxy, scores
        ``[N]`` float32 in decreasing order, labels ``[N]`` int64; ``N = 0`` gives
        correctly shaped empty tensors.
    """
    if cls_logits.ndim != 3 or box_dist.shape != (*cls_logits.shape[:2], 4):
        raise ValueError(
            f"expected cls_logits [B, A, K] and box_dist [B, A, 4], got "
            f"{tuple(cls_logits.shape)} and {tuple(box_dist.shape)}"
        )
    scores = cls_logits.float().sigmoid()  # [B, A, K]
    boxes = box_ops.decode_box_dist(box_dist.float(), points.float(), strides.float())  # [B,A,4]
    if image_size is not None:
        h, w = image_size
        boxes = box_ops.clip_boxes(boxes.reshape(-1, 4), w, h).reshape(boxes.shape)
    return [
        _decode_image(scores[b], boxes[b], conf, iou, max_det, pre_nms_topk, multi_label)
        for b in range(scores.shape[0])
    ]


def _decode_image(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    conf: float,
    iou: float,
    max_det: int,
    pre_nms_topk: int,
    multi_label: bool,
) -> Detections:
    """``scores [A, K]`` and decoded ``boxes [A, 4]`` of one image -> its ``Detections``."""
    num_classes = scores.shape[1]
    if multi_label:
        flat = scores.reshape(-1)  # [A, K] -> [A * K], index = point * K + class
        cand = torch.nonzero(flat > conf).squeeze(1)  # [C]
        cand_scores = flat[cand]
        point_idx, labels = cand // num_classes, cand % num_classes
    else:
        best, best_class = scores.max(dim=1)  # [A], [A]
        point_idx = torch.nonzero(best > conf).squeeze(1)  # [C]
        cand_scores, labels = best[point_idx], best_class[point_idx]
    if cand_scores.numel() > pre_nms_topk:
        cand_scores, order = cand_scores.topk(pre_nms_topk)
        point_idx, labels = point_idx[order], labels[order]
    cand_boxes = boxes[point_idx]  # [C, 4]
    keep = batched_nms(cand_boxes, cand_scores, labels, iou)[:max_det]  # sorted by score
    return Detections(cand_boxes[keep], cand_scores[keep], labels[keep].long())


def detections_to_source(det: Detections, letterbox: Letterbox) -> Detections:
    """Map one image's detections from network pixels to its source-image pixels.

    Boxes go through ``ops.boxes.letterbox_to_source`` (``src = (net - pad) / scale``)
    and are clipped to the ``src_w x src_h`` image; a box lying entirely in the letterbox
    padding collapses to zero area there and is dropped. Scores and labels are unchanged.
    """
    boxes = box_ops.letterbox_to_source(det.boxes, letterbox, clip=True)  # [N, 4] source px
    keep = box_ops.box_area(boxes) > 0  # [N]
    return Detections(boxes[keep], det.scores[keep], det.labels[keep])
