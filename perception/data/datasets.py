"""A perception-v1 dataset as a ``torch.utils.data.Dataset`` of ``Sample``.

Dataset-level problems (missing ``dataset.yaml``, a manifest that does not parse, a class
the model cannot take) raise ``DatasetFormatError`` at construction, before any training
starts. Sample-level problems (a corrupt PNG, a bad box) must not end a long run: the
sample is logged once per read and ``None`` is returned, which ``collate`` drops and
counts. ``perception check-data`` lists every such problem up front.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from perception.data.formats import v1
from perception.data.formats.v1 import DatasetFormatError
from perception.ops.boxes import box_area, clip_boxes
from perception.structures import Sample

logger = logging.getLogger("perception.data")

OVERHANG_PX = 4.0  # boxes reaching at most this far outside the image are clipped and kept


def class_index(
    dataset_classes: list[str],
    model_classes: list[str],
    class_map: dict[str, str | None] | None = None,
    where: str = v1.INFO_FILE,
) -> dict[str, int | None]:
    """Map each dataset class name to a model class index (``None`` = deliberately dropped).

    A dataset class maps to the model class ``class_map[name]`` if given, else to the model
    class of the same name. Keys of ``class_map`` absent from the dataset are ignored, so
    one map can serve several datasets. Boxes of a dropped class are removed, which makes
    those objects background for detection; that is the caller's explicit choice.

    Raises:
        DatasetFormatError: a dataset class maps to nothing, or ``class_map`` names a
            target that is not a model class.
    """
    class_map = class_map or {}
    lookup = {name: i for i, name in enumerate(model_classes)}
    bad_targets = sorted({t for t in class_map.values() if t is not None and t not in lookup})
    if bad_targets:
        raise DatasetFormatError(
            f"class_map targets {bad_targets} are not model classes; model classes are "
            f"{list(model_classes)}"
        )
    index: dict[str, int | None] = {}
    unmapped = []
    for name in dataset_classes:
        target = class_map.get(name, name)
        if target is None:
            index[name] = None
        elif target in lookup:
            index[name] = lookup[target]
        else:
            unmapped.append(name)
    if unmapped:
        raise DatasetFormatError(
            f"{where}: dataset classes {unmapped} map to no model class; model classes are "
            f"{list(model_classes)} (map them with class_map, or to null to drop them)"
        )
    return index


class V1Dataset(Dataset):
    """Samples of one perception-v1 dataset at source resolution (or transformed).

    Args:
        root: dataset root (the folder holding ``dataset.yaml``).
        classes: the model's class names; labels become indices into this list.
        class_map: dataset class -> model class (or ``None`` to drop); see ``class_index``.
        transform: applied to each loaded ``Sample`` (e.g. ``SampleTransform``).
        ids: keep only these manifest ids, in this order (``None`` keeps all).

    ``__getitem__`` returns ``None`` for a bad sample (after one warning on the
    ``perception.data`` logger); unlabeled tasks are ``None`` in the ``Sample``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        classes: list[str],
        class_map: dict[str, str | None] | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        ids: list[str] | None = None,
    ):
        self.root = Path(root)
        self.info = v1.read_info(self.root)
        self.classes = list(classes)
        where = str(self.root / v1.INFO_FILE)
        self.class_index = class_index(self.info.classes, self.classes, class_map, where)
        self.transform = transform
        records = v1.read_manifest(self.root)
        if ids is not None:
            by_id = {r.id: r for r in records}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise DatasetFormatError(
                    f"{self.root / v1.MANIFEST_FILE}: ids not in the manifest: {missing[:10]}"
                )
            records = [by_id[i] for i in ids]
        self.records = records

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample | None:
        return self.get(index)

    def get(self, index: int, rng: np.random.Generator | None = None) -> Sample | None:
        """The transformed sample at ``index`` (``None``, with one warning, when it is
        bad); ``rng`` draws its augmentation (``SampleTransform``)."""
        record = self.records[index]
        try:
            sample = self.load(index)
        except (DatasetFormatError, OSError, cv2.error) as err:
            logger.warning(
                "skipping sample %r (%s, manifest line %d): %s",
                record.id,
                self.root,
                record.line,
                err,
            )
            return None
        if self.transform is None:
            return sample
        return self.transform(sample) if rng is None else self.transform(sample, rng)

    def load(self, index: int) -> Sample:
        """The untransformed ``Sample`` at ``index``; raises ``DatasetFormatError`` if bad."""
        record = self.records[index]
        image = v1.read_image(v1.resolve(self.root, record.image))
        if image.shape[:2] != (record.height, record.width):
            raise DatasetFormatError(
                f"{record.image}: image is {image.shape[1]}x{image.shape[0]} but the manifest "
                f"says {record.width}x{record.height}"
            )
        boxes, labels = self._boxes(record)
        ignore = self._ignore(record)
        lane, drivable = (self._mask(record, key) for key in v1.MASK_TASKS)
        depth = None
        if record.depth is not None:
            depth = v1.read_depth(v1.resolve(self.root, record.depth), self.info.depth_scale)
            _check_size(depth, record, record.depth)
        camera = record.camera
        if camera is not None and not _camera_ok(camera.as_array()):
            raise DatasetFormatError(f"camera {camera} needs finite fx, fy > 0 and cx, cy")
        return Sample(
            id=record.id,
            image=image,
            boxes=boxes,
            labels=labels,
            lane=lane,
            drivable=drivable,
            depth=depth,
            camera=camera,
            ignore=ignore,
        )

    def _mask(self, record: v1.Record, key: str) -> np.ndarray | None:
        relative = getattr(record, key)
        if relative is None:
            return None
        mask = v1.read_mask(v1.resolve(self.root, relative))
        _check_size(mask, record, relative)
        if not v1.mask_values_ok(mask):
            bad = np.setdiff1d(v1.mask_values(mask), v1.MASK_VALUES)
            raise DatasetFormatError(
                f"{relative}: values {bad.tolist()[:5]} not allowed (only 0, 1, 255)"
            )
        return mask

    def _boxes(self, record: v1.Record) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``[N, 4]`` float32 xyxy (clipped) and ``[N]`` int64 model labels, or (None, None)."""
        if record.boxes is None:
            return None, None
        unknown = sorted({lb for lb in record.labels or [] if lb not in self.class_index})
        if unknown:
            raise DatasetFormatError(
                f"labels {unknown} are not among the dataset classes {self.info.classes}"
            )
        boxes = np.asarray(record.boxes, np.float32).reshape(-1, 4)
        problems = v1.box_problems(boxes, record.width, record.height, OVERHANG_PX)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DatasetFormatError(problems[0][1] + more)
        mapped = [self.class_index[lb] for lb in record.labels or []]
        boxes = clip_boxes(boxes, record.width, record.height)
        keep = np.array([m is not None for m in mapped], bool) & (box_area(boxes) > 0)
        labels = np.array([m if m is not None else -1 for m in mapped], np.int64)
        return boxes[keep], labels[keep]

    def _ignore(self, record: v1.Record) -> np.ndarray | None:
        """``[M, 4]`` float32 xyxy ignore regions, checked and clipped like GT boxes; or None.

        Same tolerance as ``_boxes``: a region a few pixels over the edge is clipped, one
        far outside means the label is in a wrong frame, so the sample is rejected.
        """
        if not record.ignore or record.boxes is None:
            return None
        regions = np.asarray(record.ignore, np.float32).reshape(-1, 4)
        problems = v1.box_problems(
            regions, record.width, record.height, OVERHANG_PX, what="ignore box"
        )
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DatasetFormatError(problems[0][1] + more)
        regions = clip_boxes(regions, record.width, record.height)
        return regions[box_area(regions) > 0]


def _check_size(array: np.ndarray, record: v1.Record, relative: str) -> None:
    if array.shape[:2] != (record.height, record.width):
        raise DatasetFormatError(
            f"{relative}: label is {array.shape[1]}x{array.shape[0]} but the image is "
            f"{record.width}x{record.height}"
        )


def _camera_ok(values: np.ndarray) -> bool:
    """``(fx, fy, cx, cy)`` all finite with positive focal lengths."""
    return bool(np.all(np.isfinite(values)) and values[0] > 0 and values[1] > 0)
