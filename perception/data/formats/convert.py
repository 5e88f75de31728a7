"""What every converter shares: the ``Sample`` it yields, the class map, lane drawing and
the writer that turns samples into a v1 dataset.

A converter (``formats/bdd100k.py`` and its siblings) only reads its dataset's published
layout and yields ``Sample`` objects in source pixels; this module writes them. The
manifest is written last, atomically, so a conversion that stops half-way (a malformed
source file, Ctrl-C) leaves no ``manifest.jsonl`` and ``check-data`` refuses the folder.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from perception.data.formats import FORMATS, v1
from perception.errors import PerceptionError
from perception.structures import Camera

DEFAULT_CLASSES = ("car", "truck", "bus", "pedestrian", "cyclist")
LANE_WIDTH = 8  # px at the source resolution; the rule is written into dataset.yaml
# Present while a conversion writes: marks the folder as ours (a rerun with --overwrite
# may clear it) and as incomplete (there is no manifest yet)
IN_PROGRESS = ".converting"


class SourceError(PerceptionError, ValueError):
    """A source file does not follow its dataset's published layout; names file and key."""


@dataclass
class Sample:
    """One converted sample, in the source image's pixels, before it is written.

    ``None`` for a task means the source does not label it (the key is left out of the
    manifest, so that head is not trained on this sample).
    """

    id: str
    image: Path  # the source image file, copied as is
    boxes: list[list[float]] | None = None  # xyxy, already mapped to model classes
    labels: list[str] | None = None
    lane: np.ndarray | None = None  # uint8 [H, W], 0 / 1 / 255 = ignore
    drivable: np.ndarray | None = None  # uint8 [H, W], 0 / 1 / 255 = ignore
    depth: np.ndarray | None = None  # float [H, W] metres, 0 = no measurement
    camera: Camera | None = None  # intrinsics in source pixels, when the dataset has them
    ignore: list[list[float]] | None = None  # xyxy regions neither object nor background


@dataclass
class Source:
    """What a converter returns: its samples (lazily), how many, and how labels were made."""

    name: str
    total: int
    samples: Iterator[Sample]
    notes: dict[str, Any]


@dataclass
class Options:
    """Converter settings from the command line; each converter reads the ones it has."""

    split: str = "train"
    lane_width: int = LANE_WIDTH
    dontcare: str = "drop"  # KITTI DontCare boxes: drop them or keep them as ignore regions
    alternative: str = "drivable"  # BDD100K alternative area: drivable | background | ignore
    depth_maps: str | None = None  # KITTI: annotated depth maps used instead of raw LiDAR
    limit: int | None = None


class ClassMap:
    """Dataset category -> model class (or ``None`` = dropped on purpose).

    A category the map does not name is counted in ``unknown`` and reported at the end:
    nothing disappears without the user seeing it. ``classes`` is the model's class list,
    written into ``dataset.yaml``.
    """

    def __init__(self, mapping: dict[str, str | None], classes: Sequence[str] | None = None):
        targets = [c for c in mapping.values() if c is not None]
        self.classes = list(classes) if classes else list(dict.fromkeys(targets))
        bad = sorted({c for c in targets if c not in self.classes})
        if bad:
            raise PerceptionError(f"class map: {bad} are not in the class list {self.classes}")
        self.mapping = dict(mapping)
        self.unknown: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    @classmethod
    def load(cls, path: str | os.PathLike | None, default: dict[str, str | None]) -> ClassMap:
        """From ``--classes MAP.yaml`` or the converter's default.

        The YAML is ``{classes: [car, ...], map: {category: class or null}}``, or just the
        ``map`` part (the class list is then its distinct targets, in order).
        """
        if path is None:
            return cls(default, DEFAULT_CLASSES)
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise PerceptionError(f"{path}: cannot read the class map ({err})") from None
        if isinstance(raw, dict) and "map" in raw:
            mapping, classes = raw["map"], raw.get("classes")
        else:
            mapping, classes = raw, None
        if not isinstance(mapping, dict) or not all(
            isinstance(v, str) or v is None for v in mapping.values()
        ):
            raise PerceptionError(
                f"{path}: the class map must map each dataset category to a class or null"
            )
        if classes is not None and not (
            isinstance(classes, list) and all(isinstance(c, str) for c in classes)
        ):
            raise PerceptionError(f"{path}: 'classes' must be a list of class names")
        return cls({str(k): v for k, v in mapping.items()}, classes)

    def __call__(self, category: str) -> str | None:
        """The model class for ``category``, or ``None`` (counted as dropped or unknown)."""
        if category not in self.mapping:
            self.unknown[category] += 1
            return None
        target = self.mapping[category]
        if target is None:
            self.dropped[category] += 1
        return target


