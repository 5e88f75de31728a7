"""BDD100K, TuSimple and CULane converters on tiny sources in each dataset's published
layout: the output passes check-data and holds exactly the planted labels, and a malformed
source file fails with one message naming file and line/key, leaving no manifest."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from perception.data.check import check_dataset
from perception.data.formats import v1
from perception.data.formats.convert import Options, SourceError, convert

H, W = 64, 96


def _jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((H, W, 3), 90, np.uint8))


def _records(out: Path) -> dict[str, v1.Record]:
    problems, _ = check_dataset(out)
    assert problems == [], [str(p) for p in problems]
    return {r.id: r for r in v1.read_manifest(out)}


def _mask(out: Path, relative: str | None) -> np.ndarray:
    assert relative is not None
    return v1.read_mask(out / relative)


# --- BDD100K ---------------------------------------------------------------------------


def _box(category: str, x1: float, y1: float, x2: float, y2: float) -> dict:
    attributes = {"occluded": False, "truncated": False, "crowd": False}
    box2d = {"x1": x1, "y1": y1, "x2": x2, "y2": y2}
    return {"id": "1", "category": category, "attributes": attributes, "box2d": box2d}


def _poly(category: str, vertices: list, types: str, closed: bool = False) -> dict:
    poly2d = [{"vertices": vertices, "types": types, "closed": closed}]
    attributes = {"laneDirection": "parallel", "laneStyle": "solid"}
    return {"id": "2", "category": category, "attributes": attributes, "poly2d": poly2d}


def _write_bdd(src: Path, lane_frames: list | None = None) -> None:
    """Image a: det + lane + drivable; b: det (no labels key); c: lane; d: drivable."""
    for name in "abcd":
        _jpg(src / f"images/100k/train/{name}.jpg")
    det = [
        {
            "name": "a.jpg",
            "attributes": {"weather": "clear", "scene": "city street", "timeofday": "daytime"},
            "timestamp": 10000,
            "labels": [
                _box("car", 10, 20, 29, 39),  # inclusive corners: 20 x 20 px
                _box("rider", -5, 30, 14, 70),  # clipped to the image
                _box("traffic light", 50, 5, 55, 15),  # dropped by the default map
                _box("unicorn", 1, 1, 9, 9),  # not in the map: counted as unknown
                _box("truck", 120, 10, 140, 30),  # wholly outside: degenerate, dropped
            ],
        },
        {"name": "b.jpg", "attributes": {}, "timestamp": 10000},
    ]
    (src / "labels/det_20").mkdir(parents=True)
    (src / "labels/det_20/det_train.json").write_text(json.dumps(det))
    if lane_frames is None:
        straight = _poly("single white", [[20, 5], [20, 60]], "LL")
        crosswalk = _poly("crosswalk", [[60, 40], [90, 40], [90, 60], [60, 60]], "LLLL", True)
        curve = _poly("road curb", [[10, 60], [10, 20], [80, 20], [80, 60]], "LCCL")
        lane_frames = [
            {"name": "a.jpg", "labels": [straight, crosswalk]},
            {"name": "c.jpg", "labels": [curve]},
        ]
    (src / "labels/lane/polygons").mkdir(parents=True)
    (src / "labels/lane/polygons/lane_train.json").write_text(json.dumps(lane_frames))
    drivable = np.full((H, W), 2, np.uint8)  # background
    drivable[:, :32] = 0  # direct
    drivable[:, 32:64] = 1  # alternative
    (src / "labels/drivable/masks/train").mkdir(parents=True)
    for name in "ad":
        cv2.imwrite(str(src / f"labels/drivable/masks/train/{name}.png"), drivable)


def test_bdd100k_boxes_lanes_drivable(tmp_path: Path) -> None:
    src, out = tmp_path / "bdd100k", tmp_path / "out"
    _write_bdd(src)
    summary = convert("bdd100k", src, out, Options(split="train", lane_width=3))
    assert summary.unknown == {"unicorn": 1}
    assert summary.dropped == {"traffic light": 1}
    records = _records(out)
    assert sorted(records) == ["a", "b", "c", "d"]
    a, b, c, d = (records[k] for k in "abcd")
    assert a.boxes == [[10.0, 20.0, 30.0, 40.0], [0.0, 30.0, 15.0, 64.0]]
    assert a.labels == ["car", "cyclist"]
    assert (b.boxes, b.labels) == ([], [])  # listed without labels: labeled, no objects
    assert b.lane is None and b.drivable is None
    assert c.boxes is None and c.drivable is None and c.lane is not None
    assert d.boxes is None and d.lane is None and d.drivable is not None
    assert all(r.camera is None and r.depth is None for r in records.values())

    lane = _mask(out, a.lane)
    assert lane[5:61, 19:22].all() and lane[:, 30].sum() == 0
    assert lane[40:61, 60:91].sum() == 0  # the crosswalk is not a lane line
    curve = _mask(out, c.lane)
    assert curve[30, 44:47].any()  # B(0.5) of (10,60) (10,20) (80,20) (80,60) is (45, 30)
    assert curve[20, 45] == 0 and curve[60, 45] == 0  # neither control polygon nor chord
    assert curve[59:62, 9:12].any() and curve[59:62, 79:82].any()  # both end points
    notes = yaml.safe_load((out / "dataset.yaml").read_text())["notes"]
    assert notes["lane_width"] == 3 and "crosswalk" in notes["lane"]


@pytest.mark.parametrize(
    "alternative, value", [("drivable", 1), ("background", 0), ("ignore", 255)]
)
def test_bdd100k_alternative_area(tmp_path: Path, alternative: str, value: int) -> None:
    src, out = tmp_path / "bdd100k", tmp_path / "out"
    _write_bdd(src)
    convert("bdd100k", src, out, Options(alternative=alternative))
    drivable = _mask(out, _records(out)["d"].drivable)
    assert (drivable[:, :32] == 1).all()  # direct
    assert (drivable[:, 32:64] == value).all()  # alternative
    assert (drivable[:, 64:] == 0).all()  # background
    notes = yaml.safe_load((out / "dataset.yaml").read_text())["notes"]
    assert f"--alternative {alternative}" in notes["drivable"]


def test_bdd100k_malformed_sources(tmp_path: Path) -> None:
    src, out = tmp_path / "bdd100k", tmp_path / "out"
    good = {"name": "a.jpg", "labels": []}
    bad = {"name": "c.jpg", "labels": [_poly("single white", [[1, 2, 3]], "L")]}
    _write_bdd(src, lane_frames=[good, bad])
    with pytest.raises(SourceError) as err:
        convert("bdd100k", src, out, Options())
    message = str(err.value)
    assert "lane_train.json" in message
    assert "frames[1].labels[0].poly2d[0].vertices: expected [[x, y], ...]" in message
    assert not (out / v1.MANIFEST_FILE).exists()

    (src / "labels/det_20/det_train.json").write_text('[{"name": "a.jpg",\n "labels": [}]')
    with pytest.raises(SourceError, match=r"det_train\.json: not valid JSON at line 2"):
        convert("bdd100k", src, tmp_path / "out2", Options())
    (tmp_path / "bare/images/100k/val").mkdir(parents=True)
    with pytest.raises(SourceError, match=r"labels/det_20/det_val\.json"):
        convert("bdd100k", tmp_path / "bare", tmp_path / "out3", Options(split="val"))


# --- TuSimple --------------------------------------------------------------------------

ROWS = [10, 20, 30, 40, 50, 60]


def _tusimple_line(raw_file: str, lanes: list[list[int]]) -> str:
    return json.dumps({"lanes": lanes, "h_samples": ROWS, "raw_file": raw_file}) + "\n"


def _write_tusimple(src: Path, second_line: str | None = None) -> None:
    for clip in ("0313-1/6040", "0313-1/6060", "0531/1492626047222176976_0", "0530/17_0"):
        _jpg(src / f"clips/{clip}/20.jpg")
    vertical, late = [30] * 6, [-2, -2, 70, 70, 70, 70]
    (src / "label_data_0313.json").write_text(
        _tusimple_line("clips/0313-1/6040/20.jpg", [vertical, late])
        + (second_line or _tusimple_line("clips/0313-1/6060/20.jpg", [[-2] * 6]))
    )
    (src / "label_data_0531.json").write_text(
        _tusimple_line("clips/0531/1492626047222176976_0/20.jpg", [vertical])
    )
    (src / "test_label.json").write_text(_tusimple_line("clips/0530/17_0/20.jpg", [late]))


def test_tusimple_lanes(tmp_path: Path) -> None:
    src = tmp_path / "tusimple"
    _write_tusimple(src)
    convert("tusimple", src, tmp_path / "train", Options(split="train", lane_width=3))
    records = _records(tmp_path / "train")
    assert sorted(records) == [
        "clips_0313-1_6040_20",
        "clips_0313-1_6060_20",
        "clips_0531_1492626047222176976_0_20",
    ]
    lane = _mask(tmp_path / "train", records["clips_0313-1_6040_20"].lane)
    assert lane[10:61, 29:32].all() and lane[:, 50].sum() == 0
    assert lane[30:61, 69:72].all() and lane[:25, 70].sum() == 0  # -2 rows: no point
    assert _mask(tmp_path / "train", records["clips_0313-1_6060_20"].lane).sum() == 0
    manifest = (tmp_path / "train" / v1.MANIFEST_FILE).read_text()
    assert all(key not in manifest for key in ('"boxes"', '"drivable"', '"depth"'))

    convert("tusimple", src, tmp_path / "test", Options(split="test"))
    assert list(_records(tmp_path / "test")) == ["clips_0530_17_0_20"]
    notes = yaml.safe_load((tmp_path / "test/dataset.yaml").read_text())["notes"]
    assert notes["lane_width"] == 8 and "8 px" in notes["lane"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"lanes": [[30, 30]], "h_samples": [10, 20],\n', r"label_data_0313\.json:2: not valid"),
        ('{"lanes": [], "raw_file": "clips/x/20.jpg"}\n', r"0313\.json:2: missing key 'h_samples'"),
    ],
)
def test_tusimple_malformed_line(tmp_path: Path, line: str, message: str) -> None:
    src, out = tmp_path / "tusimple", tmp_path / "out"
    _write_tusimple(src, second_line=line)
    with pytest.raises(SourceError, match=message):
        convert("tusimple", src, out, Options())
    assert not (out / v1.MANIFEST_FILE).exists()


# --- CULane ----------------------------------------------------------------------------

CLIP = "driver_23_30frame/05151649_0422.MP4"
TRAIN = [f"{CLIP}/00000.jpg", f"{CLIP}/00030.jpg"]
VAL = "driver_23_30frame/05151650_0423.MP4/00000.jpg"


def _write_culane(src: Path, first_lines: str = "20.0 60.0 20.0 5.0 \n80.5 60 60.5 5 \n") -> None:
    for relative, lines in zip([*TRAIN, VAL], [first_lines, "", "48 60 48 5\n"], strict=True):
        _jpg(src / relative)
        (src / relative).with_suffix(".lines.txt").write_text(lines)
    (src / "list").mkdir()
    (src / "list/train_gt.txt").write_text(
        "".join(f"/{r} /laneseg_label_w16/{r[:-3]}png 1 1 0 0\n" for r in TRAIN)
    )
    (src / "list/val.txt").write_text(f"/{VAL}\n")


def test_culane_lanes(tmp_path: Path) -> None:
    src = tmp_path / "culane"
    _write_culane(src)
    convert("culane", src, tmp_path / "train", Options(split="train", lane_width=3))
    records = _records(tmp_path / "train")
    first = "driver_23_30frame_05151649_0422.MP4_00000"
    empty = "driver_23_30frame_05151649_0422.MP4_00030"
    assert sorted(records) == [first, empty]
    lane = _mask(tmp_path / "train", records[first].lane)
    assert lane[5:61, 19:22].all() and lane[:, 40].sum() == 0
    assert lane[32, 69:73].any() and lane[32, 60].sum() == 0  # (80.5,60)-(60.5,5) at y=32
    assert _mask(tmp_path / "train", records[empty].lane).sum() == 0  # labeled: no lanes
    assert records[first].boxes is None and records[first].drivable is None

    convert("culane", src, tmp_path / "val", Options(split="val"))
    (val,) = _records(tmp_path / "val").values()
    assert val.id == "driver_23_30frame_05151650_0423.MP4_00000"
    assert _mask(tmp_path / "val", val.lane)[30, 44:53].all()  # 8 px default around x=48


def test_culane_odd_value_count(tmp_path: Path) -> None:
    src, out = tmp_path / "culane", tmp_path / "out"
    _write_culane(src, first_lines="20 60 20 5\n80 60 60\n")
    with pytest.raises(SourceError, match=r"00000\.lines\.txt:2: expected x y pairs, got 3 values"):
        convert("culane", src, out, Options())
    assert not (out / v1.MANIFEST_FILE).exists()
    (src / "list/train_gt.txt").unlink()
    with pytest.raises(SourceError, match=r"list/train\.txt: missing"):
        convert("culane", src, tmp_path / "out2", Options())
