"""The perception dataset v1 format: ``dataset.yaml`` + ``manifest.jsonl`` + PNG labels.

Reading and writing primitives only; validation of whole samples lives in
``perception.data.check`` (report everything) and ``perception.data.datasets`` (skip and
go on). Every error names the file (and manifest line) it is about.

Presence semantics: a task key missing from a manifest line means *not labeled*;
``"boxes": []`` means labeled with no objects. ``"ignore"`` (optional, only next to
``"boxes"``) lists xyxy regions holding objects nobody boxed (KITTI ``DontCare``,
Cityscapes crowd groups): detection is neither rewarded nor punished inside them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from perception.errors import PerceptionError
from perception.structures import Camera

DEPTH_SCALE = 256.0  # uint16 value = meters * DEPTH_SCALE (KITTI convention)
MASK_TASKS = ("lane", "drivable")
MASK_VALUES = (0, 1, 255)
INFO_FILE = "dataset.yaml"
MANIFEST_FILE = "manifest.jsonl"


class DatasetFormatError(PerceptionError, ValueError):
    """A dataset does not follow the v1 format; the message names file and problem."""


@dataclass
class DatasetInfo:
    """Contents of ``dataset.yaml``."""

    name: str
    classes: list[str]
    depth_scale: float = DEPTH_SCALE
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Record:
    """One manifest line, parsed but not loaded. Paths are relative to the root.

    ``None`` for a task field means the task is not labeled for this sample. ``ignore``:
    xyxy image-pixel regions of unboxed objects (``None`` or empty = none).
    """

    id: str
    image: str
    width: int
    height: int
    boxes: list[list[float]] | None = None
    labels: list[str] | None = None
    lane: str | None = None
    drivable: str | None = None
    depth: str | None = None
    camera: Camera | None = None
    ignore: list[list[float]] | None = None
    line: int = 0  # 1-based line number in manifest.jsonl, for error messages

    def to_json(self) -> str:
        """The manifest line for this record (unlabeled tasks are left out)."""
        out: dict[str, Any] = {
            "id": self.id,
            "image": self.image,
            "width": self.width,
            "height": self.height,
        }
        if self.boxes is not None:
            out["boxes"] = [[round(float(v), 2) for v in b] for b in self.boxes]
            out["labels"] = list(self.labels or [])
        if self.ignore:  # written only when there is something to ignore
            out["ignore"] = [[round(float(v), 2) for v in b] for b in self.ignore]
        for key in ("lane", "drivable", "depth"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.camera is not None:
            cam = self.camera
            out["camera"] = {k: round(float(getattr(cam, k)), 4) for k in ("fx", "fy", "cx", "cy")}
        return json.dumps(out, separators=(",", ":"))


def read_info(root: str | os.PathLike) -> DatasetInfo:
    """Parse ``ROOT/dataset.yaml``."""
    path = Path(root) / INFO_FILE
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing (every v1 dataset has a dataset.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        reason = getattr(err, "problem", None) or "parse error"
        raise DatasetFormatError(f"{path}: not valid YAML{where} ({reason})") from None
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{path}: expected a mapping with 'name' and 'classes'")
    classes = raw.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DatasetFormatError(f"{path}: 'classes' must be a list of class names")
    if len(set(classes)) != len(classes):
        raise DatasetFormatError(f"{path}: 'classes' has duplicates: {classes}")
    scale = raw.get("depth_scale", DEPTH_SCALE)
    if not isinstance(scale, int | float) or scale <= 0:
        raise DatasetFormatError(f"{path}: 'depth_scale' must be a positive number")
    notes = raw.get("notes") or {}
    if not isinstance(notes, dict):
        notes = {"text": str(notes)}
    return DatasetInfo(str(raw.get("name", Path(root).name)), classes, float(scale), notes)


def write_info(root: str | os.PathLike, info: DatasetInfo) -> None:
    data = {"name": info.name, "classes": info.classes, "depth_scale": info.depth_scale}
    if info.notes:
        data["notes"] = info.notes
    Path(root, INFO_FILE).write_text(yaml.safe_dump(data, sort_keys=False))


def parse_record(raw: Any, line: int, where: str = MANIFEST_FILE) -> Record:
    """Turn one decoded manifest line into a ``Record`` (structure only, no file I/O)."""
    at = f"{where}:{line}"
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{at}: expected a JSON object")
    for key in ("id", "image", "width", "height"):
        if key not in raw:
            raise DatasetFormatError(f"{at}: missing required key {key!r}")
    if not isinstance(raw["id"], str | int) or isinstance(raw["id"], bool):
        raise DatasetFormatError(f"{at}: 'id' must be a string")
    for key in ("width", "height"):
        value = raw[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise DatasetFormatError(f"{at}: {key!r} must be a positive integer, got {value!r}")
    boxes, labels = raw.get("boxes"), raw.get("labels")
    if (boxes is None) != (labels is None):
        raise DatasetFormatError(f"{at}: 'boxes' and 'labels' must be given together")
    if boxes is not None:
        if not isinstance(boxes, list) or not isinstance(labels, list):
            raise DatasetFormatError(f"{at}: 'boxes' and 'labels' must be lists")
        if len(boxes) != len(labels):
            raise DatasetFormatError(f"{at}: {len(boxes)} boxes but {len(labels)} labels")
        _check_box_list(boxes, at, "box")
    ignore = raw.get("ignore")
    if ignore is not None:
        if boxes is None:
            raise DatasetFormatError(
                f"{at}: 'ignore' needs 'boxes' (ignore regions refine a detection label)"
            )
        if not isinstance(ignore, list):
            raise DatasetFormatError(f"{at}: 'ignore' must be a list of [x1, y1, x2, y2]")
        _check_box_list(ignore, at, "ignore box")
    camera = raw.get("camera")
    if camera is not None:
        try:
            camera = Camera(*(float(camera[k]) for k in ("fx", "fy", "cx", "cy")))
        except (KeyError, TypeError, ValueError):
            raise DatasetFormatError(f"{at}: 'camera' needs numeric fx, fy, cx, cy") from None
    paths = {}
    for key in ("image", *MASK_TASKS, "depth"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise DatasetFormatError(f"{at}: {key!r} must be a relative path string")
        paths[key] = value
    return Record(
        id=str(raw["id"]),
        width=raw["width"],
        height=raw["height"],
        boxes=boxes,
        labels=[str(lb) for lb in labels] if labels is not None else None,
        camera=camera,
        ignore=ignore,
        line=line,
        **paths,
    )


def _check_box_list(boxes: list, at: str, what: str) -> None:
    """Each entry is a list of four numbers; ``what`` names it in the error ("box")."""
    for i, box in enumerate(boxes):
        if not isinstance(box, list) or len(box) != 4:
            raise DatasetFormatError(f"{at}: {what} {i} is not [x1, y1, x2, y2]")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
            raise DatasetFormatError(f"{at}: {what} {i} has a non-numeric value")


def read_manifest(root: str | os.PathLike) -> list[Record]:
    """All records of ``ROOT/manifest.jsonl``; blank lines are allowed."""
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing (every v1 dataset has a manifest.jsonl)")
    records = []
    with path.open() as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as err:
                raise DatasetFormatError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            records.append(parse_record(raw, n, str(path)))
    return records


def resolve(root: str | os.PathLike, relative: str) -> Path:
    """``ROOT/relative``, refusing absolute paths and paths that escape ROOT.

    The check is on the path as written (``..`` components), not on where symlinks lead:
    an ``images`` folder that links to a large disk elsewhere is a normal layout. It makes
    no file-system call, so reading a sample pays nothing for it.
    """
    if os.path.isabs(relative):
        raise DatasetFormatError(f"{relative}: absolute path; paths must be relative to ROOT")
    normal = os.path.normpath(relative)
    if normal == os.pardir or normal.startswith(os.pardir + os.sep):
        raise DatasetFormatError(f"{relative}: path escapes the dataset root {root}")
    return Path(root) / normal


def _read_raw(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file not found")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise DatasetFormatError(f"{path}: unreadable or corrupt image")
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB (grayscale and alpha are converted)."""
    image = _read_raw(Path(path), cv2.IMREAD_COLOR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """``[H, W]`` uint8 label PNG exactly as stored (values are not checked here)."""
    mask = _read_raw(Path(path), cv2.IMREAD_UNCHANGED)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise DatasetFormatError(
            f"{path}: label must be a single-channel uint8 PNG, got {mask.dtype} "
            f"with shape {mask.shape}"
        )
    return mask


def mask_values(mask: np.ndarray) -> np.ndarray:
    """The distinct values of a uint8 label map, sorted (a histogram: faster than
    ``np.unique``)."""
    return np.flatnonzero(np.bincount(mask.ravel(), minlength=256))  # [K] of 0..255


def mask_values_ok(mask: np.ndarray) -> bool:
    """Whether a uint8 label map holds only ``MASK_VALUES`` (0, 1, 255). Two comparisons,
    15x faster than listing the values: it runs on every training sample."""
    return not np.any((mask > 1) & (mask != 255))


def read_depth(path: str | os.PathLike, depth_scale: float = DEPTH_SCALE) -> np.ndarray:
    """``[H, W]`` float32 meters from a uint16 PNG (0 stays 0 = no measurement)."""
    raw = _read_raw(Path(path), cv2.IMREAD_UNCHANGED)
    if raw.ndim != 2 or raw.dtype != np.uint16:
        raise DatasetFormatError(
            f"{path}: depth must be a single-channel uint16 PNG, got {raw.dtype} "
            f"with shape {raw.shape}"
        )
    return raw.astype(np.float32) / np.float32(depth_scale)


def encode_depth(depth: np.ndarray, depth_scale: float = DEPTH_SCALE) -> np.ndarray:
    """Meters ``[H, W]`` -> uint16 PNG values; non-finite or non-positive become 0."""
    scaled = np.nan_to_num(depth.astype(np.float64) * depth_scale, nan=0.0, posinf=0.0)
    return np.clip(np.rint(scaled), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def write_image(path: str | os.PathLike, image_rgb: np.ndarray, quality: int = 92) -> None:
    """Write an RGB uint8 image; JPEG quality applies to .jpg files."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if str(path).endswith(".jpg") else []
    _write(path, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params)


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 or uint16 single-channel PNG with fast (level 1) compression."""
    _write(path, array, [cv2.IMWRITE_PNG_COMPRESSION, 1])


def _write(path: str | os.PathLike, array: np.ndarray, params: list[int]) -> None:
    ok, buf = cv2.imencode(Path(path).suffix, array, params)
    if not ok:
        raise OSError(f"{path}: could not encode image")
    buf.tofile(str(path))


def box_problems(
    boxes: list[list[float]] | np.ndarray,
    width: int,
    height: int,
    overhang_px: float = 0.0,
    what: str = "box",
) -> list[tuple[int, str]]:
    """``(index, reason)`` for each bad xyxy box in a ``width`` x ``height`` image.

    Bad means: a non-finite coordinate, zero or negative width/height, or a corner more
    than ``overhang_px`` outside ``[0, width] x [0, height]``. ``check-data`` is strict
    (``overhang_px=0``); the training loader passes a small tolerance and clips instead.
    ``what`` starts each reason ("box", "ignore box"), so one message names which list.
    """
    problems = []
    for i, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        x1, y1, x2, y2 = box
        name = f"{what} {i} {box.tolist()}"
        if not np.all(np.isfinite(box)):
            problems.append((i, f"{name} has a non-finite coordinate"))
        elif x2 <= x1 or y2 <= y1:
            problems.append((i, f"{name} is degenerate (needs x2 > x1, y2 > y1)"))
        elif min(x1, y1) < -overhang_px or x2 > width + overhang_px or y2 > height + overhang_px:
            problems.append((i, f"{name} lies outside the {width}x{height} image"))
    return problems
