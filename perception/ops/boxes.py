"""THE box module: every box operation of the package lives here.

One format everywhere: **xyxy in pixels**, ``[N, 4]`` rows ``(x1, y1, x2, y2)`` with
``x1 <= x2`` and ``y1 <= y2``, pixel-edge convention (pixel column ``i`` spans
``[i, i + 1)``, so a box around exactly that pixel is ``x1 = i, x2 = i + 1``). Which pixel
frame (source image or network canvas) is stated by each function.

Functions accept numpy arrays or torch tensors and return the same kind, so the data
pipeline (numpy) and postprocess (torch) share one implementation.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

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
