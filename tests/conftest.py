"""Shared fixtures: tiny v1 datasets written from numpy arrays inside the test."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from perception.data.collate import collate
from perception.data.datamodule import PerceptionDataModule
from perception.data.formats import v1
from perception.data.synthetic.scene import CLASSES as ALL_CLASSES
from perception.data.synthetic.writer import write_dataset
from perception.structures import Camera

# CI has 2 cores and pytest-xdist runs 2 workers: more threads per worker only thrash.
torch.set_num_threads(1)

CLASSES = ["car", "pedestrian"]
# The metric keys of `perception eval --json`, in SPEC.md order (the contract under test).
SPEC_KEYS = [
    "det/mAP50", "det/mAP50_95", "det/recall", "lane/iou", "lane/acc", "lane/acc_balanced",
    "drivable/miou", "depth/abs_rel", "depth/sq_rel", "depth/rmse", "depth/rmse_log",
    "depth/delta1", "depth/delta2", "depth/delta3", "num_images",
]  # fmt: skip
# `perception eval` adds COCO mAP per object size right after det/recall (beside the SPEC keys)
AREA_KEYS = ["det/mAP_small", "det/mAP_medium", "det/mAP_large"]
EVAL_KEYS = SPEC_KEYS[:3] + AREA_KEYS + SPEC_KEYS[3:]


def write_tiny_dataset(
    root: Path, num: int = 4, size: tuple[int, int] = (64, 96), seed: int = 0
) -> list[v1.Record]:
    """A valid v1 dataset: a bright rectangle per object, a lane stripe, a depth ramp.

    Sample ``i`` has ``i % 3`` objects; every task is labeled. Returns the records.
    """
    h, w = size
    rng = np.random.default_rng(seed)
    for sub in ("images", "lane", "drivable", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(num):
        image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        boxes, labels = [], []
        for k in range(i % 3):
            x1, y1 = 8 + 30 * k, 10 + 5 * k
            x2, y2 = x1 + 20, y1 + 16
            image[y1:y2, x1:x2] = (200, 50 + 100 * k, 40)
            boxes.append([x1, y1, x2, y2])
            labels.append(CLASSES[k % 2])
        lane = np.zeros((h, w), np.uint8)
        lane[:, w // 2 - 1 : w // 2 + 1] = 1
        drivable = np.zeros((h, w), np.uint8)
        drivable[h // 2 :] = 1
        depth = np.tile(np.linspace(80.0, 2.0, h, dtype=np.float32)[:, None], (1, w))
        depth[: h // 4] = 0.0  # "sky": no measurement
        sid = f"{i:06d}"
        v1.write_image(root / f"images/{sid}.png", image)
        v1.write_png(root / f"lane/{sid}.png", lane)
        v1.write_png(root / f"drivable/{sid}.png", drivable)
        v1.write_png(root / f"depth/{sid}.png", v1.encode_depth(depth))
        records.append(
            v1.Record(
                id=sid,
                image=f"images/{sid}.png",
                width=w,
                height=h,
                boxes=boxes,
                labels=labels,
                lane=f"lane/{sid}.png",
                drivable=f"drivable/{sid}.png",
                depth=f"depth/{sid}.png",
                camera=Camera(80.0, 80.0, w / 2, h / 2),
            )
        )
    write_manifest(root, records)
    v1.write_info(root, v1.DatasetInfo(name="tiny", classes=list(CLASSES)))
    return records


def write_manifest(root: Path, records: list[v1.Record]) -> None:
    (root / v1.MANIFEST_FILE).write_text("".join(r.to_json() + "\n" for r in records))


TINY_RELEASE_SIZE = (64, 96)
TINY_RELEASE_CLASSES = ["car", "truck", "bus", "pedestrian", "cyclist"]


def write_tiny_release(path: Path) -> Path:
    """A tiny untrained resnet18 ``.safetensors`` release at 64x96 whose class logits are
    spread out, so it yields a few dozen boxes above 0.3 on any image."""
    import dataclasses

    from perception.checkpoints import ModelMeta, save_release
    from perception.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", num_classes=5, neck_width=16, head_width=16)
    model = build_model(cfg).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.detection.cls_pred.weight, std=150.0)
        model.detection.cls_pred.bias.fill_(-3.0)
        model.detection.box_pred.weight.mul_(30.0)
    meta = ModelMeta(dataclasses.asdict(cfg), TINY_RELEASE_CLASSES, TINY_RELEASE_SIZE)
    return save_release(model, meta, path)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``tiny_dataset(num=4, size=(64, 96))`` -> root of a fresh valid dataset."""

    def make(name: str = "ds", **kwargs) -> Path:
        root = tmp_path / name
        write_tiny_dataset(root, **kwargs)
        return root

    return make


def tiny_model_section(**overrides: object) -> dict:
    """The ``model:`` section of a training config small enough for a test to train in
    seconds (resnet18 with 16-wide neck and heads, a fast EMA, no overlays)."""
    return {
        "net": {"backbone": "resnet18", "neck_width": 16, "head_width": 16},
        "ema_decay": 0.9,
        "overlay_images": 0,
        "warmup_steps": 2,
        **overrides,
    }


def write_partial_sets(
    root: Path, size: tuple[int, int], road: int = 2, depth: int = 2
) -> tuple[Path, Path]:
    """A synthetic boxes-lanes-drivable set of ``road`` images and a disjoint boxes-depth
    set of ``depth`` images under ``root``: the two halves of a partially labeled mix."""
    a = write_dataset(root / "a", num=road, seed=1, size=size, tasks=["det", "lane", "drivable"])
    b = write_dataset(root / "b", num=depth, seed=2, size=size, tasks=["det", "depth"])
    return a, b


def unaugmented_batch(roots: tuple[Path, ...], size: tuple[int, int]):
    """One batch holding every training sample of ``roots`` in order, unaugmented."""
    data = PerceptionDataModule([str(r) for r in roots], list(ALL_CLASSES), image_size=size,
                                batch_size=4, num_workers=0, augment=False)  # fmt: skip
    data.setup("fit")
    return collate([data.train_set[i] for i in range(len(data.train_set))])
