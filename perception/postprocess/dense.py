"""Dense decoding: segmentation probabilities, metric depth, and back to source size.

The heads predict at network resolution on the letterboxed canvas. ``dense_to_source``
undoes the letterbox: it crops the padding (the rows and columns the resized source
image did not cover) and resizes the rest to the original ``src_h x src_w``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from perception.structures import Letterbox

ResizeMode = Literal["bilinear", "nearest"]


def seg_probabilities(seg_logits: torch.Tensor) -> torch.Tensor:
    """``[B, S, H, W]`` logits -> float32 probabilities in ``[0, 1]`` (0 lane, 1 drivable)."""
    return seg_logits.float().sigmoid()


def depth_metres(depth_log: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, 1, H, W]`` natural log of (canonical) depth -> float32 metres.

    Args:
        depth_log: the depth head's raw output.
        scale: ``[B]`` canonical-to-metric factor ``f / f_c`` of each image's camera
            (``ops.camera.depth_scale``); ``None`` for a camera-blind model (factor 1).
    """
    depth = depth_log.float().exp()
    if scale is None:
        return depth
    return depth * scale.float().reshape(-1, 1, 1, 1)  # [B] -> [B, 1, 1, 1]


def content_window(letterbox: Letterbox, height: int, width: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the canvas rows/columns holding the resized source image.

    The letterbox pasted a ``round(src * scale)`` image at the whole-pixel offset
    ``round(pad)``; the window is that rectangle clipped to the ``height x width`` canvas.

    Raises:
        ValueError: the window is empty (the letterbox does not belong to this canvas).
    """
    new_h = max(1, round(letterbox.src_h * letterbox.scale))
    new_w = max(1, round(letterbox.src_w * letterbox.scale))
    y0, x0 = round(letterbox.pad_y), round(letterbox.pad_x)
    y1, x1 = min(height, y0 + new_h), min(width, x0 + new_w)
    y0, x0 = max(0, y0), max(0, x0)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"letterbox {letterbox} leaves no content in a {height}x{width} canvas")
    return y0, y1, x0, x1


def dense_to_source(
    maps: torch.Tensor, letterbox: Letterbox, mode: ResizeMode = "bilinear"
) -> torch.Tensor:
    """Crop the letterbox padding from network-resolution maps and resize to the source.

    Args:
        maps: ``[C, H, W]`` per-pixel values on the network canvas (probabilities, metres,
            or class ids).
        letterbox: how the source image was placed into the canvas.
        mode: ``"bilinear"`` for continuous maps (probabilities, depth; result float32),
            ``"nearest"`` for label maps (exact nearest neighbour; dtype kept).

    Returns:
        ``[C, src_h, src_w]`` in source-image pixels.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape [C, H, W], got {tuple(maps.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"unknown mode {mode!r}; valid: bilinear, nearest")
    y0, y1, x0, x1 = content_window(letterbox, maps.shape[1], maps.shape[2])
    crop = maps[None, :, y0:y1, x0:x1]  # [C, H, W] -> [1, C, h, w]
    size = (letterbox.src_h, letterbox.src_w)
    if mode == "bilinear":
        out = F.interpolate(crop.float(), size=size, mode="bilinear", align_corners=False)
    else:
        out = F.interpolate(crop.float(), size=size, mode="nearest-exact").to(maps.dtype)
    return out[0]  # [1, C, src_h, src_w] -> [C, src_h, src_w]
