"""``collate``: network-size ``Sample``s (or ``None`` for skipped ones) -> one ``Batch``.

Unlabeled tasks are filled with their "ignore" value (255 for lane/drivable, 0 for depth)
*and* flagged False in ``has_*``, so they can never be read as background. Detection
ignore regions stay ragged like the boxes: ``Batch.ignore`` is B x ``[M_i, 4]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from perception.data.transforms import IGNORE
from perception.structures import Batch, Sample


def collate(samples: Sequence[Sample | None], image_size: tuple[int, int] | None = None) -> Batch:
    """Stack samples that all share one network size ``H x W`` into a ``Batch``.

    Args:
        samples: transformed samples; ``None`` entries (bad samples the dataset skipped)
            are dropped and counted in ``Batch.num_skipped``.
        image_size: ``(H, W)`` used only for the shape of an empty batch.

    Returns:
        A ``Batch``. When every sample was skipped it has ``B = 0`` (images
        ``[0, 3, H, W]``, or ``H = W = 0`` without ``image_size``); training code skips
        such a batch instead of crashing.

    Raises:
        ValueError: samples of different sizes (a transform to the network size is missing).
    """
    kept = [s for s in samples if s is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        return _empty(image_size or (0, 0), skipped)
    sizes = {s.image.shape[:2] for s in kept}
    if len(sizes) != 1:
        raise ValueError(f"cannot collate samples of different sizes {sorted(sizes)}")
    (h, w) = sizes.pop()
    images = torch.from_numpy(np.stack([s.image for s in kept]))  # [B, H, W, 3]
    images = images.permute(0, 3, 1, 2).contiguous()  # [B, H, W, 3] -> [B, 3, H, W]
    return Batch(
        images=images,
        boxes=[_boxes(s) for s in kept],
        labels=[_labels(s) for s in kept],
        lane=_dense([s.lane for s in kept], (h, w), np.uint8, IGNORE),
        drivable=_dense([s.drivable for s in kept], (h, w), np.uint8, IGNORE),
        depth=_dense([s.depth for s in kept], (h, w), np.float32, 0.0),
        valid=_dense([s.valid for s in kept], (h, w), np.bool_, True),
        has_det=_flags([s.boxes is not None for s in kept]),
        has_lane=_flags([s.lane is not None for s in kept]),
        has_drivable=_flags([s.drivable is not None for s in kept]),
        has_depth=_flags([s.depth is not None for s in kept]),
        camera=torch.from_numpy(np.stack([_camera(s) for s in kept])),  # [B, 4]
        letterbox=torch.from_numpy(np.stack([_letterbox(s) for s in kept])),  # [B, 5]
        ids=[s.id for s in kept],
        num_skipped=skipped,
        ignore=[_regions(s.ignore) for s in kept],
    )


def _empty(image_size: tuple[int, int], skipped: int) -> Batch:
    h, w = image_size
    flags = torch.zeros(0, dtype=torch.bool)
    return Batch(
        images=torch.zeros((0, 3, h, w), dtype=torch.uint8),
        boxes=[],
        labels=[],
        lane=torch.full((0, h, w), IGNORE, dtype=torch.uint8),
        drivable=torch.full((0, h, w), IGNORE, dtype=torch.uint8),
        depth=torch.zeros((0, h, w), dtype=torch.float32),
        valid=torch.zeros((0, h, w), dtype=torch.bool),
        has_det=flags,
        has_lane=flags.clone(),
        has_drivable=flags.clone(),
        has_depth=flags.clone(),
        camera=torch.zeros((0, 4), dtype=torch.float32),
        letterbox=torch.zeros((0, 5), dtype=torch.float32),
        ids=[],
        num_skipped=skipped,
    )


def _dense(
    arrays: list[np.ndarray | None], size: tuple[int, int], dtype: type, fill: float
) -> torch.Tensor:
    """``B x [H, W]`` (``None`` -> ``fill``) -> ``[B, H, W]`` of ``dtype``."""
    full = np.full((len(arrays), *size), fill, dtype=dtype)
    for i, array in enumerate(arrays):
        if array is not None:
            full[i] = array
    return torch.from_numpy(full)


def _flags(values: list[bool]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


def _boxes(sample: Sample) -> torch.Tensor:
    if sample.boxes is None:
        return torch.zeros((0, 4), dtype=torch.float32)
    return torch.from_numpy(np.asarray(sample.boxes, np.float32).reshape(-1, 4))


def _regions(ignore: np.ndarray | None) -> torch.Tensor:
    """``[M, 4]`` float32 ignore regions; ``[0, 4]`` when the sample has none."""
    if ignore is None:
        return torch.zeros((0, 4), dtype=torch.float32)
    return torch.from_numpy(np.asarray(ignore, np.float32).reshape(-1, 4))


def _labels(sample: Sample) -> torch.Tensor:
    if sample.labels is None:
        return torch.zeros((0,), dtype=torch.int64)
    return torch.from_numpy(np.asarray(sample.labels, np.int64).reshape(-1))


def _camera(sample: Sample) -> np.ndarray:
    """``[4]`` float32 ``(fx, fy, cx, cy)``; NaN when the dataset gives no intrinsics."""
    if sample.camera is None:
        return np.full(4, np.nan, np.float32)
    return sample.camera.as_array()


def _letterbox(sample: Sample) -> np.ndarray:
    """``[5]`` float32; identity (scale 1, no pad, source = this size) when untouched."""
    if sample.letterbox is None:
        return np.array([1.0, 0.0, 0.0, sample.height, sample.width], np.float32)
    return sample.letterbox.as_array()
