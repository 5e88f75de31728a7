"""KITTI object and Cityscapes converters: tiny fixtures in each dataset's published layout.

Every expected number (pixel, depth, box) below is worked out by hand in the comments, not
recomputed with the converter's own formulas, so a wrong projection or rounding rule fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from perception.data.check import check_dataset
from perception.data.formats import kitti, v1
from perception.data.formats.convert import (
    DEFAULT_CLASSES,
    ClassMap,
    Options,
    SourceError,
    convert,
)

H, W = 48, 80
TOL = 1 / 256  # one step of the uint16 depth PNG


def _kitti_calib(p2: bool = True) -> str:
    """Real KITTI calib layout. P2: fx=50, fy=60, cx=40, cy=24, P2[0,3]=5 (stereo offset).
    R0_rect rotates about y (cos 0.8, sin 0.6); Tr_velo_to_cam is the usual axis swap
    (cam x = -velo y, cam y = -velo z - 0.1, cam z = velo x - 0.2)."""
    mats = {
        "P0": [50, 0, 40, 0, 0, 60, 24, 0, 0, 0, 1, 0],
        "P1": [50, 0, 40, -30, 0, 60, 24, 0, 0, 0, 1, 0],
        "P2": [50, 0, 40, 5, 0, 60, 24, 0, 0, 0, 1, 0],
        "P3": [50, 0, 40, -25, 0, 60, 24, 0, 0, 0, 1, 0],
        "R0_rect": [0.8, 0, 0.6, 0, 1, 0, -0.6, 0, 0.8],
        "Tr_velo_to_cam": [0, -1, 0, 0, 0, 0, -1, -0.1, 1, 0, 0, -0.2],
        "Tr_imu_to_velo": [1, 0, 0, -0.8, 0, 1, 0, 0.3, 0, 0, 1, -0.9],
    }
    if not p2:
        del mats["P2"]
    return "".join(f"{k}: {' '.join(f'{v:.12e}' for v in m)}\n" for k, m in mats.items()) + "\n"


# velodyne (x, y, z) -> rectified (X, Y, Z) -> u = (50X + 40Z + 5) / Z, v = (60Y + 24Z) / Z
VELO_POINTS = [
    (9.34, 4.48, -0.5),  # (1.9, 0.4, 10): u 50.0, v 26.4 -> row 26, col 50, 10 m
    (18.48, 8.96, -0.9),  # (3.8, 0.8, 20): u 49.75, v 26.4 -> same pixel, 20 m: loses
    (5.86, 9.12, 1.9),  # (-3.9, -2, 10): u 21.0, v 12.0 -> row 12, col 21, 10 m: loses
    (3.0, 4.6, 0.9),  # (-2, -1, 5): u 21.0, v 12.0 -> same pixel, 5 m: wins though later
    (6.6, 4.8, -0.4),  # (0, 0.3, 8): u 40.625, v 26.25 -> row 26, col 41 (nearest), 8 m
    (-9.06, -4.32, 0.3),  # (-2.1, -0.4, -10): behind, yet u 50.0, v 26.4 (the 10 m pixel)
    (10.2, -5.0, -0.1),  # (10, 0, 5): u 141, outside the 80 px image
    (12.952, -0.336, -0.1),  # (7.92, 0, 10): u 80.1 -> col 80, just outside
    (3.268, 12.576, 1.9),  # (-8.22, -2, 10): u -0.6 -> col -1, just outside
]
EXPECTED_DEPTH = {(26, 50): 10.0, (12, 21): 5.0, (26, 41): 8.0}

KITTI_LABELS = """\
Car 0.00 0 -1.57 10.50 12.25 30.75 40.00 1.50 1.60 3.90 1.00 1.50 10.00 -1.57
Van 0.50 1 0.10 60.00 5.00 100.00 20.00 2.00 1.80 4.50 5.00 1.60 20.00 0.10
Pedestrian 0.00 0 0.20 40.00 10.00 45.50 30.00 1.70 0.60 0.80 0.00 1.60 8.00 0.20
Tram 0.00 0 0.00 0.00 0.00 20.00 20.00 3.00 2.50 15.00 -5.00 1.60 30.00 0.00
Cyclist 0.00 0 0.00 85.00 10.00 95.00 20.00 1.70 0.60 1.80 9.00 1.60 8.00 0.00
DontCare -1 -1 -10 50.00 30.00 70.00 45.00 -1 -1 -1 -1000 -1000 -1000 -10
"""
# Van clipped to the image; Tram dropped by the map; Cyclist wholly outside -> degenerate
KITTI_BOXES = [[10.5, 12.25, 30.75, 40.0], [60.0, 5.0, 80.0, 20.0], [40.0, 10.0, 45.5, 30.0]]


def _kitti(root: Path, labels: dict[str, str] | None = None, p2: bool = True) -> Path:
    """training/{image_2,label_2,calib,velodyne} for frames 000000 (objects, points) and
    000001 (no objects, empty scan)."""
    labels = labels or {"000000": KITTI_LABELS, "000001": ""}
    for sub in ("image_2", "label_2", "calib", "velodyne"):
        (root / "training" / sub).mkdir(parents=True)
    for stem, text in labels.items():
        t = root / "training"
        cv2.imwrite(str(t / f"image_2/{stem}.png"), np.full((H, W, 3), 90, np.uint8))
        (t / f"label_2/{stem}.txt").write_text(text)
        (t / f"calib/{stem}.txt").write_text(_kitti_calib(p2))
        pts = [(*p, 0.5) for p in VELO_POINTS] if stem == "000000" else []
        np.asarray(pts, np.float32).reshape(-1, 4).tofile(t / f"velodyne/{stem}.bin")
    return root


def _records(out: Path) -> dict[str, v1.Record]:
    problems, n = check_dataset(out)
    assert [str(p) for p in problems] == [] and n > 0
    return {r.id: r for r in v1.read_manifest(out)}


def test_kitti_lidar_depth_boxes_and_camera(tmp_path: Path) -> None:
    src, out = _kitti(tmp_path / "kitti"), tmp_path / "out"
    summary = convert("kitti", src, out)
    records = _records(out)
    rec = records["000000"]
    assert rec.boxes == KITTI_BOXES
    assert rec.labels == ["car", "car", "pedestrian"]
    assert summary.dropped["Tram"] == 1 and not summary.unknown  # DontCare is not a category
    assert rec.camera is not None and rec.camera.as_tuple() == (50.0, 60.0, 40.0, 24.0)
    assert rec.lane is None and rec.drivable is None
    depth = v1.read_depth(out / rec.depth)
    for (row, col), metres in EXPECTED_DEPTH.items():
        assert depth[row, col] == pytest.approx(metres, abs=TOL), (row, col)
    # the behind-camera and outside points, and the farther twins, leave no trace
    assert np.count_nonzero(depth) == len(EXPECTED_DEPTH)
    empty = records["000001"]
    assert empty.boxes == [] and np.count_nonzero(v1.read_depth(out / empty.depth)) == 0
    assert "floor(u + 0.5)" in v1.read_info(out).notes["depth"]


@pytest.mark.parametrize("mode", ["drop", "ignore"])
def test_kitti_dontcare_modes(tmp_path: Path, mode: str) -> None:
    src = _kitti(tmp_path / "kitti")
    class_map = ClassMap(kitti.DEFAULT_MAP, DEFAULT_CLASSES)
    samples = list(kitti.read(src, Options(dontcare=mode), class_map).samples)
    expected = [[50.0, 30.0, 70.0, 45.0]] if mode == "ignore" else None
    assert samples[0].ignore == expected
    assert samples[0].boxes == KITTI_BOXES  # DontCare never becomes an object
    assert "DontCare" not in class_map.unknown
    convert("kitti", src, tmp_path / "out", Options(dontcare=mode))
    assert _records(tmp_path / "out")["000000"].ignore == expected


def test_kitti_depth_maps_replace_lidar(tmp_path: Path) -> None:
    src, maps = _kitti(tmp_path / "kitti"), tmp_path / "maps"
    maps.mkdir()
    planted = np.zeros((H, W), np.uint16)
    planted[5, 7], planted[40, 70] = 1000, 5120  # 3.90625 m and 20 m
    cv2.imwrite(str(maps / "000000.png"), planted)  # 16-bit PNG, like the benchmark's
    out = tmp_path / "out"
    convert("kitti", src, out, Options(depth_maps=str(maps)))
    records = _records(out)
    depth = v1.read_depth(out / records["000000"].depth)
    assert depth[5, 7] == pytest.approx(3.90625) and depth[40, 70] == pytest.approx(20.0)
    assert np.count_nonzero(depth) == 2  # no LiDAR points mixed in
    assert records["000001"].depth is None  # no map for this frame: depth unlabeled
    assert "1 images without a map" in v1.read_info(out).notes["depth"]


def test_kitti_malformed_label_names_file_and_line(tmp_path: Path) -> None:
    bad = KITTI_LABELS.splitlines()[0] + "\nCar 0.00 0 -1.57 10.50 12.25 30.75 40.00 1.50\n"
    src, out = _kitti(tmp_path / "kitti", {"000000": "", "000003": bad}), tmp_path / "out"
    with pytest.raises(SourceError, match=r"label_2/000003\.txt:2: expected 15 values, got 9"):
        convert("kitti", src, out)
    assert not (out / v1.MANIFEST_FILE).exists()


def test_kitti_calib_without_p2_names_file_and_key(tmp_path: Path) -> None:
    src, out = _kitti(tmp_path / "kitti", p2=False), tmp_path / "out"
    with pytest.raises(SourceError, match=r"calib/000000\.txt: missing key 'P2'"):
        convert("kitti", src, out)
    assert not (out / v1.MANIFEST_FILE).exists()


BASE = "aachen_000000_000019"
EXTRINSIC = {"baseline": 0.5, "pitch": 0.05, "roll": 0.0, "x": 1.7, "y": -0.1, "yaw": 0.007}
CAMERA = {
    "extrinsic": {**EXTRINSIC, "z": 1.18},
    "intrinsic": {"fx": 100.0, "fy": 101.5, "u0": 40.5, "v0": 23.0},
}


def _cityscapes(root: Path, split: str = "train", camera: dict | None = None) -> Path:
    """One frame in leftImg8bit/gtFine/disparity/camera, split/city/base_suffix."""
    dirs = {
        k: root / k / split / "aachen" for k in ("leftImg8bit", "gtFine", "disparity", "camera")
    }
    for d in dirs.values():
        d.mkdir(parents=True)
    ids = np.full((H, W), 11, np.uint16)  # building (stuff: plain labelId)
    ids[40:] = 7  # road
    ids[0:2, 0:10] = 0  # unlabeled
    ids[47, 0:4], ids[47, 4:8] = 2, 3  # rectification border, out of roi: no label either
    ids[5:15, 10:30] = 26001  # car -> [10, 5, 30, 15]
    ids[20:25, 2:6] = ids[26:28, 8:10] = 26002  # one car in two pieces -> [2, 20, 10, 28]
    ids[20:40, 50:55] = 24001  # person -> pedestrian [50, 20, 55, 40]
    ids[1:4, 70:73] = 25001  # rider -> cyclist [70, 1, 73, 4]
    ids[30:36, 60:66] = 33001  # bicycle: dropped by the default map
    ids[30:36, 0:8] = ids[0:2, 40:42] = 24  # two person crowd groups -> two ignore boxes
    ids[36, 8] = 24  # touches the first group at a corner: same region -> [0, 30, 9, 37]
    ids[8:11, 35:40] = 26  # a car group -> ignore [35, 8, 40, 11]
    ids[8:11, 74:78] = 33  # a bicycle group: dropped class, no ignore box
    if split == "test":  # the published test gtFine: placeholders, only the ego vehicle
        ids[:] = 0
        ids[44:] = 1
    label_ids = np.where(ids >= 1000, ids // 1000, ids).astype(np.uint8)
    disparity = np.zeros((H, W), np.uint16)
    disparity[45, 10] = 1 + 4 * 256  # disparity 4 -> 0.5 * 100 / 4 = 12.5 m
    disparity[45, 20] = 1 + 128  # disparity 0.5 -> 100 m
    disparity[30, 52] = 1 + 3 * 256 + 128  # disparity 3.5 -> 14.2857 m
    disparity[10, 10] = 1  # disparity 0: infinitely far, no measurement
    disparity[10, 12] = 2  # disparity 1/256 -> 12800 m, beyond a uint16 PNG: dropped
    cv2.imwrite(str(dirs["leftImg8bit"] / f"{BASE}_leftImg8bit.png"), np.zeros((H, W, 3), np.uint8))
    cv2.imwrite(str(dirs["gtFine"] / f"{BASE}_gtFine_instanceIds.png"), ids)
    cv2.imwrite(str(dirs["gtFine"] / f"{BASE}_gtFine_labelIds.png"), label_ids)
    cv2.imwrite(str(dirs["disparity"] / f"{BASE}_disparity.png"), disparity)
    cam_json = json.dumps(camera or CAMERA, indent=4)
    (dirs["camera"] / f"{BASE}_camera.json").write_text(cam_json)
    return root


def test_cityscapes_boxes_crowds_depth_drivable_camera(tmp_path: Path) -> None:
    src, out = _cityscapes(tmp_path / "cs"), tmp_path / "out"
    summary = convert("cityscapes", src, out)
    rec = _records(out)[BASE]
    pairs = sorted(zip(rec.labels or [], rec.boxes or [], strict=True), key=str)
    assert pairs == sorted(
        [
            ("car", [10.0, 5.0, 30.0, 15.0]),
            ("car", [2.0, 20.0, 10.0, 28.0]),
            ("pedestrian", [50.0, 20.0, 55.0, 40.0]),
            ("cyclist", [70.0, 1.0, 73.0, 4.0]),
        ],
        key=str,
    )
    assert summary.dropped["bicycle"] == 1
    assert rec.camera is not None and rec.camera.as_tuple() == (100.0, 101.5, 40.5, 23.0)
    drivable = v1.read_mask(out / rec.drivable)
    expected = np.zeros((H, W), np.uint8)
    expected[40:] = 1
    expected[0:2, 0:10] = expected[47, 0:8] = 255
    np.testing.assert_array_equal(drivable, expected)
    depth = v1.read_depth(out / rec.depth)
    for (row, col), metres in {(45, 10): 12.5, (45, 20): 100.0, (30, 52): 50 / 3.5}.items():
        assert depth[row, col] == pytest.approx(metres, abs=TOL), (row, col)
    assert np.count_nonzero(depth) == 3  # p = 0, p = 1 and the 12.8 km one are all 0
    # crowd groups of person and car; the bicycle group and plain stuff give none
    expected_ignore = [[40.0, 0.0, 42.0, 2.0], [0.0, 30.0, 9.0, 37.0], [35.0, 8.0, 40.0, 11.0]]
    assert sorted(rec.ignore or []) == sorted(expected_ignore)


def test_cityscapes_test_split_keeps_depth_only(tmp_path: Path) -> None:
    src, out = _cityscapes(tmp_path / "cs", split="test"), tmp_path / "out"
    convert("cityscapes", src, out, Options(split="test"))
    rec = _records(out)[BASE]
    assert rec.boxes is None and rec.drivable is None  # placeholder gtFine is not read
    assert rec.depth is not None and rec.camera is not None


def test_cityscapes_camera_without_baseline_names_file_and_key(tmp_path: Path) -> None:
    camera = {"extrinsic": {"pitch": 0.05}, "intrinsic": CAMERA["intrinsic"]}
    src, out = _cityscapes(tmp_path / "cs", camera=camera), tmp_path / "out"
    with pytest.raises(
        SourceError, match=rf"{BASE}_camera\.json: missing key 'extrinsic\.baseline'"
    ):
        convert("cityscapes", src, out)
    assert not (out / v1.MANIFEST_FILE).exists()


def test_missing_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "kitti" / "training" / "image_2").mkdir(parents=True)
    with pytest.raises(SourceError, match=r"training/calib: missing"):
        convert("kitti", tmp_path / "kitti", tmp_path / "out")
    (tmp_path / "cs" / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(SourceError, match=r"gtFine/train: missing"):
        convert("cityscapes", tmp_path / "cs", tmp_path / "out2")
