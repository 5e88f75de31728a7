"""The released weights in weights/: they load, they are trained, and INT8 keeps them.

These tests read the committed release (CI has it: it is part of the repository), render
their own small held-out scenes and measure, so a broken or untrained release, or an
INT8 path that costs more than BENCHMARKS.md allows, turns CI red.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from perception.checkpoints import load_model
from perception.data.synthetic.writer import write_dataset
from perception.demo import find_weights, run_demo
from perception.evaluation.evaluate import evaluate
from perception.export import export_onnx, quantize_int8

RELEASE_DIR = Path(__file__).resolve().parent.parent / "weights"
# BENCHMARKS.md, CPU: static INT8 vs onnxruntime fp32
MAX_MAP50_DROP, MAX_LANE_IOU_DROP, MAX_ABS_REL_RISE = 0.01, 0.01, 0.005


@pytest.fixture(scope="module")
def release() -> Path:
    found = sorted(RELEASE_DIR.glob("*.safetensors"))
    assert len(found) == 1, f"expected one release in {RELEASE_DIR}, found {found}"
    assert found[0].stat().st_size < 50 * 2**20  # the size limit
    return found[0]


@pytest.fixture(scope="module")
def val_set(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    size = load_model(release).meta.image_size
    return write_dataset(tmp_path_factory.mktemp("val") / "val", num=24, seed=7, size=size)


def test_release_loads_with_its_metadata(release: Path) -> None:
    loaded = load_model(release)
    assert loaded.meta.class_names == ["car", "truck", "bus", "pedestrian", "cyclist"]
    assert loaded.meta.version and loaded.model.num_seg == 2
    loaded.model.check_image_size(loaded.meta.image_size)
    assert loaded.model.canonical_focal > 0  # camera-aware metric depth
    assert 0 < loaded.meta.config["default_hfov"] < 180


def test_demo_finds_the_release_and_it_is_trained(release: Path, tmp_path: Path) -> None:
    summary = run_demo(tmp_path / "demo", num=6, size=(192, 320))
    assert Path(summary.weights).resolve() == release.resolve() == find_weights().resolve()
    m = summary.metrics  # untrained: mAP ~0, lane IoU ~0, drivable mIoU ~0.4, abs_rel ~0.9
    assert m["det/mAP50"] > 0.4 and m["lane/iou"] > 0.7 and m["drivable/miou"] > 0.97
    assert m["depth/abs_rel"] < 0.2 and summary.seconds < 120


def test_int8_stays_within_the_accuracy_budget(
    release: Path, val_set: Path, tmp_path: Path
) -> None:
    loaded = load_model(release)
    calib = write_dataset(tmp_path / "calib", num=16, seed=3, size=loaded.meta.image_size)
    fp32 = export_onnx(loaded, tmp_path / "fp32.onnx", dynamic_batch=True)
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calib, num_images=16)
    ref = evaluate(fp32, val_set, workers=0)
    got = evaluate(int8, val_set, workers=0)
    assert ref["det/mAP50"] - got["det/mAP50"] <= MAX_MAP50_DROP, (ref, got)
    assert ref["lane/iou"] - got["lane/iou"] <= MAX_LANE_IOU_DROP, (ref, got)
    assert got["depth/abs_rel"] - ref["depth/abs_rel"] <= MAX_ABS_REL_RISE, (ref, got)
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size  # weights really are 8-bit
