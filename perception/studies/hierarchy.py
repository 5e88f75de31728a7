"""Does the backbone learn a hierarchy? Linear probes on each of its 4 stages.

Two per-pixel targets, each at the stage's own resolution (the mean over the stride x
stride cell of a full-resolution map):
- *edge* (low level): Sobel gradient magnitude of the grey image (replicate padding, so
  image borders are no edges); label = the cell is edgier than the median cell of the
  probe's training images (balanced by construction).
- *vehicle* (high level): the renderer's per-pixel object ids give true car/truck/bus
  masks (occlusion resolved, not box interiors); label = vehicle covers >= half the
  cell, background = no vehicle pixel at all; cells in between are left out.

Features of ``PIXELS_PER_IMAGE`` random cells per image (all cells when fewer) from the
trained backbone and from a randomly initialised copy (the control: what training added),
both frozen in eval mode. Probe = logistic regression (``probes.py``), fitted on
``TRAIN_SHARE`` of the images and scored by ROC AUC on the rest; a seed sets the image
split, the random copy's init and the probe's init. Scenes come from ``DATA_SEED``, which
no release was trained on, at the model's input size. The code only measures: nothing
here expects the edge score to peak low and the vehicle score high.

Cost at ``budget=1.0`` (400 scenes at the release's 288x480, 2 seeds, 3 backbone passes
per image, 32 probe fits): under 3 min, measured end to end on a 2-core CPU.
``budget`` scales the number of scenes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from perception.checkpoints import load_model
from perception.models import ModelConfig, build_model
from perception.studies.plots import pyplot, save
from perception.studies.probes import probe_auc
from perception.studies.report import Result, cell, mean_std
from perception.studies.scenes import render_scenes

NAME = "hierarchy"
WEIGHTS = Path(__file__).resolve().parents[2] / "weights/perception-r18-synth-288x480.safetensors"
NUM_IMAGES = 400
PIXELS_PER_IMAGE = 256
TRAIN_SHARE = 0.7
DATA_SEED = 3031  # the release was trained on seeds 1-3
TARGETS = ("edge", "vehicle")


def edge_map(images: Tensor) -> Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> Sobel gradient magnitude of the grey image ``[N, H, W]``.

    Written as differences, not a convolution, so a flat region is exactly 0.
    """
    grey = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    p = F.pad(grey, (1, 1, 1, 1), mode="replicate")[:, 0]  # [N, H + 2, W + 2]
    dx = p[:, :, 2:] - p[:, :, :-2]  # [N, H + 2, W]
    dy = p[:, 2:] - p[:, :-2]  # [N, H, W + 2]
    gx = dx[:, :-2] + 2 * dx[:, 1:-1] + dx[:, 2:]  # [N, H, W]
    gy = dy[:, :, :-2] + 2 * dy[:, :, 1:-1] + dy[:, :, 2:]
    return (gx.square() + gy.square()).sqrt() / 8.0


def stage_targets(images: Tensor, vehicle: Tensor, strides: Sequence[int]) -> list[dict]:
    """Per stage, ``edge`` and ``vehicle`` (cell fraction) maps ``[N, H/s, W/s]``."""
    edges = edge_map(images)[:, None]  # [N, 1, H, W]
    cover = vehicle.float()[:, None]
    return [
        {"edge": F.avg_pool2d(edges, s)[:, 0], "vehicle": F.avg_pool2d(cover, s)[:, 0]}
        for s in strides
    ]


def sample_positions(num: int, cells: Sequence[int], per_image: int, seed: int) -> list[Tensor]:
    """Per stage with ``cells[i]`` cells per map: flat cell indices ``[num, P_i]``."""
    rng = np.random.default_rng(seed)
    out = []
    for n in cells:
        if n <= per_image:
            out.append(torch.arange(n).expand(num, n))
        else:
            picks = np.stack([rng.choice(n, per_image, replace=False) for _ in range(num)])
            out.append(torch.from_numpy(picks))
    return out


def gather(maps: Tensor, positions: Tensor) -> Tensor:
    """``maps [N, C, h, w]`` (or ``[N, h, w]``) at ``positions [N, P]`` -> ``[N, P, C]``
    (or ``[N, P]``)."""
    flat = maps.flatten(-2) if maps.dim() == 4 else maps.flatten(-2)[:, None]  # [N, C, hw]
    idx = positions[:, None, :].expand(-1, flat.shape[1], -1)  # [N, C, P]
    picked = flat.gather(2, idx).transpose(1, 2)  # [N, P, C]
    return picked if maps.dim() == 4 else picked[..., 0]


@torch.no_grad()
def extract(model, images: Tensor, positions: list[Tensor], batch: int = 8) -> list[Tensor]:
    """Frozen backbone features of ``model`` (a ``MultiTaskModel``) at the sampled cells:
    per stage ``[N, P_i, C_i]``, for ``images [N, 3, H, W]`` in [0, 1]. Only the first
    ``len(positions)`` stages are kept."""
    model.eval()
    chunks: list[list[Tensor]] = [[] for _ in positions]
    for start in range(0, len(images), batch):
        x = (images[start : start + batch] - model.mean) / model.std
        for i, fmap in enumerate(model.backbone(x)[: len(positions)]):
            chunks[i].append(gather(fmap, positions[i][start : start + batch]))
    return [torch.cat(c) for c in chunks]