def draw_lines(
    shape: tuple[int, int], lines: Iterable[np.ndarray], width: int = LANE_WIDTH
) -> np.ndarray:
    """Rasterise polylines (each ``[N, 2]`` x, y in pixels) into a uint8 0/1 lane mask."""
    mask = np.zeros(shape, np.uint8)
    for line in lines:
        pts = np.asarray(line, np.float64).reshape(-1, 2)
        if len(pts) < 2:
            continue
        # 4 fractional bits: sub-pixel vertices keep thin, curved lines smooth
        fixed = np.rint(pts * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(mask, [fixed], False, 1, thickness=max(1, int(width)), shift=4)
    return mask


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as err:
        raise SourceError(f"{path}: not a readable image ({err})") from None


def read_png(
    path: Path, dtypes: tuple[type, ...], shape: tuple[int, int] | None = None
) -> np.ndarray:
    """A single-channel label PNG exactly as stored (a colour-mapped mask or a wrong bit
    depth is an error); with ``shape``, it must cover the image pixel for pixel."""
    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None:
        raise SourceError(f"{path}: unreadable or corrupt PNG")
    if array.ndim != 2 or array.dtype not in dtypes:
        wanted = " or ".join(np.dtype(d).name for d in dtypes)
        raise SourceError(
            f"{path}: expected a single-channel {wanted} PNG, got {array.dtype} {array.shape}"
        )
    if shape is not None and array.shape != shape:
        raise SourceError(
            f"{path}: is {array.shape[1]}x{array.shape[0]} but the image is {shape[1]}x{shape[0]}"
        )
    return array


def prepare_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """An empty output folder. A non-empty one is refused unless ``overwrite``, and even
    then only a previous dataset (a ``dataset.yaml``, ``manifest.jsonl`` or an interrupted
    conversion's marker inside) is removed: ``--overwrite`` pointed at the wrong folder
    must not delete someone's files."""
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise PerceptionError(f"{root}: exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise PerceptionError(f"{root}: not empty; choose another --out or pass --overwrite")
        if not any((root / f).exists() for f in (v1.INFO_FILE, v1.MANIFEST_FILE, IN_PROGRESS)):
            raise PerceptionError(
                f"{root}: not empty and not a perception dataset; refusing to overwrite it"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / IN_PROGRESS).write_text("a conversion is writing here (or stopped before the end)\n")
    return root


@dataclass
class Summary:
    """What a conversion wrote: samples, labeled samples per task, boxes per class."""

    samples: int = 0
    labeled: Counter[str] = field(default_factory=Counter)
    boxes: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        tasks = ", ".join(f"{t} {self.labeled[t]}" for t in ("det", *v1.MASK_TASKS, "depth"))
        out = [f"{self.samples} samples; labeled per task: {tasks}"]
        if self.boxes:
            out.append("boxes: " + ", ".join(f"{c} {n}" for c, n in self.boxes.items()))
        if self.dropped:
            out.append("dropped by the class map: " + _counts(self.dropped))
        if self.unknown:
            out.append(
                "not in the class map (dropped; map them with --classes): " + _counts(self.unknown)
            )
        return out


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counter.most_common())


def write_dataset(
    samples: Iterable[Sample],
    out: Path,
    info: v1.DatasetInfo,
    class_map: ClassMap,
    total: int | None = None,
    desc: str = "convert",
) -> Summary:
    """Write ``samples`` under ``out`` (from ``prepare_output``) as a v1 dataset."""
    summary = Summary()
    records: list[str] = []
    for sub in ("images", *v1.MASK_TASKS, "depth"):
        (out / sub).mkdir(exist_ok=True)
    bar = tqdm(samples, total=total, desc=desc, unit="img", disable=None, file=sys.stderr)
    for sample in bar:
        records.append(_write_sample(sample, out, summary).to_json())
    summary.unknown, summary.dropped = class_map.unknown, class_map.dropped
    info.notes = {**info.notes, "converted": summary.lines()[0]}
    v1.write_info(out, info)
    tmp = out / (v1.MANIFEST_FILE + ".tmp")
    tmp.write_text("".join(r + "\n" for r in records))
    os.replace(tmp, out / v1.MANIFEST_FILE)
    (out / IN_PROGRESS).unlink(missing_ok=True)
    return summary


def _write_sample(sample: Sample, out: Path, summary: Summary) -> v1.Record:
    width, height = image_size(sample.image)
    image = f"images/{sample.id}{sample.image.suffix.lower()}"
    shutil.copyfile(sample.image, out / image)
    record = v1.Record(id=sample.id, image=image, width=width, height=height, camera=sample.camera)
    if sample.ignore:
        record.ignore = sample.ignore
    if sample.boxes is not None:
        record.boxes, record.labels = sample.boxes, list(sample.labels or [])
        summary.labeled["det"] += 1
        summary.boxes.update(record.labels)
    for task in v1.MASK_TASKS:
        mask = getattr(sample, task)
        if mask is not None:
            _check_shape(sample, task, mask, (height, width))
            setattr(record, task, f"{task}/{sample.id}.png")
            v1.write_png(out / getattr(record, task), mask.astype(np.uint8))
            summary.labeled[task] += 1
    if sample.depth is not None:
        _check_shape(sample, "depth", sample.depth, (height, width))
        record.depth = f"depth/{sample.id}.png"
        v1.write_png(out / record.depth, v1.encode_depth(sample.depth))
        summary.labeled["depth"] += 1
    summary.samples += 1
    return record


def _check_shape(sample: Sample, task: str, array: np.ndarray, shape: tuple[int, int]) -> None:
    if array.shape != shape:
        raise SourceError(
            f"{sample.image}: its {task} label is {array.shape[1]}x{array.shape[0]} "
            f"but the image is {shape[1]}x{shape[0]}"
        )


def convert(
    fmt: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    options: Options | None = None,
    classes: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Summary:
    """``perception convert``: read dataset ``fmt`` at ``src`` and write v1 at ``out``.

    Each format is a module of this package with ``DEFAULT_MAP`` (its categories -> the
    five default classes) and ``read(src, options, class_map) -> Source``.
    """
    import importlib

    if fmt not in FORMATS:
        raise PerceptionError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    src = Path(src)
    if not src.is_dir():
        raise PerceptionError(f"{src}: no such source directory")
    reader = importlib.import_module(f"perception.data.formats.{fmt}")
    options = options or Options()
    class_map = ClassMap.load(classes, reader.DEFAULT_MAP)
    source = reader.read(src, options, class_map)  # a bad layout fails before out is touched
    if options.limit is not None:
        total = min(source.total, options.limit)
        source = Source(source.name, total, itertools.islice(source.samples, total), source.notes)
    if source.total == 0:
        raise PerceptionError(f"{src}: no {fmt} samples found for split {options.split!r}")
    root = prepare_output(out, overwrite)
    info = v1.DatasetInfo(name=source.name, classes=class_map.classes, notes=source.notes)
    return write_dataset(source.samples, root, info, class_map, source.total, f"convert {fmt}")
