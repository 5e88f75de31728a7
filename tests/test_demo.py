"""``perception demo``: fresh scenes, overlays, metrics; safe to rerun, never eats data."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import EVAL_KEYS, write_tiny_release

from perception.cli import main
from perception.demo import find_weights, run_demo


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_release(tmp_path_factory.mktemp("w") / "tiny.safetensors")


def test_demo_writes_overlays_sheet_and_spec_metrics(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "demo"
    mine = tmp_path / "mine"
    mine.mkdir()
    cv2.imwrite(str(mine / "a.png"), np.full((70, 110, 3), 90, np.uint8))
    args = ["demo", "--weights", str(weights), "--out", str(out), "--num", "3", "--size", "64x96"]
    assert main([*args, "--source", str(mine), "--hfov", "70"]) == 0
    printed = capsys.readouterr().out
    assert "on 3 held-out synthetic scenes" in printed and "depth/abs_rel" in printed
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [
        "000000.jpg",
        "000001.jpg",
        "000002.jpg",
    ]
    sheet = cv2.imread(str(out / "demo.jpg"))
    # rows of ground truth | prediction | true depth | predicted depth | colour scale,
    # under a strip of column titles
    assert sheet.shape == (24 + 3 * 64, 4 * 96 + 70, 3)
    assert (sheet[:24] > 200).mean() > 0.8  # the title strip is white with dark text
    assert list(json.loads((out / "metrics.json").read_text())) == EVAL_KEYS
    assert cv2.imread(str(out / "source" / "a.jpg")).shape == (70, 110, 3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenes"] == 3 and summary["source_images"] == 1
    # a rerun replaces the previous demo (same scenes: the held-out seed is fixed)
    before = (out / "overlays" / "000000.jpg").read_bytes()
    assert main(args) == 0
    assert (out / "overlays" / "000000.jpg").read_bytes() == before
    assert not (out / "source").exists()


def test_demo_refuses_a_folder_that_is_not_a_previous_demo(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    keep = tmp_path / "notes.txt"
    keep.write_text("my data")
    assert main(["demo", "--weights", str(weights), "--out", str(tmp_path), "--num", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not empty and not a previous demo" in err and len(err.splitlines()) == 1
    assert keep.read_text() == "my data" and sorted(tmp_path.iterdir()) == [keep]


def test_missing_weights_fail_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="weights file not found"):
        run_demo(tmp_path / "out", weights=tmp_path / "none.safetensors", num=1)
    assert not (tmp_path / "out").exists()
    assert find_weights(tmp_path / "x.safetensors") == tmp_path / "x.safetensors"
