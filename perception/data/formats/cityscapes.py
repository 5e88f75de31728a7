"""Cityscapes -> v1: boxes from ``gtFine`` instance ids, drivable = road, metric depth from
the SGM disparity maps and the camera from each frame's ``camera`` JSON.

Published layout (cityscapesScripts): for ``{split}/{city}/{city}_{seq}_{frame}``,
``leftImg8bit/..._leftImg8bit.png``, ``gtFine/..._gtFine_instanceIds.png`` (labelId * 1000 +
instance for instance classes, plain labelId for stuff and crowd groups),
``gtFine/..._gtFine_labelIds.png``, ``disparity/..._disparity.png`` (uint16, disparity =
(p - 1) / 256, p = 0 invalid) and ``camera/..._camera.json``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from perception.data.formats.convert import (
    ClassMap,
    Options,
    Sample,
    Source,
    SourceError,
    image_size,
    read_png,
)
from perception.structures import Camera

# the official labelIds of the classes with instances (cityscapesscripts/helpers/labels.py)
INSTANCE_CLASSES = {
    24: "person",
    25: "rider",
    26: "car",
    27: "truck",
    28: "bus",
    29: "caravan",
    30: "trailer",
    31: "train",
    32: "motorcycle",
    33: "bicycle",
}
ROAD = 7
# unlabeled (0), rectification border (2), out of roi (3): no label there, not background
NO_LABEL = (0, 2, 3)
DEFAULT_MAP: dict[str, str | None] = {
    "car": "car",
    "truck": "truck",
    "bus": "bus",
    "person": "pedestrian",
    "rider": "cyclist",
    "caravan": None,
    "trailer": None,
    "train": None,
    "motorcycle": None,
    "bicycle": None,
}
MAX_DEPTH = 65535 / 256.0  # the largest depth a v1 uint16 PNG holds; farther is left at 0
IMAGE_SUFFIX = "_leftImg8bit.png"

NOTES = {
    "boxes": "tight bounds of each gtFine instance's pixels (instanceIds value >= 1000, "
    "labelId = value // 1000), x2/y2 = last pixel + 1",
    "ignore": "crowd groups of mapped classes (instanceIds value == labelId of an instance "
    "class): one ignore box per 8-connected region, per labelId",
    "drivable": "road (labelId 7) = 1; unlabeled, rectification border and out of roi "
    "(labelIds 0, 2, 3) = 255 (ignore); all else 0",
    "depth": "baseline * fx / disparity, disparity = (p - 1) / 256 from disparity/*.png (SGM); "
    f"0 where p <= 1 (invalid or zero disparity) or deeper than {MAX_DEPTH:.2f} m",
    "camera": "fx, fy, u0, v0 from camera/*_camera.json 'intrinsic'",
}


def read(src: Path, options: Options, class_map: ClassMap) -> Source:
    """Check the split's folders up front and return its frames, read lazily.

    The ``test`` split's gtFine files are placeholders (only ego vehicle and rectification
    border are drawn; the labels are withheld), so they are not read: boxes and drivable stay
    unlabeled there instead of teaching "no objects, no road".
    """
    src, split = Path(src), options.split
    images_dir = src / "leftImg8bit" / split
    if not images_dir.is_dir():
        have = sorted(p.name for p in (src / "leftImg8bit").glob("*") if p.is_dir())
        raise SourceError(f"{images_dir}: missing (Cityscapes splits found: {have or 'none'})")
    gt_dir = src / "gtFine" / split
    if split != "test" and not gt_dir.is_dir():
        raise SourceError(f"{gt_dir}: missing (gtFine_trainvaltest holds gtFine/{split}/)")
    notes = {"source": f"Cityscapes, {split} split", **NOTES}
    if split == "test":
        notes["boxes"] = notes["drivable"] = "none (gtFine test labels are withheld)"
        del notes["ignore"]
    for folder in ("disparity", "camera"):
        if not (src / folder / split).is_dir():
            notes["depth"] = f"none (no {folder}/{split} folder)"
    images = sorted(images_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    dirs = {name: src / name / split for name in ("gtFine", "disparity", "camera")}
    labeled = split != "test"
    return Source(
        f"cityscapes-{split}", len(images), _samples(images, dirs, labeled, class_map), notes
    )


def _samples(
    images: list[Path], dirs: dict[str, Path], labeled: bool, class_map: ClassMap
) -> Iterator[Sample]:
    for image in images:
        city, base = image.parent.name, image.name[: -len(IMAGE_SUFFIX)]
        width, height = image_size(image)
        sample = Sample(id=re.sub(r"[^A-Za-z0-9_.-]", "_", base), image=image)
        camera_file = dirs["camera"] / city / f"{base}_camera.json"
        baseline = None
        if camera_file.is_file():
            sample.camera, baseline = read_camera(camera_file)
        instances = dirs["gtFine"] / city / f"{base}_gtFine_instanceIds.png"
        if labeled and instances.is_file():
            ids = read_png(instances, (np.uint8, np.uint16), (height, width))
            sample.boxes, sample.labels, sample.ignore = _instances(ids, instances, class_map)
        label_ids = dirs["gtFine"] / city / f"{base}_gtFine_labelIds.png"
        if labeled and label_ids.is_file():
            labels = read_png(label_ids, (np.uint8,), (height, width))
            drivable = np.where(labels == ROAD, 1, 0).astype(np.uint8)
            drivable[np.isin(labels, NO_LABEL)] = 255
            sample.drivable = drivable
        disparity = dirs["disparity"] / city / f"{base}_disparity.png"
        if baseline is not None and sample.camera is not None and disparity.is_file():
            p = read_png(disparity, (np.uint16,), (height, width)).astype(np.float64)
            with np.errstate(divide="ignore"):
                depth = baseline * sample.camera.fx * 256.0 / (p - 1.0)
            depth[(p <= 1) | (depth > MAX_DEPTH)] = 0.0
            sample.depth = depth.astype(np.float32)
        yield sample


def _instances(
    ids: np.ndarray, path: Path, class_map: ClassMap
) -> tuple[list[list[float]], list[str], list[list[float]] | None]:
    """Boxes and labels of the instances, and ignore boxes of crowd groups (``NOTES``)."""
    ys, xs = np.nonzero(ids >= 1000)
    values = ids[ys, xs]
    order = np.argsort(values, kind="stable")
    values, ys, xs = values[order], ys[order], xs[order]
    boxes, labels = [], []
    if values.size:
        uniq, starts = np.unique(values, return_index=True)
        x1, x2 = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)
        y1, y2 = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
        for k, value in enumerate(uniq.tolist()):
            name = INSTANCE_CLASSES.get(value // 1000)
            if name is None:
                raise SourceError(
                    f"{path}: value {value} encodes labelId {value // 1000}, "
                    "not a Cityscapes instance class (24-33)"
                )
            target = class_map(name)
            if target is not None:
                boxes.append([float(x1[k]), float(y1[k]), float(x2[k] + 1), float(y2[k] + 1)])
                labels.append(target)
    ignore = []
    for label_id, name in INSTANCE_CLASSES.items():
        if class_map.mapping.get(name) is None:  # read, not called: groups are not counted
            continue
        crowd = (ids == label_id).astype(np.uint8)
        if not crowd.any():
            continue
        count, _, stats, _ = cv2.connectedComponentsWithStats(crowd, connectivity=8)
        for x, y, w, h, _area in stats[1:count].tolist():
            ignore.append([float(x), float(y), float(x + w), float(y + h)])
    return boxes, labels, ignore or None


def read_camera(path: Path) -> tuple[Camera, float]:
    """Intrinsics and stereo baseline (metres) from one ``_camera.json``."""
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SourceError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SourceError(f"{path}: cannot be read ({err})") from None

    def number(section: str, key: str) -> float:
        block = raw.get(section) if isinstance(raw, dict) else None
        if not isinstance(block, dict):
            raise SourceError(f"{path}: missing key {section!r} (an object)")
        if key not in block:
            raise SourceError(f"{path}: missing key '{section}.{key}'")
        value = block[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise SourceError(f"{path}: '{section}.{key}' must be a number, got {value!r}")
        return float(value)

    fx, fy = number("intrinsic", "fx"), number("intrinsic", "fy")
    camera = Camera(fx, fy, number("intrinsic", "u0"), number("intrinsic", "v0"))
    baseline = number("extrinsic", "baseline")
    if fx <= 0 or fy <= 0 or baseline <= 0:
        raise SourceError(f"{path}: fx, fy and 'extrinsic.baseline' must be positive")
    return camera, baseline
