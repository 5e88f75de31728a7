"""Depth errors by region (``evaluation.regions``) against hand-computed masks and sums."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import EVAL_KEYS, TINY_RELEASE_SIZE, write_tiny_release

from perception.data.synthetic.writer import write_dataset
from perception.evaluation.metrics import MetricsSuite
from perception.evaluation.regions import (
    DEPTH_REGIONS,
    RegionDepthEvaluator,
    box_mask,
    region_masks,
)
from perception.structures import Batch, HeadOutputs


def _weighted_abs_rel(metrics: dict) -> float:
    """The regions' abs_rel weighted by their pixel shares: the whole split's abs_rel."""
    return sum(metrics[f"depth_{r}/share"] * metrics[f"depth_{r}/abs_rel"] for r in DEPTH_REGIONS)


def test_box_mask_takes_pixels_whose_centre_is_inside() -> None:
    # pixel j spans [j, j + 1): x0 = 1.0 .. x1 = 3.0 holds columns 1 and 2, not 3
    mask = box_mask(torch.tensor([[1.0, 0.0, 3.0, 2.0]]), 4, 5)
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0:2, 1:3] = True
    assert torch.equal(mask, expected)
    # a box that covers no pixel centre (0.5 and 1.5 both outside [0.6, 1.4)) is empty
    assert not box_mask(torch.tensor([[0.6, 0.6, 1.4, 1.4]]), 4, 5).any()
    # two boxes: the union; none: nothing
    two = box_mask(torch.tensor([[0.0, 0.0, 1.0, 1.0], [4.0, 3.0, 5.0, 4.0]]), 4, 5)
    assert two.sum() == 2 and two[0, 0] and two[3, 4]
    assert not box_mask(torch.zeros(0, 4), 4, 5).any()


def _batch(lane_labeled: bool = True) -> Batch:
    """Two 4 x 6 images: road in the bottom row, one box over columns 0-1 of rows 1-3
    (its bottom-row pixels are road, so they count as road, not objects)."""
    n, h, w = 2, 4, 6
    flags = torch.ones(n, dtype=torch.bool)
    drivable = torch.zeros(n, h, w, dtype=torch.uint8)
    drivable[:, 3] = 1
    lane = torch.zeros(n, h, w, dtype=torch.uint8)
    lane[:, 2, 5] = 1  # one lane pixel above the road row: road too
    depth = torch.arange(1, n * h * w + 1, dtype=torch.float32).reshape(n, h, w)
    depth[1, 0, 5] = 0.0  # no measurement: never scored
    return Batch(
        images=torch.zeros(n, 3, h, w, dtype=torch.uint8),
        boxes=[torch.tensor([[0.0, 1.0, 2.0, 4.0]])] * n,
        labels=[torch.tensor([0])] * n,
        lane=lane if lane_labeled else torch.full_like(lane, 255),
        drivable=drivable,
        depth=depth,
        valid=torch.ones(n, h, w, dtype=torch.bool),
        has_det=flags,
        has_lane=torch.full((n,), lane_labeled),
        has_drivable=flags.clone(),
        has_depth=flags.clone(),
        camera=torch.full((n, 4), float("nan")),
        letterbox=torch.tensor([[1.0, 0.0, 0.0, h, w]] * n),
    )


def test_regions_partition_the_image() -> None:
    masks = region_masks(_batch())
    assert sum(m.long() for m in masks.values()).eq(1).all()  # every pixel in exactly one
    assert masks["road"][0].sum() == 6 + 1  # the bottom row and the lane pixel
    assert masks["objects"][0].sum() == 2 * 2  # rows 1-2 of columns 0-1
    assert masks["objects"][0, 3].sum() == 0  # the box's road row stays road


def test_region_errors_match_hand_sums_and_add_up_to_the_whole() -> None:
    batch = _batch()
    pred = batch.depth * 1.1  # 10 % too far everywhere ...
    pred[:, 1:3, 0:2] = batch.depth[:, 1:3, 0:2] * 2.0  # ... and twice too far on the object
    ev = RegionDepthEvaluator()
    ev.update(pred[:, None], batch)
    out = ev.compute()
    scored = 2 * 24 - 1  # one pixel without a measurement
    assert out["depth_objects/abs_rel"] == pytest.approx(1.0)
    assert out["depth_road/abs_rel"] == pytest.approx(0.1)
    assert out["depth_rest/abs_rel"] == pytest.approx(0.1)
    assert out["depth_objects/delta1"] == 0.0 and out["depth_road/delta1"] == 1.0
    assert out["depth_objects/share"] == pytest.approx(8 / scored)
    assert out["depth_road/share"] == pytest.approx(14 / scored)
    assert out["depth_rest/share"] == pytest.approx((scored - 22) / scored)
    assert _weighted_abs_rel(out) == pytest.approx((8 * 1.0 + (scored - 8) * 0.1) / scored)
    # two shards merged give what one process scoring both gets
    twice, merged = RegionDepthEvaluator(), RegionDepthEvaluator()
    twice.update(pred, batch)
    twice.update(pred, batch)
    merged.merge(ev.state())
    merged.merge(ev.state())
    assert merged.compute() == pytest.approx(twice.compute())
    assert twice.compute() == pytest.approx(out)


def test_images_without_every_label_are_left_out() -> None:
    ev = RegionDepthEvaluator()
    batch = _batch(lane_labeled=False)
    ev.update(batch.depth, batch)
    assert all(math.isnan(v) for v in ev.compute().values())


def test_suite_adds_region_keys_after_the_spec_keys_only_when_asked() -> None:
    batch = _batch()
    outputs = HeadOutputs(
        torch.full((2, 1, 1), -20.0),
        torch.zeros(2, 1, 4),
        torch.full((2, 2, 4, 6), -20.0),
        batch.depth.log()[:, None].clamp(min=0.0),
    )
    points, strides = torch.tensor([[2.0, 2.0]]), torch.tensor([4.0])
    plain, split = MetricsSuite(), MetricsSuite(depth_regions=True)
    for suite in (plain, split):
        suite.update(outputs, batch, points, strides)
    assert list(plain.compute()) == EVAL_KEYS
    out = split.compute()
    assert list(out)[: len(EVAL_KEYS)] == EVAL_KEYS
    assert sum(out[f"depth_{r}/share"] for r in DEPTH_REGIONS) == pytest.approx(1.0)
    assert _weighted_abs_rel(out) == pytest.approx(out["depth/abs_rel"])


def test_eval_command_writes_region_keys(tmp_path: Path) -> None:
    import json

    weights = write_tiny_release(tmp_path / "tiny.safetensors")
    data = write_dataset(tmp_path / "d", 3, seed=1, size=TINY_RELEASE_SIZE)
    out = tmp_path / "m.json"
    cmd = [sys.executable, "-m", "perception.cli", "eval", "--weights", str(weights),
           "--data", str(data), "--workers", "0", "--device", "cpu", "--depth-regions",
           "--json", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert "depth_objects/abs_rel" in result.stdout
    assert sum(metrics[f"depth_{r}/share"] for r in DEPTH_REGIONS) == pytest.approx(1.0)
    assert _weighted_abs_rel(metrics) == pytest.approx(metrics["depth/abs_rel"], rel=1e-9)
