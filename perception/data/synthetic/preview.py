"""Contact sheet of a v1 dataset: image + boxes | lane and drivable tint | depth."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from perception import visualize
from perception.data.formats import v1


def sample_panels(root: Path, record: v1.Record, info: v1.DatasetInfo) -> np.ndarray:
    """One row ``[H, 3W, 3]``: boxes, lane (red) + drivable (green) tint, depth colormap."""
    image = v1.read_image(v1.resolve(root, record.image))
    h, w = image.shape[:2]
    names = info.classes
    boxes = np.asarray(record.boxes or [], np.float32)
    labels = [names.index(n) for n in record.labels or []]
    left = visualize.draw_boxes(image, boxes, labels, names)
    middle = image
    for key, rgb in (("drivable", visualize.DRIVABLE_RGB), ("lane", visualize.LANE_RGB)):
        if getattr(record, key):
            mask = v1.read_mask(v1.resolve(root, getattr(record, key)))
            middle = visualize.tint(middle, (mask == 1).astype(np.float32), rgb, 0.6)
    right = np.zeros_like(image)
    if record.depth:
        right = visualize.colorize_depth(
            v1.read_depth(v1.resolve(root, record.depth), info.depth_scale)
        )
    return np.concatenate([left, middle, right[:h, :w]], axis=1)


def contact_sheet(
    root: str | os.PathLike, out: str | os.PathLike, rows: int = 8, width: int = 1500
) -> Path:
    """Write a PNG with the first ``rows`` samples of the dataset at ``root``."""
    root = Path(root)
    info, records = v1.read_info(root), v1.read_manifest(root)[:rows]
    strips = []
    for record in records:
        row = sample_panels(root, record, info)
        scale = width / row.shape[1]
        strips.append(
            cv2.resize(row, (width, round(row.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        )
    sheet = np.concatenate(strips, axis=0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return out
