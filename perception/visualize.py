"""Drawing primitives shared by previews, ``Prediction.plot`` and training overlays.

Low-level on purpose (numpy + OpenCV only) so the data layer, the inference API and the
training callbacks draw the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

PALETTE = np.array(
    [
        [255, 56, 56],
        [255, 157, 151],
        [255, 112, 31],
        [255, 178, 29],
        [207, 210, 49],
        [72, 249, 10],
        [26, 147, 52],
        [0, 212, 187],
        [52, 69, 147],
        [100, 115, 255],
    ],
    np.uint8,
)
LANE_RGB = (255, 40, 40)
DRIVABLE_RGB = (40, 220, 90)


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[int],
    names: Sequence[str],
    scores: Sequence[float] | None = None,
) -> np.ndarray:
    """Copy of RGB ``image`` with xyxy pixel ``boxes`` and ``name score`` tags."""
    out = np.ascontiguousarray(image).copy()
    thick = max(1, round(min(out.shape[:2]) / 300))
    for i, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), labels, strict=True)):
        color = tuple(int(c) for c in PALETTE[int(label) % len(PALETTE)])
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), color, thick)
        text = names[int(label)] + (f" {scores[i]:.2f}" if scores is not None else "")
        scale = 0.35 * thick
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        y_text = max(y1, th + 2)
        cv2.rectangle(out, (x1, y_text - th - 2), (x1 + tw, y_text), color, -1)
        cv2.putText(
            out,
            text,
            (x1, y_text - 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return out


def tint(
    image: np.ndarray, weight: np.ndarray, rgb: tuple[int, int, int], alpha: float = 0.5
) -> np.ndarray:
    """Blend ``rgb`` into ``image`` where ``weight`` (``[H, W]`` in [0, 1]) is high."""
    a = (np.clip(weight, 0, 1) * alpha)[..., None].astype(np.float32)
    out = image.astype(np.float32) * (1 - a) + np.asarray(rgb, np.float32) * a
    return out.astype(np.uint8)


def colorize_depth(
    depth: np.ndarray, max_depth: float = 80.0, min_depth: float = 2.0
) -> np.ndarray:
    """``[H, W]`` metres -> ``[H, W, 3]`` uint8 RGB (near = warm); 0 / invalid = black.

    Log depth spreads the colours evenly from ``min_depth`` to ``max_depth``, so both a
    car at 5 m and one at 40 m stand out from the road behind them.
    """
    valid = np.isfinite(depth) & (depth > 0)
    d = np.clip(np.where(valid, depth, max_depth), min_depth, max_depth)
    norm = 1.0 - np.log(d / min_depth) / np.log(max_depth / min_depth)
    colored = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    colored[~valid] = 0
    return colored


def _free_corner(boxes: np.ndarray, w: int, h: int, iw: int, ih: int) -> tuple[int, int]:
    """Top-left ``(x, y)`` of the image corner where an ``iw x ih`` inset covers the least
    box area, so the depth inset hides as few detections as possible (top right wins ties:
    the sky is usually empty)."""
    corners = [(w - iw, 0), (0, 0), (w - iw, h - ih), (0, h - ih)]
    b = np.asarray(boxes, np.float32).reshape(-1, 4)

    def covered(x: int, y: int) -> float:
        ix = np.clip(np.minimum(b[:, 2], x + iw) - np.maximum(b[:, 0], x), 0, None)
        iy = np.clip(np.minimum(b[:, 3], y + ih) - np.maximum(b[:, 1], y), 0, None)
        return float((ix * iy).sum())

    return min(corners, key=lambda c: covered(*c))


def prediction_overlay(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    lane: np.ndarray | None,
    drivable: np.ndarray | None,
    depth: np.ndarray | None,
    inset: float = 0.3,
) -> np.ndarray:
    """The standard picture of a prediction: drivable (green) and lane (red) tints, boxes
    with scores, and a depth colormap inset (``inset`` of the width; 0: none) in the
    corner that hides the fewest boxes. Maps are ``[H, W]`` at the image size;
    lane/drivable are probabilities."""
    out = image
    if drivable is not None:
        out = tint(out, drivable, DRIVABLE_RGB, 0.35)
    if lane is not None:
        out = tint(out, lane, LANE_RGB, 0.8)
    out = draw_boxes(out, boxes, labels, names, scores)
    if depth is not None and inset > 0:
        h, w = out.shape[:2]
        iw, ih = max(1, int(w * inset)), max(1, int(h * inset))
        x, y = _free_corner(boxes, w, h, iw, ih)
        small = cv2.resize(colorize_depth(depth), (iw, ih), interpolation=cv2.INTER_NEAREST)
        out[y : y + ih, x : x + iw] = small
        cv2.rectangle(out, (x, y), (x + iw - 1, y + ih - 1), (255, 255, 255), 1)
    return out


def depth_scale(height: int, max_depth: float = 80.0, min_depth: float = 2.0) -> np.ndarray:
    """``[height, 70, 3]`` uint8: the colour scale of ``colorize_depth``, near at the top,
    with ticks in metres, to stand beside a depth map."""
    ramp = np.geomspace(min_depth, max_depth, height)[:, None].repeat(16, axis=1)
    bar = np.full((height, 70, 3), 255, np.uint8)
    bar[:, :16] = colorize_depth(ramp, max_depth, min_depth)
    for metres in (2, 5, 10, 20, 40, 80):
        if min_depth <= metres <= max_depth:
            y = int(np.log(metres / min_depth) / np.log(max_depth / min_depth) * (height - 1))
            cv2.line(bar, (16, y), (21, y), (0, 0, 0), 1)
            ty = min(max(y + 4, 10), height - 2)
            cv2.putText(bar, f"{metres} m", (23, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1)
    return bar


def titled(panels: Sequence[np.ndarray], titles: Sequence[str], height: int = 24) -> np.ndarray:
    """``panels`` side by side (same height) under a white strip naming each one."""
    strips = []
    for panel, title in zip(panels, titles, strict=True):
        strip = np.full((height, panel.shape[1], 3), 255, np.uint8)
        cv2.putText(strip, title, (6, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1)
        strips.append(strip)
    return np.vstack([np.hstack(strips), np.hstack(panels)])
