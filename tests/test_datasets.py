"""``V1Dataset``: samples as written, presence semantics, class mapping, and bad samples
skipped with one warning instead of ending the run.

The tiny dataset (conftest) has 4 samples of 64x96; sample ``i`` has ``i % 3`` objects:
sample 0 is labeled with no boxes, sample 1 has one "car" box ``[8, 10, 28, 26]``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, write_manifest

from perception.data.datasets import V1Dataset
from perception.data.formats import v1
from perception.data.formats.v1 import DatasetFormatError
from perception.data.transforms import SampleTransform
from perception.structures import Camera

SID = "000001"


def edit_record(root: Path, index: int = 1, **changes) -> None:
    records = v1.read_manifest(root)
    records[index] = replace(records[index], **changes)
    write_manifest(root, records)


def test_loads_every_task_as_written(tiny_dataset):
    ds = V1Dataset(tiny_dataset(), CLASSES)
    assert len(ds) == 4 and ds.ids == ["000000", "000001", "000002", "000003"]
    s = ds[2]
    assert s.id == "000002" and s.image.shape == (64, 96, 3) and s.image.dtype == np.uint8
    np.testing.assert_array_equal(s.boxes, [[8, 10, 28, 26], [38, 15, 58, 31]])
    assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64
    np.testing.assert_array_equal(s.labels, [0, 1])
    np.testing.assert_array_equal(s.image[10, 8], [200, 50, 40])
    assert s.lane.dtype == np.uint8 and s.lane[0, 47] == 1 and s.lane[0, 0] == 0
    assert s.drivable[63, 0] == 1 and s.drivable[0, 0] == 0
    assert s.depth.dtype == np.float32 and s.depth[0, 0] == 0.0  # "sky": no measurement
    assert s.depth[63, 0] == pytest.approx(2.0, abs=1 / 256)
    assert s.camera == Camera(80.0, 80.0, 48.0, 32.0)
    assert s.valid is None and s.letterbox is None  # untransformed: source frame


def test_missing_key_is_unlabeled_and_empty_boxes_are_labeled(tiny_dataset):
    root = tiny_dataset()
    edit_record(root, 1, lane=None, depth=None, boxes=None, labels=None, camera=None)
    ds = V1Dataset(root, CLASSES)
    s = ds[1]
    assert s.lane is None and s.depth is None and s.boxes is None and s.labels is None
    assert s.camera is None and s.drivable is not None
    assert not s.labeled("det") and not s.labeled("lane") and s.labeled("drivable")
    empty = ds[0]  # "boxes": [] -> labeled, no objects
    assert empty.labeled("det") and empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)


def test_transform_is_applied(tiny_dataset):
    ds = V1Dataset(tiny_dataset(), CLASSES, transform=SampleTransform((32, 64)))
    s = ds[1]
    assert s.image.shape == (32, 64, 3) and s.letterbox.scale == 0.5
    np.testing.assert_allclose(s.boxes, [[4 + 8, 5, 14 + 8, 13]])


def test_class_map_renames_reorders_and_drops(tiny_dataset):
    root = tiny_dataset()
    s = V1Dataset(root, ["person", "vehicle"], {"car": "vehicle", "pedestrian": "person"})[2]
    np.testing.assert_array_equal(s.labels, [1, 0])
    s = V1Dataset(root, ["car"], {"pedestrian": None, "truck": "car"})[2]
    np.testing.assert_array_equal(s.labels, [0])  # pedestrian box deliberately dropped
    np.testing.assert_array_equal(s.boxes, [[8, 10, 28, 26]])


def test_unmapped_class_is_an_error_naming_both_sides(tiny_dataset):
    root = tiny_dataset()
    with pytest.raises(DatasetFormatError, match=r"\['pedestrian'\].*\['car', 'truck'\]"):
        V1Dataset(root, ["car", "truck"])
    with pytest.raises(DatasetFormatError, match=r"targets \['bus'\] are not model classes"):
        V1Dataset(root, CLASSES, {"car": "bus"})


def test_ids_select_and_unknown_ids_are_an_error(tiny_dataset):
    root = tiny_dataset()
    assert V1Dataset(root, CLASSES, ids=["000003", "000001"]).ids == ["000003", "000001"]
    with pytest.raises(DatasetFormatError, match="nope"):
        V1Dataset(root, CLASSES, ids=["nope"])


def test_small_overhang_is_clipped_and_kept(tiny_dataset):
    root = tiny_dataset()
    edit_record(root, 1, boxes=[[-3.0, 10, 99.5, 26], [-4, 0, -1, 5]], labels=["car", "car"])
    s = V1Dataset(root, CLASSES)[1]
    np.testing.assert_array_equal(s.boxes, [[0, 10, 96, 26]])  # the off-image sliver is gone
    np.testing.assert_array_equal(s.labels, [0])


def _write(root: Path, relative: str, array: np.ndarray) -> None:
    v1.write_png(root / relative, array)


def _one_pixel(mask: np.ndarray, value: int) -> np.ndarray:
    mask[5, 7] = value
    return mask


BAD_CASES = {
    "unreadable image": (
        lambda root: (root / f"images/{SID}.png").write_bytes(b"not a png"),
        {},
        "unreadable",
    ),
    "size mismatch": (None, {"width": 100}, "manifest says 100x64"),
    "mask values": (
        lambda root: _write(root, f"lane/{SID}.png", np.full((64, 96), 7, np.uint8)),
        {},
        r"values \[7\] not allowed",
    ),
    "depth not uint16": (
        lambda root: _write(root, f"depth/{SID}.png", np.ones((64, 96), np.uint8)),
        {},
        "uint16",
    ),
    "one bad mask pixel": (
        lambda root: _write(root, f"lane/{SID}.png", _one_pixel(np.zeros((64, 96), np.uint8), 2)),
        {},
        r"values \[2\] not allowed",
    ),
    "path escapes root": (None, {"drivable": "../outside.png"}, "escapes the dataset root"),
    "path escapes root inside": (None, {"lane": "lane/../../x.png"}, "escapes the dataset root"),
    "NaN box": (None, {"boxes": [[float("nan"), 1, 5, 5]], "labels": ["car"]}, "non-finite"),
    "degenerate box": (None, {"boxes": [[10, 10, 10, 20]], "labels": ["car"]}, "degenerate"),
    "box out of bounds": (None, {"boxes": [[10, 10, 110, 20]], "labels": ["car"]}, "outside"),
    "unknown class": (None, {"labels": ["bicycle"]}, r"\['bicycle'\] are not among"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_sample_returns_none_with_one_warning(tiny_dataset, caplog, case):
    damage, changes, reason = BAD_CASES[case]
    root = tiny_dataset()
    if damage is not None:
        damage(root)
    if changes:
        edit_record(root, 1, **changes)
    ds = V1Dataset(root, CLASSES)
    with caplog.at_level(logging.WARNING, logger="perception.data"):
        assert ds[1] is None
    (record,) = caplog.records
    assert record.name == "perception.data" and SID in record.getMessage()
    assert re.search(reason, record.getMessage())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="perception.data"):
        assert ds[0] is not None and ds[2] is not None  # the rest of the dataset still loads
    assert not caplog.records


def test_dataset_level_problems_raise_at_construction(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"dataset\.yaml: missing"):
        V1Dataset(tmp_path, CLASSES)


def test_a_symlinked_image_folder_is_read(tiny_dataset, tmp_path):
    """Large image folders often live elsewhere and are linked in: the root check is on
    the path as written, not on where a link leads."""
    root = tiny_dataset()
    elsewhere = tmp_path / "big_disk_images"
    (root / "images").rename(elsewhere)
    (root / "images").symlink_to(elsewhere, target_is_directory=True)
    ds = V1Dataset(root, CLASSES)
    assert all(ds[i] is not None for i in range(len(ds)))
