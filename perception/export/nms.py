"""In-graph detection decoding + class-aware NMS for ``export_onnx(..., nms=...)``.

NMS is the ONNX ``NonMaxSuppression`` op (batched, per class, exact greedy NMS as
torchvision's), reached through a small custom torch op (``perception::class_nms``) whose
eager kernel is torchvision and whose ONNX translation is one onnxscript function.
``torchvision.ops.batched_nms`` is not used because its ONNX translation handles one image
and one class, so it cannot serve a dynamic batch. The variable-length selection is padded
to fixed ``[B, max_det]`` outputs with a top-k (``det_count`` says how many rows are real).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from perception.ops.boxes import decode_box_dist


@dataclass(frozen=True)
class NMSConfig:
    """In-graph NMS settings; the same meaning as ``postprocess_detections``' arguments.

    ``clip`` clips decoded boxes to the network canvas before NMS (pass
    ``image_size=(H, W)`` to ``postprocess_detections`` for the same result).
    """

    conf: float = 0.25
    iou: float = 0.6
    max_det: int = 300
    pre_nms_topk: int = 1000
    clip: bool = True


# ----------------------------------------------------------------------- the NMS custom op


@torch.library.custom_op("perception::class_nms", mutates_args=())
def class_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, conf: float) -> Tensor:
    """Eager kernel of ONNX ``NonMaxSuppression``: per image and class, greedy NMS.

    Args:
        boxes: ``[B, N, 4]`` xyxy.
        scores: ``[B, K, N]`` scores; only ``score > conf`` enter.
        max_per_class: at most this many kept boxes per image and class.
        iou: suppress a box overlapping a kept higher-scoring box by more than ``iou``.
        conf: score threshold.

    Returns:
        ``[M, 3]`` int64 rows ``(batch, class, box)``, like the ONNX op.
    """
    from torchvision.ops import nms

    rows = []
    for b in range(scores.shape[0]):
        for k in range(scores.shape[1]):
            idx = torch.nonzero(scores[b, k] > conf).squeeze(1)  # [C]
            keep = idx[nms(boxes[b, idx].float(), scores[b, k, idx].float(), iou)][:max_per_class]
            rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, k), keep], 1))
    if not rows:
        return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
    return torch.cat(rows).long()


@class_nms.register_fake
def _class_nms_fake(
    boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, conf: float
) -> Tensor:
    """Shape for tracing: ``[M, 3]`` with a data-dependent ``M``."""
    num = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((num, 3), dtype=torch.int64)


def onnx_class_nms(boxes, scores, max_per_class: int, iou: float, conf: float):
    """onnxscript translation of ``perception::class_nms``: one ``NonMaxSuppression`` node.

    ``center_point_box=0`` reads corners as ``(y1, x1, y2, x2)``; IoU is symmetric in x/y,
    so xyxy boxes give the same result.
    """
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(
        boxes,
        scores,
        op.Constant(value_ints=[max_per_class]),
        op.Constant(value_floats=[iou]),
        op.Constant(value_floats=[conf]),
        center_point_box=0,
    )


def detect(
    cls_logits: Tensor,
    box_dist: Tensor,
    points: Tensor,
    point_strides: Tensor,
    cfg: NMSConfig,
    image_size: tuple[int, int],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Raw ``[B, A, K]`` / ``[B, A, 4]`` -> padded ``(det_boxes [B, D, 4], det_scores [B, D],
    det_labels [B, D], det_count [B])``, ``D = max_det``, rows sorted by decreasing score."""
    b, a, k = cls_logits.shape
    scores = cls_logits.float().sigmoid()  # [B, A, K]
    boxes = decode_box_dist(box_dist.float(), points, point_strides)  # [B, A, 4]
    if cfg.clip:
        h, w = image_size
        boxes = torch.cat([boxes[..., 0::2].clamp(0, w), boxes[..., 1::2].clamp(0, h)], -1)
        boxes = boxes[..., [0, 2, 1, 3]]  # (x1, x2, y1, y2) -> xyxy
    # pre-NMS top-k over all (point, class) pairs: zero out scores below the k-th best
    topk = min(cfg.pre_nms_topk, a * k)
    kth = scores.reshape(b, a * k).topk(topk, dim=1).values[:, -1:]  # [B, 1]
    scores = torch.where(scores >= kth[:, :, None], scores, torch.zeros_like(scores))
    scores_t = scores.transpose(1, 2).contiguous()  # [B, K, A]
    sel = class_nms(boxes, scores_t, cfg.max_det, cfg.iou, cfg.conf)  # [M, 3]
    return _pad_selection(sel, boxes, scores_t, cfg.max_det)


def _pad_selection(
    sel: Tensor, boxes: Tensor, scores: Tensor, max_det: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """NMS rows ``[M, 3]`` -> the ``max_det`` best per image, padded to fixed shapes.

    Each image ranks all ``M`` rows with the others' masked to -1 (real scores are > 0),
    plus ``max_det`` padding columns, so top-k is defined even when ``M < max_det``.
    """
    bi, ci, ai = sel[:, 0], sel[:, 1], sel[:, 2]  # [M] each
    batch = boxes.shape[0]
    sel_scores = scores[bi, ci, ai]  # [M]
    sel_boxes = boxes[bi, ai]  # [M, 4]
    mine = bi[None, :] == torch.arange(batch, device=sel.device)[:, None]  # [B, M]
    ranked = torch.where(mine, sel_scores[None, :], torch.full_like(sel_scores, -1.0)[None, :])
    pad = torch.full((batch, max_det), -1.0, dtype=ranked.dtype, device=ranked.device)
    top, order = torch.cat([ranked, pad], dim=1).topk(max_det, dim=1)  # [B, D]
    valid = top > 0  # [B, D]
    all_boxes = torch.cat([sel_boxes, sel_boxes.new_zeros((max_det, 4))])  # [M + D, 4]
    all_labels = torch.cat([ci, ci.new_zeros((max_det,))])  # [M + D]
    det_boxes = all_boxes[order] * valid[..., None]  # [B, D, 4]
    det_scores = torch.where(valid, top, torch.zeros_like(top))  # [B, D]
    det_labels = torch.where(valid, all_labels[order], torch.zeros_like(all_labels[order]))
    return det_boxes, det_scores, det_labels, valid.sum(dim=1)
