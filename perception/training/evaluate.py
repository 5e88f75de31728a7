"""``perception eval``: the SPEC metrics of a model on a v1 dataset, as a table and JSON.

Runs the model at network resolution on letterboxed images (no augmentation) and scores
with ``MetricsSuite`` over the whole split (METRICS.md). Plain PyTorch: no Lightning.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from perception.checkpoints import load_model
from perception.data.collate import collate
from perception.data.datasets import V1Dataset
from perception.data.transforms import SampleTransform
from perception.training.metrics import MetricsSuite


def pick_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@torch.no_grad()
def evaluate(
    weights: str | os.PathLike,
    data: str | os.PathLike,
    batch_size: int = 8,
    workers: int = 2,
    device: str | None = None,
    limit: int | None = None,
) -> dict[str, float]:
    """Metrics of the model in ``weights`` on the dataset at ``data`` (first ``limit``)."""
    dev = pick_device(device)
    loaded = load_model(weights, dev)
    model, meta = loaded.model, loaded.meta
    dataset = V1Dataset(data, meta.class_names, transform=SampleTransform(meta.image_size))
    if limit is not None:
        dataset.records = dataset.records[:limit]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=partial(collate, image_size=meta.image_size),
    )
    points, point_strides = model.points(meta.image_size, dev)
    suite = MetricsSuite()
    for batch in tqdm(loader, desc="eval", unit="batch", disable=None):
        batch = batch.to(dev)
        if len(batch) == 0:
            continue
        outputs = model(batch.images.float() / 255.0)
        suite.update(outputs, batch, points, point_strides)
    return suite.compute()


def format_table(metrics: dict[str, float]) -> str:
    """Aligned ``key  value`` lines, in the order given (MetricsSuite uses SPEC order)."""
    keys = list(metrics)
    width = max(len(k) for k in keys)
    return "\n".join(
        f"{k:<{width}}  {metrics[k]:.4f}"
        if k != "num_images"
        else f"{k:<{width}}  {int(metrics[k])}"
        for k in keys
    )


def write_json(metrics: dict[str, float], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (None if v != v else v) for k, v in metrics.items()}  # NaN -> null
    path.write_text(json.dumps(clean, indent=2) + "\n")
