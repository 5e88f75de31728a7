"""What the backbone sees: the strongest feature maps of a low, a middle and a high stage.

``feature_figure(weights, image)`` runs released weights (or a checkpoint) on one image
and draws, under the network input, one row per stage of its ``top_k`` channels with the
highest mean activation, upsampled to the input size. Lower stages respond to edges and
colour blobs at fine resolution, higher ones to larger object-sized regions at coarse
resolution; a higher stage that looks like noise after training points at a backbone that
did not learn (or weights that did not load).

Stages are numbered 1-4 like the backbone's 4 feature maps (strides 4, 8, 16, 32; for
resnet18 ``layer1``..``layer4``; ``training.gradients`` calls the stem stage 0). Shown:
stage 1 (lower), stage 2 (middle: stride 8, the finest map the detection head reads and
still large enough to see shapes in) and stage 4 (higher).

The image goes through the ``Predictor``'s own path: ``inputs.to_images`` (paths, arrays,
PIL, tensors), ``letterbox_image`` to the weights' input size, and the model's own forward
(the backbone outputs are captured with a hook), so the maps are the ones the heads get.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from perception.checkpoints import LoadedModel, load_model
from perception.data.transforms import letterbox_image
from perception.errors import PerceptionError
from perception.inference.inputs import to_images

STAGES: tuple[int, ...] = (1, 2, 4)  # lower, middle, higher (1-based, of the 4 maps)
PANEL_INCHES = 2.0  # width of one map in the figure
TITLE_INCHES = 0.45  # room for a panel's two-line title
DPI = 100


@dataclass
class StageMaps:
    """The chosen channels of one backbone stage for one image.

    Attributes:
        stage: 1-4, lower to higher. stride: input pixels per map pixel.
        channels: the ``top_k`` channel indices, highest mean activation first.
        means: their mean activation over the map.
        maps: ``[top_k, H, W]`` float32, those channels bilinearly upsampled to the input.
    """

    stage: int
    stride: int
    channels: list[int]
    means: list[float]
    maps: np.ndarray


@torch.no_grad()
def backbone_maps(loaded: LoadedModel, source: Any) -> tuple[np.ndarray, list[torch.Tensor]]:
    """``(canvas, maps)``: the letterboxed ``[H, W, 3]`` uint8 network input and the 4
    backbone maps ``[1, C_i, H / s_i, W / s_i]`` the model computes for it."""
    model = loaded.model
    image = to_images(source, min_size=model.size_divisor)[0]  # [H0, W0, 3] uint8 RGB
    h, w = loaded.meta.image_size
    canvas, _ = letterbox_image(image, h, w)  # [H, W, 3] uint8
    device = next(model.parameters()).device
    batch = torch.from_numpy(canvas).permute(2, 0, 1)[None].float().div(255.0).to(device)
    captured: list[torch.Tensor] = []
    hook = model.backbone.register_forward_hook(lambda _m, _i, out: captured.extend(out))
    try:
        model(batch)  # [1, 3, H, W]; normalisation as the model does it for the heads
    finally:
        hook.remove()
    return canvas, captured


def top_channels(fmap: torch.Tensor, top_k: int) -> tuple[list[int], list[float]]:
    """Indices and values of the ``top_k`` largest per-channel means of ``[1, C, h, w]``."""
    means = fmap[0].float().mean(dim=(1, 2))  # [C]
    values, indices = means.topk(top_k)  # sorted, largest first
    return indices.tolist(), values.tolist()


def stage_maps(
    loaded: LoadedModel, source: Any, top_k: int = 4
) -> tuple[np.ndarray, list[StageMaps]]:
    """The network input and the ``top_k`` strongest channels of each stage in ``STAGES``."""
    canvas, maps = backbone_maps(loaded, source)
    strides = loaded.model.backbone.strides
    smallest = min(maps[s - 1].shape[1] for s in STAGES)
    if not 1 <= top_k <= smallest:
        raise PerceptionError(f"top_k must be in [1, {smallest}] (channels), got {top_k}")
    out = []
    for stage in STAGES:
        fmap = maps[stage - 1]  # [1, C, h, w]
        channels, means = top_channels(fmap, top_k)
        up = F.interpolate(
            fmap[:, channels].float(), size=canvas.shape[:2], mode="bilinear", align_corners=False
        )  # [1, top_k, H, W]
        out.append(StageMaps(stage, strides[stage - 1], channels, means, up[0].cpu().numpy()))
    return canvas, out


def feature_figure(
    weights: str | os.PathLike,
    source: str | os.PathLike,
    out: str | os.PathLike | None = None,
    top_k: int = 4,
    device: str = "cpu",
) -> Path:
    """Draw the input and the ``top_k`` strongest maps of stages ``STAGES``; return the PNG.

    Args:
        weights: a ``.safetensors`` release or a Lightning ``.ckpt``.
        source: the image file.
        out: the PNG to write; default ``<source stem>_features.png`` in the current folder.
        top_k: channels per stage. device: where the model runs.

    Layout: ``1 + len(STAGES)`` rows by ``top_k`` columns; the network input (letterboxed)
    top left, then one row per stage. Each panel is ``PANEL_INCHES`` wide, as tall as the
    input's aspect needs plus ``TITLE_INCHES`` for its title, at ``DPI``.
    """
    if not Path(source).is_file():
        raise PerceptionError(f"{source}: image file not found")
    loaded = load_model(weights, device)
    canvas, stages = stage_maps(loaded, str(source), top_k)
    out = Path(out) if out is not None else Path(f"{Path(source).stem}_features.png")
    _draw(canvas, stages, top_k, f"{Path(weights).name} ({loaded.meta.config['backbone']})", out)
    return out


def _draw(canvas: np.ndarray, stages: list[StageMaps], top_k: int, name: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = canvas.shape[:2]
    panel_h = PANEL_INCHES * h / w
    rows = 1 + len(stages)
    fig, axes = plt.subplots(
        rows,
        top_k,
        figsize=(PANEL_INCHES * top_k, (panel_h + TITLE_INCHES) * rows),
        dpi=DPI,
        squeeze=False,
        gridspec_kw={"hspace": TITLE_INCHES / panel_h, "wspace": 0.05},
    )
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(canvas)
    axes[0, 0].set_title(f"input {h}x{w}\n{name}", fontsize=7)
    for row, stage in enumerate(stages, start=1):
        for col, (channel, mean) in enumerate(zip(stage.channels, stage.means, strict=True)):
            ax = axes[row, col]
            ax.imshow(stage.maps[col], cmap="inferno")  # own colour range per map
            ax.set_title(
                f"stage {stage.stage} · stride {stage.stride}\nch {channel} (mean {mean:.2f})",
                fontsize=7,
            )
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=1 - TITLE_INCHES / fig.get_figheight()
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
