"""BDD100K -> v1: detection boxes, lane markings and drivable area of the 100K images.

Reads the layout of the official download (bdd-data.berkeley.edu), as the bdd100k
toolkit does:

- ``images/100k/{split}/<name>.jpg``
- ``labels/det_20/det_{split}.json``: a list of frames, ``labels[].box2d`` per object
- ``labels/lane/polygons/lane_{split}.json``: frames whose ``labels[].poly2d`` are lane
  marking polylines (``types``: ``L`` vertex, ``C`` cubic Bézier control point)
- ``labels/drivable/masks/{split}/<name>.png``: 0 direct, 1 alternative, 2 background

Any of the three label sources may be missing (not downloaded): that task is then not
labeled. An image gets a sample when any present source labels it; a task whose source
does not name the image is left out of its manifest line rather than written as empty.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from perception.data.formats.convert import (
    ClassMap,
    Options,
    Sample,
    Source,
    SourceError,
    draw_lines,
    image_size,
    read_png,
)

SPLITS = ("train", "val")  # the test split has no published labels
DEFAULT_MAP: dict[str, str | None] = {
    "car": "car",
    "truck": "truck",
    "bus": "bus",
    "pedestrian": "pedestrian",
    "rider": "cyclist",
    "bicycle": None,
    "motorcycle": None,
    "train": None,
    "traffic light": None,
    "traffic sign": None,
    "other vehicle": None,
    "other person": None,
    "trailer": None,
}
# Lane-line detection (as in the BDD100K lane benchmark's "lane" vs "crosswalk" split)
# wants the lines that bound lanes; crosswalks are filled areas across the road.
EXCLUDED_LANES = frozenset({"crosswalk"})
DIRECT, ALTERNATIVE, BACKGROUND = 0, 1, 2  # the published drivable mask values
ALTERNATIVE_VALUES = {"drivable": 1, "background": 0, "ignore": 255}

Frames = dict[str, tuple[str, dict[str, Any]]]  # image name stem -> (error prefix, frame)


def read(src: Path, options: Options, class_map: ClassMap) -> Source:
    """Check the layout and index the label files; samples are made lazily."""
    split = options.split
    if split not in SPLITS:
        raise SourceError(f"bdd100k: split {split!r} has no published labels; use train or val")
    if options.alternative not in ALTERNATIVE_VALUES:
        raise SourceError(
            f"bdd100k: alternative {options.alternative!r} must be one of "
            f"{', '.join(ALTERNATIVE_VALUES)}"
        )
    images = src / "images" / "100k" / split
    if not images.is_dir():
        raise SourceError(f"{images}: missing (BDD100K {split} images go there)")
    det_path = src / "labels" / "det_20" / f"det_{split}.json"
    lane_path = src / "labels" / "lane" / "polygons" / f"lane_{split}.json"
    drivable_dir = src / "labels" / "drivable" / "masks" / split
    if not (det_path.is_file() or lane_path.is_file() or drivable_dir.is_dir()):
        raise SourceError(
            f"{src}: no BDD100K {split} labels; expected any of {det_path}, {lane_path}, "
            f"{drivable_dir}/"
        )
    det = _load_frames(det_path) if det_path.is_file() else None
    lane = _load_frames(lane_path) if lane_path.is_file() else None
    drivable = (
        {p.stem: p for p in sorted(drivable_dir.glob("*.png"))} if drivable_dir.is_dir() else None
    )
    names: dict[str, str] = {}  # stem -> image file name
    for frames in (det, lane):
        for stem, (_, frame) in (frames or {}).items():
            names.setdefault(stem, frame["name"])
    for stem in drivable or {}:
        names.setdefault(stem, f"{stem}.jpg")
    notes = {
        "source": f"BDD100K 100k images, split {split}",
        "labels": {
            "det": str(det_path) if det is not None else "not found: det not labeled",
            "lane": str(lane_path) if lane is not None else "not found: lane not labeled",
            "drivable": f"{drivable_dir}/" if drivable is not None else "not found",
        },
        "boxes": "box2d x2/y2 are inclusive pixel indices: stored as x2 + 1, y2 + 1; "
        "clipped to the image, degenerate boxes dropped; crowd boxes kept as ordinary boxes",
        "lane": f"every lane marking except {', '.join(sorted(EXCLUDED_LANES))} drawn as a "
        f"{options.lane_width} px polyline at source resolution; cubic Béziers (C C control "
        "points) sampled to polylines; closed polygons outlined",
        "lane_width": options.lane_width,
        "drivable": "mask 0 direct -> 1, 2 background -> 0, 1 alternative -> "
        f"{ALTERNATIVE_VALUES[options.alternative]} (--alternative {options.alternative})",
        "camera": "none (BDD100K publishes no intrinsics)",
    }
    stems = sorted(names)
    samples = _samples(images, stems, names, det, lane, drivable, options, class_map)
    return Source(f"bdd100k-{split}", len(stems), samples, notes)


def _load_frames(path: Path) -> Frames:
    """``{stem: (where, frame)}`` of a Scalabel JSON (a list of frames, or ``{frames}``)."""
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise SourceError(
            f"{path}: not valid JSON at line {err.lineno} column {err.colno} ({err.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SourceError(f"{path}: cannot be read ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("frames"), list):
        data = data["frames"]
    if not isinstance(data, list):
        raise SourceError(f"{path}: expected a JSON list of frames")
    frames: Frames = {}
    for i, frame in enumerate(data):
        where = f"{path}: frames[{i}]"
        if not isinstance(frame, dict) or not isinstance(frame.get("name"), str):
            raise SourceError(f"{where}.name: expected the image file name")
        stem = frame["name"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if stem in frames:
            raise SourceError(f"{where}.name: {frame['name']!r} repeats {frames[stem][0]}")
        frames[stem] = (where, frame)
    return frames


def _samples(
    images: Path,
    stems: list[str],
    names: dict[str, str],
    det: Frames | None,
    lane: Frames | None,
    drivable: dict[str, Path] | None,
    options: Options,
    class_map: ClassMap,
) -> Iterator[Sample]:
    lut = np.full(256, 255, np.uint8)  # values outside 0..2 are refused before the lookup
    lut[[DIRECT, ALTERNATIVE, BACKGROUND]] = 1, ALTERNATIVE_VALUES[options.alternative], 0
    for stem in stems:
        image = images / names[stem]
        if not image.is_file():
            raise SourceError(f"{image}: missing, but the {images.name} labels name it")
        width, height = image_size(image)
        sample = Sample(id=stem.replace("/", "_"), image=image)
        if det is not None and stem in det:
            sample.boxes, sample.labels = _boxes(*det[stem], width, height, class_map)
        if lane is not None and stem in lane:
            sample.lane = _lane_mask(*lane[stem], (height, width), options.lane_width)
        if drivable is not None and stem in drivable:
            sample.drivable = lut[_read_drivable(drivable[stem])]
        yield sample


def _labels(where: str, frame: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(where, label)`` pairs; a frame without ``labels`` is labeled with nothing."""
    labels = frame.get("labels")
    if labels is None:
        return []
    if not isinstance(labels, list):
        raise SourceError(f"{where}.labels: expected a list")
    out = []
    for j, label in enumerate(labels):
        at = f"{where}.labels[{j}]"
        if not isinstance(label, dict) or not isinstance(label.get("category"), str):
            raise SourceError(f"{at}.category: expected a category name")
        out.append((at, label))
    return out


