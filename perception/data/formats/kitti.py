"""KITTI object benchmark -> v1: 2D boxes from ``label_2``, the camera from ``P2`` and sparse
metric depth from the Velodyne scan (or from the depth benchmark's annotated maps).

Published layout (``devkit_object``): ``{training,testing}/image_2/NNNNNN.png``,
``label_2/NNNNNN.txt`` (15 columns: type truncated occluded alpha x1 y1 x2 y2 h w l x y z
rotation_y; training only), ``calib/NNNNNN.txt`` (``KEY: floats`` lines) and
``velodyne/NNNNNN.bin`` (float32 x, y, z, reflectance). KITTI labels no lanes and no
drivable area, so those tasks stay unlabeled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

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
from perception.errors import PerceptionError
from perception.structures import Camera

DEFAULT_MAP: dict[str, str | None] = {
    "Car": "car",
    "Van": "car",
    "Truck": "truck",
    "Pedestrian": "pedestrian",
    "Person_sitting": "pedestrian",
    "Cyclist": "cyclist",
    "Tram": None,
    "Misc": None,
}
SPLITS = {"train": "training", "training": "training", "test": "testing", "testing": "testing"}
LABEL_COLUMNS = 15
CALIB_SIZES = {"P2": 12, "R0_rect": 9, "Tr_velo_to_cam": 12}  # the keys this reader uses
DEPTH_SCALE = 256.0  # KITTI depth benchmark PNGs: uint16 = metres * 256, 0 = no measurement

LIDAR_NOTE = (
    "sparse LiDAR: velodyne/*.bin points projected with P2 * R0_rect * Tr_velo_to_cam; depth "
    "= the third homogeneous coordinate, i.e. z in the image_2 camera frame (rectified z + "
    "P2[2,3], a few mm); points with z <= 0 or projecting outside the image are dropped; "
    "pixel = nearest pixel centre, centres at integer coordinates (col = floor(u + 0.5), "
    "row = floor(v + 0.5)); the nearest point wins per pixel; 0 = no measurement"
)


def read(src: Path, options: Options, class_map: ClassMap) -> Source:
    """Check the folders up front (a wrong ``--src`` fails before anything is written) and
    return the samples of one split, read lazily."""
    split = SPLITS.get(options.split)
    if split is None:
        raise PerceptionError(
            f"KITTI object has no split {options.split!r}; use train (training) or test (testing)"
        )
    if options.dontcare not in ("drop", "ignore"):
        raise PerceptionError(f"--dontcare must be drop or ignore, got {options.dontcare!r}")
    root = Path(src) / split
    images_dir, calib_dir = root / "image_2", root / "calib"
    label_dir, velo_dir = root / "label_2", root / "velodyne"
    required = [images_dir, calib_dir] + ([label_dir] if split == "training" else [])
    for folder in required:
        if not folder.is_dir():
            raise SourceError(
                f"{folder}: missing (KITTI object has {split}/{folder.name}/ under --src)"
            )
    notes = {
        "source": f"KITTI object benchmark, {split} split",
        "boxes": "label_2 2D boxes (columns 5-8), clipped to the image; degenerate ones dropped"
        if label_dir.is_dir()
        else "none (no label_2 folder)",
        "dontcare": "DontCare boxes dropped (left as background)"
        if options.dontcare == "drop"
        else "DontCare boxes kept as ignore regions (neither object nor background)",
        "camera": "fx, fy, cx, cy = P2[0,0], P2[1,1], P2[0,2], P2[1,2] (the image_2 camera)",
    }
    images = sorted(images_dir.glob("*.png"))
    depth_maps = None
    if options.depth_maps is not None:
        depth_maps = Path(options.depth_maps)
        if not depth_maps.is_dir():
            raise SourceError(f"{depth_maps}: --depth-maps folder not found")
        present = {p.name for p in depth_maps.glob("*.png")}
        missing = sum(f"{image.stem}.png" not in present for image in images)
        notes["depth"] = (
            "KITTI depth benchmark annotated maps (--depth-maps), matched by name "
            "(DEPTH_MAPS/<image stem>.png, uint16 metres*256, 0 invalid); the benchmark "
            "publishes them per raw drive, so they must be matched to object frames first "
            f"(devkit_object mapping/); {missing} images without a map have depth unlabeled"
        )
    elif velo_dir.is_dir():
        notes["depth"] = LIDAR_NOTE
    else:
        notes["depth"] = f"none ({velo_dir} not found)"
    use_lidar = depth_maps is None and velo_dir.is_dir()
    samples = _samples(
        images,
        calib_dir,
        label_dir if label_dir.is_dir() else None,
        velo_dir if use_lidar else None,
        depth_maps,
        options.dontcare,
        class_map,
    )
    return Source(f"kitti-{split}", len(images), samples, notes)


def _samples(
    images: list[Path],
    calib_dir: Path,
    label_dir: Path | None,
    velo_dir: Path | None,
    depth_maps: Path | None,
    dontcare: str,
    class_map: ClassMap,
) -> Iterator[Sample]:
    keys = ("P2", "R0_rect", "Tr_velo_to_cam") if velo_dir is not None else ("P2",)
    for image in images:
        stem = image.stem
        width, height = image_size(image)
        calib = _read_calib(calib_dir / f"{stem}.txt", keys)
        p2 = calib["P2"].reshape(3, 4)
        sample = Sample(
            id=stem,
            image=image,
            camera=Camera(*(float(p2[i, j]) for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))),
        )
        if label_dir is not None:
            boxes, labels, ignore = _read_labels(
                label_dir / f"{stem}.txt", width, height, class_map, dontcare
            )
            sample.boxes, sample.labels = boxes, labels
            sample.ignore = ignore or None
        if velo_dir is not None:
            sample.depth = lidar_depth(velo_dir / f"{stem}.bin", calib, width, height)
        elif depth_maps is not None and (depth_maps / f"{stem}.png").is_file():
            sample.depth = _read_depth_map(depth_maps / f"{stem}.png", width, height)
        yield sample


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise SourceError(f"{path}: missing (every image needs one)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SourceError(f"{path}: cannot be read ({err})") from None


def _floats(fields: list[str], where: str, first_column: int) -> list[float]:
    """Parse numbers, naming the 1-based column of the first one that is not."""
    try:
        return [float(v) for v in fields]
    except ValueError:
        i = next(i for i, v in enumerate(fields) if not _is_float(v))
        raise SourceError(
            f"{where}: column {first_column + i} {fields[i]!r} is not a number"
        ) from None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_labels(
    path: Path, width: int, height: int, class_map: ClassMap, dontcare: str
) -> tuple[list[list[float]], list[str], list[list[float]]]:
    """Boxes, labels and ignore regions of one ``label_2`` file (an empty file = no objects)."""
    boxes, labels, ignore = [], [], []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{n}"
        if len(fields) != LABEL_COLUMNS:
            raise SourceError(f"{where}: expected {LABEL_COLUMNS} values, got {len(fields)}")
        values = _floats(fields[1:], where, 2)
        if not all(math.isfinite(v) for v in values[3:7]):
            raise SourceError(f"{where}: the 2D box (columns 5-8) has a non-finite value")
        box = clip_box(values[3:7], width, height)
        if fields[0] == "DontCare":  # not a category: never counted by the class map
            if dontcare == "ignore" and box is not None:
                ignore.append(box)
            continue
        target = class_map(fields[0])
        if target is not None and box is not None:
            boxes.append(box)
            labels.append(target)
    return boxes, labels, ignore


def clip_box(box: list[float], width: int, height: int) -> list[float] | None:
    """``box`` clipped to ``[0, width] x [0, height]``, or ``None`` when nothing is left."""
    x1, x2 = (min(max(v, 0.0), float(width)) for v in (box[0], box[2]))
    y1, y2 = (min(max(v, 0.0), float(height)) for v in (box[1], box[3]))
    return [x1, y1, x2, y2] if x2 > x1 and y2 > y1 else None


def _read_calib(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The ``keys`` matrices of one calib file; the others (P0, P1, P3, Tr_imu_to_velo) are
    skipped, but every non-blank line must still be ``KEY: values``."""
    found: dict[str, np.ndarray] = {}
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        key = key.strip()
        if not sep:
            raise SourceError(f"{path}:{n}: expected 'KEY: values', got {line.strip()[:40]!r}")
        if key not in keys:
            continue
        values = _floats(rest.split(), f"{path}:{n}", 1)
        if len(values) != CALIB_SIZES[key]:
            raise SourceError(
                f"{path}:{n}: {key} needs {CALIB_SIZES[key]} values, got {len(values)}"
            )
        found[key] = np.asarray(values, np.float64)
    for key in keys:
        if key not in found:
            raise SourceError(f"{path}: missing key {key!r}")
    return found


