"""CULane -> v1 lane masks.

The published layout: ``list/{train,val,test}.txt`` name the images of a split, one path
per line relative to the root (``/driver_23_30frame/05151649_0422.MP4/00000.jpg``);
``list/train_gt.txt`` and ``val_gt.txt`` hold the same paths followed by a segmentation
label and four lane-existence flags, and are read when the plain list is absent (first
column only). Beside each image, ``00000.lines.txt`` holds one lane per line as
``x1 y1 x2 y2 ...`` (image pixels, bottom to top). Only lanes are labeled.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from perception.data.formats.convert import (
    ClassMap,
    Options,
    Sample,
    Source,
    SourceError,
    draw_lines,
    image_size,
)

DEFAULT_MAP: dict[str, str | None] = {}  # lanes only: no object categories
SPLITS = ("train", "val", "test")

Entry = tuple[str, str]  # (where: "list/train.txt:12", image path relative to the root)


def read(src: Path, options: Options, class_map: ClassMap) -> Source:
    """Read the split's list file (cheap) and check the first entry; the rest is lazy."""
    split = options.split
    if split not in SPLITS:
        raise SourceError(f"culane: split {split!r} does not exist; use train, val or test")
    listed = src / "list" / f"{split}.txt"
    path = listed if listed.is_file() else src / "list" / f"{split}_gt.txt"
    if not path.is_file():
        raise SourceError(f"{listed}: missing (CULane lists the {split} images there)")
    entries = _read_list(path)
    if entries:
        _label_file(src, *entries[0])  # a layout mistake shows before the output is touched
    notes = {
        "source": f"CULane, split {split}: {path.relative_to(src)}",
        "lane": f"each line of <image>.lines.txt (x y pairs) drawn as a {options.lane_width} px "
        "polyline at source resolution (1640x590); the official labels use 16 px "
        "(laneseg_label_w16) and the official metric 30 px",
        "lane_width": options.lane_width,
        "tasks": "lane only (no boxes, drivable area or depth)",
    }
    return Source(f"culane-{split}", len(entries), _samples(src, entries, options), notes)


def _read_list(path: Path) -> list[Entry]:
    """``(where, relative image path)`` per non-blank line; ids must be unique."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise SourceError(f"{path}: cannot be read ({err.strerror})") from None
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        relative = line.split()[0].lstrip("/")
        if not relative.lower().endswith((".jpg", ".png")):
            raise SourceError(f"{path}:{n}: expected an image path, got {line.split()[0]!r}")
        if relative in seen:
            raise SourceError(
                f"{path}:{n}: {relative!r} is already listed on line {seen[relative]}"
            )
        seen[relative] = n
        entries.append((f"{path}:{n}", relative))
    return entries


def _label_file(src: Path, where: str, relative: str) -> tuple[Path, Path]:
    """The image and its ``.lines.txt``, both checked to exist."""
    image = src / relative
    if not image.is_file():
        raise SourceError(f"{where}: no such image {image}")
    lines = image.with_suffix(".lines.txt")
    if not lines.is_file():
        raise SourceError(f"{lines}: missing (the lane label of {image.name})")
    return image, lines


def _samples(src: Path, entries: list[Entry], options: Options) -> Iterator[Sample]:
    for where, relative in entries:
        image, label = _label_file(src, where, relative)
        width, height = image_size(image)
        mask = draw_lines((height, width), _read_lanes(label), options.lane_width)
        sid = relative.rsplit(".", 1)[0].replace("/", "_")
        yield Sample(id=sid, image=image, lane=mask)


def _read_lanes(path: Path) -> list[np.ndarray]:
    """One ``[N, 2]`` array per non-blank line of a ``.lines.txt``."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise SourceError(f"{path}: cannot be read ({err.strerror})") from None
    lanes = []
    for n, line in enumerate(text.splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        if len(values) % 2:
            raise SourceError(f"{path}:{n}: expected x y pairs, got {len(values)} values")
        try:
            pts = np.asarray(values, np.float64).reshape(-1, 2)
        except ValueError:
            raise SourceError(f"{path}:{n}: expected numbers, got {line.strip()!r}") from None
        if not np.isfinite(pts).all():
            raise SourceError(f"{path}:{n}: non-finite coordinate in {line.strip()!r}")
        lanes.append(pts)
    return lanes
