"""``perception eval``: the SPEC metrics of a model on a v1 dataset, as a table and JSON.

Runs the model at network resolution on letterboxed images (no augmentation) and scores
with ``MetricsSuite`` over the whole split (METRICS.md). Plain PyTorch: no Lightning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from perception.checkpoints import load_model
from perception.data.collate import collate
from perception.data.datasets import V1Dataset
from perception.data.transforms import SampleTransform
from perception.errors import PerceptionError
from perception.structures import HeadOutputs
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
    """Metrics of ``weights`` (``.safetensors``, ``.ckpt`` or an exported ``.onnx``, whose
    raw outputs are scored the same way) on the dataset at ``data`` (first ``limit``)."""
    dev = pick_device(device)
    if Path(weights).suffix == ".onnx":
        run, image_size, class_names, points = _onnx_runner(weights)
        dev = torch.device("cpu")
    else:
        loaded = load_model(weights, dev)
        run, image_size = loaded.model, loaded.meta.image_size
        class_names, points = loaded.meta.class_names, loaded.model.points(image_size, dev)
    dataset = V1Dataset(data, class_names, transform=SampleTransform(image_size))
    if limit is not None:
        dataset.records = dataset.records[:limit]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=partial(collate, image_size=image_size),
    )
    suite = MetricsSuite()
    for batch in tqdm(loader, desc="eval", unit="batch", disable=None):
        batch = batch.to(dev)
        if len(batch) == 0:
            continue
        suite.update(run(batch.images.float() / 255.0), batch, *points)
    return suite.compute()


def _onnx_runner(path: str | os.PathLike) -> tuple[Callable, tuple[int, int], list[str], tuple]:
    """An exported raw-output ``.onnx`` as ``images -> HeadOutputs`` (one image at a time
    unless it has a dynamic batch), with its input size, classes and detection points."""
    from perception.export.onnx import INPUT_NAME, RAW_OUTPUTS, cpu_session, read_metadata
    from perception.ops.points import dense_points, level_sizes

    meta = read_metadata(path)
    if meta.get("nms") or "image_size" not in meta:
        raise PerceptionError(f"{path}: eval needs a perception export without --nms")
    session, size = cpu_session(path), tuple(meta["image_size"])

    def run(images: torch.Tensor) -> HeadOutputs:
        chunks = [images] if meta.get("dynamic_batch") else list(images.split(1))
        outs = [session.run(list(RAW_OUTPUTS), {INPUT_NAME: c.numpy()}) for c in chunks]
        return HeadOutputs(*(torch.from_numpy(np.concatenate(o)) for o in zip(*outs, strict=True)))

    strides = list(meta["strides"])
    return run, size, list(meta["class_names"]), dense_points(level_sizes(size, strides), strides)


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