def _boxes(
    where: str, frame: dict[str, Any], width: int, height: int, class_map: ClassMap
) -> tuple[list[list[float]], list[str]]:
    boxes, labels = [], []
    for at, label in _labels(where, frame):
        target = class_map(label["category"])
        if target is None:
            continue
        box = label.get("box2d")
        keys = ("x1", "y1", "x2", "y2")
        if not isinstance(box, dict) or not all(_is_number(box.get(k)) for k in keys):
            raise SourceError(f"{at}.box2d: expected {{x1, y1, x2, y2}} numbers")
        x1, y1 = min(max(box["x1"], 0.0), width), min(max(box["y1"], 0.0), height)
        x2, y2 = min(max(box["x2"] + 1.0, 0.0), width), min(max(box["y2"] + 1.0, 0.0), height)
        if x2 > x1 and y2 > y1:
            boxes.append([float(x1), float(y1), float(x2), float(y2)])
            labels.append(target)
    return boxes, labels


def _lane_mask(where: str, frame: dict[str, Any], shape: tuple[int, int], width: int) -> np.ndarray:
    lines = []
    for at, label in _labels(where, frame):
        if label["category"] in EXCLUDED_LANES:
            continue
        polys = label.get("poly2d")
        if not isinstance(polys, list):
            raise SourceError(f"{at}.poly2d: expected a list of polylines")
        for k, poly in enumerate(polys):
            lines.append(_polyline(poly, f"{at}.poly2d[{k}]"))
    return draw_lines(shape, lines, width)


def _polyline(poly: Any, at: str) -> np.ndarray:
    """Scalabel ``poly2d`` -> ``[N, 2]`` points: ``L`` vertices joined by straight lines, and
    at each ``C`` a cubic Bézier (that C and the next as controls, the vertex after them as
    its end), sampled finely enough that the drawn line follows the curve."""
    vertices = poly.get("vertices") if isinstance(poly, dict) else None
    if (
        not isinstance(vertices, list)
        or not vertices
        or not all(
            isinstance(v, list | tuple) and len(v) == 2 and all(map(_is_number, v))
            for v in vertices
        )
    ):
        raise SourceError(f"{at}.vertices: expected [[x, y], ...]")
    types = poly.get("types")
    if not isinstance(types, str) or len(types) != len(vertices) or set(types) - {"L", "C"}:
        raise SourceError(f"{at}.types: expected one L or C per vertex, got {types!r}")
    pts = np.asarray(vertices, np.float64)
    if poly.get("closed"):
        pts, types = np.vstack([pts, pts[:1]]), types + "L"
    out, i = [pts[0]], 1
    while i < len(pts):
        if types[i] == "L":
            out.append(pts[i])
            i += 1
            continue
        if i + 2 >= len(pts) or types[i + 1] != "C":
            raise SourceError(
                f"{at}.types: vertex {i} starts a Bézier that needs two C controls and an end"
            )
        out.extend(_bezier(out[-1], pts[i], pts[i + 1], pts[i + 2]))
        i += 3
    return np.asarray(out)


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray) -> np.ndarray:
    """Points of the cubic Bézier after ``p0`` up to ``p3``, about one per 2 px of its hull."""
    hull = np.linalg.norm(p1 - p0) + np.linalg.norm(p2 - p1) + np.linalg.norm(p3 - p2)
    t = np.linspace(0.0, 1.0, int(np.clip(hull / 2, 8, 256)) + 1)[1:, None]
    s = 1.0 - t
    return s**3 * p0 + 3 * s**2 * t * p1 + 3 * s * t**2 * p2 + t**3 * p3


def _read_drivable(path: Path) -> np.ndarray:
    mask = read_png(path, (np.uint8,))  # labels/drivable/masks, not the colormaps
    bad = sorted(set(np.unique(mask).tolist()) - {DIRECT, ALTERNATIVE, BACKGROUND})
    if bad:
        raise SourceError(
            f"{path}: values {bad}; BDD100K drivable masks hold 0 direct, 1 alternative, "
            "2 background"
        )
    return mask


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
