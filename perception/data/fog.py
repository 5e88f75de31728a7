"""Fog augmentation: albumentations' ``RandomFog``, drawn in time proportional to the fog.

``RandomFog`` lays a few hundred to a few thousand small bright discs over the image,
each blended in turn, and its drawing copies and blends the *whole* image for every disc:
35 to 75 ms a foggy 288 x 480 sample on a 2-core CPU, the largest single cost of loading
in the samples it hits. A disc changes only the pixels under it, so blending just the
disc's bounding box gives the very same pixels (``tests/test_transforms.py`` compares the
two) at a fraction of the cost. The parameters (where the discs go, how big, how dense)
are still drawn by ``RandomFog`` itself, so seeds give the same fog as before.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np


def add_fog(
    image: np.ndarray,
    intensity: float,
    alpha_coef: float,
    positions: list[tuple[int, int]],
    radiuses: list[int],
) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> the same image under fog discs, then a light blur.

    Each disc is blended into the running result with weight ``alpha_coef * intensity``,
    in order, as ``RandomFog`` does, but only inside the disc's bounding box.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"fog needs an [H, W, 3] uint8 image, got {image.dtype} {image.shape}")
    result = image.copy()
    h, w = image.shape[:2]
    alpha = alpha_coef * intensity
    for (x, y), r in zip(positions, radiuses, strict=True):
        x0, y0 = max(0, x - r - 1), max(0, y - r - 1)
        x1, y1 = min(w, x + r + 2), min(h, y + r + 2)
        if x0 >= x1 or y0 >= y1:
            continue  # the disc lies outside the image
        box = result[y0:y1, x0:x1]
        overlay = box.copy()
        cv2.circle(overlay, (x - x0, y - y0), r, (255, 255, 255), thickness=-1)
        result[y0:y1, x0:x1] = cv2.addWeighted(overlay, alpha, box, 1 - alpha, 0)
    blur = max(3, min(h, w) // 30)
    blur += 1 - blur % 2  # odd
    return cv2.GaussianBlur(result, (blur, blur), 0)


class Fog(A.RandomFog):
    """``A.RandomFog`` with the same parameters and draws, drawn by ``add_fog``."""

    def apply(
        self,
        img: np.ndarray,
        particle_positions: list[tuple[int, int]],
        radiuses: list[int],
        intensity: float,
        **params: Any,
    ) -> np.ndarray:
        return add_fog(img, intensity, self.alpha_coef, particle_positions, radiuses)
