"""The synthetic world is physically grounded: its labels follow from the geometry."""

from __future__ import annotations

import dataclasses
import filecmp
from pathlib import Path

import numpy as np
import pytest

from perception.cli import main
from perception.data.formats import v1
from perception.data.synthetic.render import ROAD, render
from perception.data.synthetic.scene import Part, Solid, sample_scene
from perception.data.synthetic.writer import render_sample, write_dataset

SIZE = (96, 160)


def flat_scene(seed: int = 0, solids: list[Solid] | None = None, **camera):
    """A sampled scene with a level camera, a straight road and only the given solids."""
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, *SIZE)
    scene.camera = dataclasses.replace(scene.camera, pitch=0.0, roll=0.0, **camera)
    scene.road = dataclasses.replace(scene.road, curvature=0.0, heading=0.0)
    scene.solids = solids or []
    return scene, rng


def cube(label: str | None, x: float, z: float, half: float = 1.0) -> Solid:
    return Solid(label, x, z, 0.0, [Part((0.0, -half, 0.0), (half, half, half), (0.5, 0.5, 0.5))])


def test_ground_depth_matches_pinhole_formula():
    scene, rng = flat_scene(seed=1)
    out = render(scene, rng)
    cam = scene.camera
    rows, cols = np.nonzero(out.drivable == 1)
    assert len(rows) > 500
    expected = cam.fy * cam.mount_height / (rows + 0.5 - cam.cy)
    np.testing.assert_allclose(out.depth[rows, cols], expected, rtol=1e-4)


def test_pitch_moves_the_horizon_down():
    level, rng = flat_scene(seed=2)
    pitched = dataclasses.replace(level, camera=dataclasses.replace(level.camera, pitch=0.05))
    first_road_row = [
        np.nonzero((render(s, rng).drivable == 1).any(axis=1))[0][0] for s in (level, pitched)
    ]
    assert first_road_row[1] < first_road_row[0]  # looking down shows road higher up


def test_cube_front_face_depth_and_box_extent():
    scene, rng = flat_scene(seed=3, solids=[cube("car", 0.0, 20.0)])
    out = render(scene, rng)
    cam = scene.camera
    assert out.labels == ["car"]
    x1, y1, x2, y2 = out.boxes[0]
    # the front face is 1 m nearer than the centre
    centre = (int((y1 + y2) / 2), int((x1 + x2) / 2))
    assert out.depth[centre] == pytest.approx(19.0, rel=1e-4)
    # the front face spans X in [-1, 1] at depth 19: its projected width in pixels
    assert x2 - x1 == pytest.approx(2 * cam.fx / 19.0, abs=1.5)


def test_boxes_are_the_extent_of_visible_pixels():
    for index in range(6):
        scene, out = render_sample(5, index, SIZE)
        for box, solid in zip(out.boxes, out.solid_index, strict=True):
            rows, cols = np.nonzero(out.object_ids == solid)
            assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == tuple(box)
            assert scene.solids[solid].label is not None
    assert sum(len(render_sample(5, i, SIZE)[1].boxes) for i in range(6)) > 5


def test_fully_occluded_object_is_dropped_and_truncated_box_is_clipped():
    wall = Solid("bus", 0.0, 10.0, 0.0, [Part((0, -3, 0), (3.0, 3.0, 1.0), (0.3, 0.3, 0.6))])
    hidden = cube("car", 0.0, 30.0, half=0.8)
    edge = cube("truck", -8.0, 12.0, half=1.5)  # partly left of the image
    scene, rng = flat_scene(seed=4, solids=[wall, hidden, edge], fx=120.0, cx=80.0)
    out = render(scene, rng)
    assert sorted(out.labels) == ["bus", "truck"]
    truck_box = out.boxes[out.labels.index("truck")]
    assert truck_box[0] == 0  # truncated at the border: the box ends there too


def test_sky_has_no_depth_and_lane_lies_on_drivable():
    for index in range(4):
        _, out = render_sample(9, index, SIZE)
        assert set(np.unique(out.lane)) <= {0, 1}
        assert set(np.unique(out.drivable)) <= {0, 1}
        assert not (out.lane & (1 - out.drivable)).any()
        assert (out.depth == 0).any() and (out.depth[out.depth > 0] > 0.5).all()
        assert out.depth.max() < 255.0  # fits the uint16 PNG at scale 256


def test_far_lane_labels_are_at_least_two_pixels_wide():
    scene, rng = flat_scene(seed=6)
    scene.road = dataclasses.replace(scene.road, mark_width=0.1)
    out = render(scene, rng)
    cam = scene.camera
    horizon = int(cam.cy) + 1
    widths = []
    for row in range(horizon + 1, SIZE[0]):
        line = np.concatenate([[0], out.lane[row], [0]])
        starts, ends = np.flatnonzero(np.diff(line) == 1), np.flatnonzero(np.diff(line) == -1)
        widths += [
            e - s for s, e in zip(starts, ends, strict=True) if s > 0 and e < SIZE[1]
        ]  # ignore runs cut by the image border
    assert widths and min(widths) >= 2


def test_same_seed_same_bytes_regardless_of_workers(tmp_path: Path):
    a = write_dataset(tmp_path / "a", num=4, seed=11, size=SIZE, workers=1)
    b = write_dataset(tmp_path / "b", num=4, seed=11, size=SIZE, workers=2)
    c = write_dataset(tmp_path / "c", num=4, seed=12, size=SIZE, workers=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 4 * 4 + 2
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert mismatch == [] and errors == []
    assert (a / "manifest.jsonl").read_bytes() != (c / "manifest.jsonl").read_bytes()


def test_synth_cli_writes_a_valid_dataset_and_preview(tmp_path: Path, capsys):
    out, preview = tmp_path / "s", tmp_path / "sheet.png"
    assert (
        main(
            [
                "synth",
                "--out",
                str(out),
                "--num",
                "6",
                "--seed",
                "1",
                "--size",
                "96x160",
                "--workers",
                "1",
                "--preview",
                str(preview),
            ]
        )
        == 0
    )
    assert preview.stat().st_size > 10_000
    info, records = v1.read_info(out), v1.read_manifest(out)
    assert info.classes == ["car", "truck", "bus", "pedestrian", "cyclist"]
    assert "2 px" in info.notes["lane_label"]
    assert len(records) == 6 and all(r.camera and r.camera.fx > 0 for r in records)
    assert main(["check-data", str(out)]) == 0
    assert "0 problems" in capsys.readouterr().out


def test_synth_refuses_to_overwrite_a_dataset(tmp_path: Path, capsys):
    out = tmp_path / "s"
    write_dataset(out, num=2, seed=1, size=SIZE)
    before = (out / "manifest.jsonl").read_bytes()
    assert main(["synth", "--out", str(out), "--num", "2", "--size", "96x160"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert (out / "manifest.jsonl").read_bytes() == before


def test_road_pixels_are_drivable_and_written_depth_round_trips(tmp_path: Path):
    root = write_dataset(tmp_path / "s", num=1, seed=2, size=SIZE)
    record = v1.read_manifest(root)[0]
    depth = v1.read_depth(root / record.depth)
    _, out = render_sample(2, 0, SIZE)
    np.testing.assert_allclose(depth, out.depth, atol=0.5 / 256)
    assert (v1.read_mask(root / record.drivable) == (out.drivable == 1)).all()
    assert ROAD == 1
