"""Synthetic scenes for the probing studies (``gradients``, ``hierarchy``), rendered once
and cached under ``<out>/data``.

A sample depends only on ``(seed, index, size)`` (``render_sample``), so those and the
count are the cache key: a rerun with the same budget reads the same arrays and a
different size or count is a different file, never a stale one. The renderer's per-pixel
object ids give true vehicle masks (not box interiors), with occlusion already resolved.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from perception.data.synthetic.writer import render_sample

VEHICLES: tuple[str, ...] = ("car", "truck", "bus")


def vehicle_mask(object_ids: np.ndarray, labels: list[str | None]) -> np.ndarray:
    """``[H, W]`` bool: the pixel shows a car, truck or bus (``labels`` per scene solid)."""
    is_vehicle = np.array([label in VEHICLES for label in labels] + [False])
    return is_vehicle[np.where(object_ids >= 0, object_ids, len(labels))]  # -1 -> False


def render_scenes(out: Path, num: int, size: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    """``num`` scenes of ``seed`` at ``size`` (H, W), from the cache when present.

    Returns ``image [N, H, W, 3] uint8``, ``drivable [N, H, W] uint8`` and
    ``vehicle [N, H, W] bool``.
    """
    h, w = size
    path = Path(out) / "data" / f"scenes-seed{seed}-{h}x{w}-n{num}.npz"
    if path.is_file():
        with np.load(path) as cached:
            return {key: cached[key] for key in cached.files}
    images, drivable, vehicle = [], [], []
    for index in range(num):
        scene, rendered = render_sample(seed, index, (h, w))
        images.append(rendered.image)
        drivable.append(rendered.drivable)
        vehicle.append(vehicle_mask(rendered.object_ids, [s.label for s in scene.solids]))
    arrays = {
        "image": np.stack(images),
        "drivable": np.stack(drivable),
        "vehicle": np.stack(vehicle),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")  # renamed at the end: never a partial cache
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return arrays
