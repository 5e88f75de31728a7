"""``feature_figure``: the strongest backbone maps of a low, middle and high stage."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_tiny_release
from PIL import Image

from perception.analysis.features import feature_figure
from perception.checkpoints import load_model
from perception.data.transforms import letterbox_image
from perception.errors import PerceptionError

TOP_K = 3


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return write_tiny_release(tmp_path / "r.safetensors")


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """A 100x200 image (another aspect than the 64x96 network: letterboxed)."""
    image = np.zeros((100, 200, 3), np.uint8)
    image[:50] = (90, 140, 220)  # sky
    image[50:] = (70, 70, 70)  # road
    image[60:90, 30:80] = (200, 30, 30)  # a red box
    image[:, 98:102] = 255  # a white stripe
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    return path


def expected_maps(weights: Path, image_path: Path) -> dict[int, tuple[list[int], np.ndarray]]:
    """Independently: letterbox, normalise by hand, run the backbone, rank channel means.

    ``{stage: (top channels, [TOP_K, 64, 96] upsampled maps)}`` for stages 1, 2, 4."""
    model = load_model(weights).model
    canvas, _ = letterbox_image(np.asarray(Image.open(image_path).convert("RGB")), 64, 96)
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        maps = model.backbone((x - model.mean) / model.std)
    out = {}
    for stage in (1, 2, 4):
        fmap = maps[stage - 1][0]  # [C, h, w]
        order = np.argsort(-fmap.mean(dim=(1, 2)).numpy(), kind="stable")[:TOP_K].tolist()
        up = F.interpolate(fmap[None, order], size=(64, 96), mode="bilinear")[0].numpy()
        out[stage] = (order, up)
    return out


def test_figure_draws_the_top_mean_channels_of_each_stage(
    release: Path, scene: Path, tmp_path: Path, monkeypatch
) -> None:
    saved: list[matplotlib.figure.Figure] = []
    original = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    out = feature_figure(release, scene, tmp_path / "figs" / "f.png", top_k=TOP_K)
    assert out == tmp_path / "figs" / "f.png" and out.is_file()
    # 3 panels of 2 in at 100 dpi wide; 4 rows of (2 * 64 / 96 + 0.45) in tall
    assert Image.open(out).size == (600, 713)

    (fig,) = saved
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 1 + 3 * TOP_K  # the input, then 3 stages x top_k
    assert drawn[0].images[0].get_array().shape == (64, 96, 3)  # the letterboxed input
    expected = expected_maps(release, scene)
    strides = {1: 4, 2: 8, 4: 32}
    rows = [drawn[1 + i * TOP_K : 1 + (i + 1) * TOP_K] for i in range(3)]
    for stage, row in zip((1, 2, 4), rows, strict=True):
        channels, maps = expected[stage]
        for ax, channel, fmap in zip(row, channels, maps, strict=True):
            match = re.match(r"stage (\d) · stride (\d+)\nch (\d+)", ax.get_title())
            assert match, ax.get_title()
            assert tuple(int(v) for v in match.groups()) == (stage, strides[stage], channel)
            np.testing.assert_allclose(ax.images[0].get_array(), fmap, rtol=1e-4, atol=1e-5)
        tops = [ax.get_position().y1 for ax in row]
        assert max(tops) - min(tops) < 1e-6  # one row per stage
    heights = [row[0].get_position().y1 for row in rows]
    assert drawn[0].get_position().y1 > heights[0] > heights[1] > heights[2]  # input on top


def test_default_output_name_and_bad_inputs(
    release: Path, scene: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = feature_figure(str(release), str(scene), top_k=1)
    assert out == Path("scene_features.png") and (tmp_path / "scene_features.png").is_file()
    assert Image.open(out).size == (200, 713)
    with pytest.raises(PerceptionError, match=r"missing\.safetensors: weights file not found"):
        feature_figure(tmp_path / "missing.safetensors", scene)
    with pytest.raises(PerceptionError, match=r"nothing\.png: image file not found"):
        feature_figure(release, tmp_path / "nothing.png")
    with pytest.raises(PerceptionError, match="top_k"):
        feature_figure(release, scene, top_k=0)


def test_features_command(release: Path, scene: Path, tmp_path: Path, capsys) -> None:
    from perception.cli import main

    out = tmp_path / "f.png"
    assert main(["features", "--weights", str(release), "--source", str(scene), "--out",
                 str(out), "--top-k", "2"]) == 0  # fmt: skip
    assert f"features: {out}" in capsys.readouterr().out
    assert Image.open(out).size[0] > 0
    assert main(["features", "--weights", str(tmp_path / "nope.safetensors"), "--source",
                 str(scene)]) == 2  # fmt: skip
    assert capsys.readouterr().err.count("\n") == 1
