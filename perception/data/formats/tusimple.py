"""TuSimple lane benchmark -> v1 lane masks.

The published layout: JSON-lines label files in the source root (``label_data_0313.json``,
``label_data_0531.json``, ``label_data_0601.json`` for train; ``test_label.json`` for
test), one object per line::

    {"lanes": [[x or -2, ...], ...], "h_samples": [y, ...], "raw_file": "clips/.../20.jpg"}

Each lane gives one x per ``h_samples`` row; -2 means the lane has no point on that row.
``raw_file`` is relative to the source root. Only lanes are labeled: the manifest has no
boxes, drivable area or depth for these images.
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
)

DEFAULT_MAP: dict[str, str | None] = {}  # lanes only: no object categories
TRAIN_GLOB = "label_data_*.json"
TEST_FILE = "test_label.json"


def read(src: Path, options: Options, class_map: ClassMap) -> Source:
    """Find the split's label files and count their lines; lines are parsed lazily."""
    if options.split == "train":
        files = sorted(src.glob(TRAIN_GLOB))
        if not files:
            raise SourceError(
                f"{src / TRAIN_GLOB}: no TuSimple train label files (label_data_0313.json, ...)"
            )
    elif options.split == "test":
        files = [src / TEST_FILE]
        if not files[0].is_file():
            raise SourceError(f"{files[0]}: missing (the TuSimple test labels)")
    else:
        raise SourceError(f"tusimple: split {options.split!r} does not exist; use train or test")
    total = 0
    for path in files:
        try:
            with path.open("rb") as f:
                total += sum(1 for line in f if line.strip())
        except OSError as err:
            raise SourceError(f"{path}: cannot be read ({err.strerror})") from None
    notes = {
        "source": f"TuSimple lane detection, split {options.split}: "
        + ", ".join(p.name for p in files),
        "lane": f"each lane's points (x per h_samples row; x < 0 = no point) joined in row "
        f"order and drawn as a {options.lane_width} px polyline at source resolution "
        "(1280x720); rows without a point are bridged",
        "lane_width": options.lane_width,
        "tasks": "lane only (no boxes, drivable area or depth)",
    }
    return Source(f"tusimple-{options.split}", total, _samples(src, files, options), notes)


def _samples(src: Path, files: list[Path], options: Options) -> Iterator[Sample]:
    seen: dict[str, str] = {}  # sample id -> where it was first listed
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as f:
            for n, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                where = f"{path}:{n}"
                raw_file, lanes = _parse(text, where)
                image = src / raw_file
                if not image.is_file():
                    raise SourceError(f"{where}: raw_file {raw_file!r}: no such image {image}")
                sid = raw_file.rsplit(".", 1)[0].replace("/", "_")
                if sid in seen:
                    raise SourceError(
                        f"{where}: raw_file {raw_file!r} already listed at {seen[sid]}"
                    )
                seen[sid] = where
                width, height = image_size(image)
                mask = draw_lines((height, width), lanes, options.lane_width)
                yield Sample(id=sid, image=image, lane=mask)


def _parse(text: str, where: str) -> tuple[str, list[np.ndarray]]:
    """``(raw_file, lanes as [N, 2] x, y arrays)`` from one label line."""
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise SourceError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(raw, dict):
        raise SourceError(f"{where}: expected a JSON object with lanes, h_samples, raw_file")
    for key in ("lanes", "h_samples", "raw_file"):
        if key not in raw:
            raise SourceError(f"{where}: missing key {key!r}")
    raw_file, rows, lanes = raw["raw_file"], raw["h_samples"], raw["lanes"]
    if not isinstance(raw_file, str) or not raw_file:
        raise SourceError(f"{where}: 'raw_file' must be an image path relative to the root")
    if not isinstance(rows, list) or not all(_is_number(y) for y in rows):
        raise SourceError(f"{where}: 'h_samples' must be a list of row numbers")
    if not isinstance(lanes, list):
        raise SourceError(f"{where}: 'lanes' must be a list of lanes")
    out = []
    for i, lane in enumerate(lanes):
        if not isinstance(lane, list) or not all(_is_number(x) for x in lane):
            raise SourceError(f"{where}: lanes[{i}] must be a list of x values")
        if len(lane) != len(rows):
            raise SourceError(
                f"{where}: lanes[{i}] has {len(lane)} values but h_samples has {len(rows)}"
            )
        pts = np.asarray([(x, y) for x, y in zip(lane, rows, strict=True) if x >= 0], np.float64)
        out.append(pts.reshape(-1, 2))
    return raw_file.lstrip("/"), out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