def lidar_depth(path: Path, calib: dict[str, np.ndarray], width: int, height: int) -> np.ndarray:
    """Sparse metric depth ``[H, W]`` from one Velodyne scan (rules in ``LIDAR_NOTE``)."""
    try:
        raw = np.fromfile(path, dtype=np.float32)
    except FileNotFoundError:
        raise SourceError(f"{path}: missing (every image needs its scan)") from None
    except OSError as err:
        raise SourceError(f"{path}: cannot be read ({err})") from None
    if raw.size % 4:
        raise SourceError(
            f"{path}: {raw.size * 4} bytes is not a whole number of points "
            "(4 float32 each: x, y, z, reflectance)"
        )
    points = np.ones((raw.size // 4, 4), np.float64)
    points[:, :3] = raw.reshape(-1, 4)[:, :3]
    r0, velo_to_cam = np.eye(4), np.eye(4)
    r0[:3, :3] = calib["R0_rect"].reshape(3, 3)
    velo_to_cam[:3, :] = calib["Tr_velo_to_cam"].reshape(3, 4)
    uvw = points @ (calib["P2"].reshape(3, 4) @ r0 @ velo_to_cam).T
    z = uvw[:, 2]
    front = np.isfinite(uvw).all(axis=1) & (z > 0)
    u, v, z = uvw[front, 0] / z[front], uvw[front, 1] / z[front], z[front]
    inside = (u >= -0.5) & (u < width - 0.5) & (v >= -0.5) & (v < height - 0.5)
    cols = np.floor(u[inside] + 0.5).astype(np.int64)
    rows = np.floor(v[inside] + 0.5).astype(np.int64)
    # the clip only guards float rounding at the far edges (u + 0.5 == width)
    flat = np.clip(rows, 0, height - 1) * width + np.clip(cols, 0, width - 1)
    z = z[inside]
    order = np.lexsort((z, flat))  # by pixel, nearest first
    flat, z = flat[order], z[order]
    first = np.ones(flat.size, bool)
    first[1:] = flat[1:] != flat[:-1]
    depth = np.zeros(height * width, np.float32)
    depth[flat[first]] = z[first]
    return depth.reshape(height, width)


def _read_depth_map(path: Path, width: int, height: int) -> np.ndarray:
    """Metres from a depth benchmark PNG, which must cover the image pixel for pixel."""
    raw = read_png(path, (np.uint16,), (height, width))
    return raw.astype(np.float32) / np.float32(DEPTH_SCALE)