def labels(target: str, values: Tensor, train: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean labels and a keep-mask for ``values [N, P]``; ``train [N]`` marks the
    images whose cells set the edge threshold."""
    if target == "edge":
        return values > values[train].median(), torch.ones_like(values, dtype=torch.bool)
    return values >= 0.5, (values >= 0.5) | (values == 0)


def score(features: list[Tensor], targets: list[dict], seed: int) -> dict[str, list[float]]:
    """Held-out probe AUC per target and stage, on a seeded image split."""
    num = len(features[0])
    order = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    train = torch.zeros(num, dtype=torch.bool)
    train[order[: max(1, round(TRAIN_SHARE * num))]] = True
    out: dict[str, list[float]] = {t: [] for t in TARGETS}
    for feats, stage in zip(features, targets, strict=True):
        for target in TARGETS:
            y, keep = labels(target, stage[target], train)
            tr, te = keep & train[:, None], keep & ~train[:, None]  # [N, P]
            out[target].append(probe_auc(feats[tr], y[tr], feats[te], y[te], seed))
    return out


def per_stage(scores: dict, kind: str, target: str) -> list[list[float]]:
    """``raw["scores"]`` -> per stage, the AUC of each seed."""
    return [
        list(values) for values in zip(*(s[target] for s in scores[kind].values()), strict=True)
    ]


def plot(scores: dict, path: Path) -> Path:
    """Edge and vehicle AUC against stage, trained vs random backbone (mean ± std)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, target in zip(axes, TARGETS, strict=True):
        for kind, style in (("trained", "-o"), ("random", "--s")):
            stats = np.array([mean_std(v) for v in per_stage(scores, kind, target)])  # [4, 2]
            stages = np.arange(1, len(stats) + 1)
            ax.errorbar(stages, stats[:, 0], stats[:, 1], fmt=style, capsize=3, label=kind)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
        ax.set(title=f"{target} probe", xlabel="backbone stage", xticks=stages)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="held-out ROC AUC")
    axes[1].legend(title="backbone", fontsize=8)
    return save(fig, path)


def run(
    out: Path,
    budget: float = 1.0,
    seeds: Sequence[int] = (0, 1),
    *,
    weights: str | Path | None = None,
    size: tuple[int, int] | None = None,
) -> Result:
    """Probe the release ``weights`` (default ``WEIGHTS``) and a random copy at every stage
    on the same scenes, cells and splits (``size`` defaults to the model's input size);
    draws ``hierarchy.png``."""
    out, weights = Path(out), Path(weights or WEIGHTS)
    loaded = load_model(weights)
    size = tuple(size or loaded.meta.image_size)
    num = max(8, round(NUM_IMAGES * budget))
    scenes = render_scenes(out, num, size, DATA_SEED)
    images = torch.from_numpy(scenes["image"]).permute(0, 3, 1, 2).float() / 255.0
    strides, channels = loaded.model.backbone.strides, loaded.model.backbone.out_channels
    cells = [(size[0] // s) * (size[1] // s) for s in strides]
    positions = sample_positions(num, cells, PIXELS_PER_IMAGE, DATA_SEED)
    maps = stage_targets(images, torch.from_numpy(scenes["vehicle"]), strides)
    targets = [
        {key: gather(value, pos) for key, value in stage.items()}  # [N, P_i] each
        for stage, pos in zip(maps, positions, strict=True)
    ]
    trained = extract(loaded.model, images, positions)
    config = ModelConfig(**{**loaded.meta.config, "pretrained": False})
    scores: dict[str, dict[str, dict]] = {"trained": {}, "random": {}}
    for seed in seeds:
        scores["trained"][str(seed)] = score(trained, targets, seed)
        torch.manual_seed(seed)
        random = extract(build_model(config), images, positions)
        scores["random"][str(seed)] = score(random, targets, seed)
    columns = ["stage", "stride", "channels"]
    columns += [f"{t}_{k}" for t in TARGETS for k in ("trained", "random")]
    rows = [
        {"stage": i + 1, "stride": stride, "channels": width}
        for i, (stride, width) in enumerate(zip(strides, channels, strict=True))
    ]
    for t in TARGETS:
        for k in ("trained", "random"):
            for row, values in zip(rows, per_stage(scores, k, t), strict=True):
                row[f"{t}_{k}"] = cell(values)
    plot(scores, out / f"{NAME}.png")
    everyone = torch.ones(num, dtype=torch.bool)
    vehicle_cells = [labels("vehicle", t["vehicle"], everyone) for t in targets]
    counts = {
        "vehicle_positive": [int((y & keep).sum()) for y, keep in vehicle_cells],
        "vehicle_negative": [int((~y & keep).sum()) for y, keep in vehicle_cells],
    }
    setup = {
        "weights": weights.name,
        "backbone": loaded.meta.config["backbone"],
        "image_size_hw": list(size),
        "images": num,
        "data_seed": DATA_SEED,
        "cells_per_image": [min(c, PIXELS_PER_IMAGE) for c in cells],
        "train_share": TRAIN_SHARE,
        "seeds": list(seeds),
        "score": "held-out ROC AUC of a class-balanced logistic-regression probe (0.5 = chance)",
        "edge": "cell mean Sobel magnitude above the median training cell",
        "vehicle": "car/truck/bus mask covers >= 1/2 of the cell vs none of it (mixed left out)",
        "random": "same architecture, timm default init (seeded), eval mode",
    }
    raw = {"scores": scores, "cells": counts, "strides": strides, "channels": channels}
    return Result(NAME, columns, rows, f"{NAME}.png", setup, raw)
