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
from perception.errors import PerceptionError
from perception.evaluation.metrics import MetricsSuite
from perception.inference.backends import OnnxBackend, TorchBackend, check_precision


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
    precision: str = "fp32",
    image_size: tuple[int, int] | None = None,
    depth_regions: bool = False,
) -> dict[str, float]:
    """Metrics of ``weights`` (``.safetensors``, ``.ckpt`` or an exported ``.onnx``, whose
    raw outputs are scored the same way) on the dataset at ``data`` (first ``limit``).

    ``precision`` ``fp16``/``bf16`` scores torch weights as the ``Predictor`` runs them in
    that precision (BatchNorm folded, weights and images cast), so a faster precision is
    never read without its cost; an ``.onnx`` file carries its own precision.
    ``image_size``: the network input ``(H, W)`` for torch weights (default their own),
    to score them at the size they are timed or deployed at; an ``.onnx`` file has one.
    ``depth_regions``: also depth errors on the road, inside labeled boxes and elsewhere
    (``perception.evaluation.regions``).
    """
    check_precision(precision)
    dev = pick_device(device)
    if Path(weights).suffix == ".onnx":  # the same graph runner as Predictor's
        if precision != "fp32":
            raise PerceptionError(f"{weights}: an .onnx file runs in its export's precision")
        backend = OnnxBackend(weights)
        if image_size is not None and tuple(image_size) != backend.image_size:
            raise PerceptionError(
                f"{weights}: exported at {backend.image_size}, not {tuple(image_size)}; re-export"
            )
        run, image_size, class_names = backend.head_outputs, backend.image_size, backend.class_names
        points, dev = (backend.points, backend.strides), torch.device("cpu")
        config = backend.model_config
    else:
        loaded = load_model(weights, dev)
        image_size, config = tuple(image_size or loaded.meta.image_size), loaded.meta.config
        loaded.model.check_image_size(image_size)
        class_names, points = loaded.meta.class_names, loaded.model.points(image_size, dev)
        if precision != "fp32":  # folded and cast, as the Predictor runs it
            run = TorchBackend(loaded, str(dev), precision, image_size).head_outputs
        else:
            run = loaded.model
    transform = SampleTransform(image_size, default_hfov=config["default_hfov"])
    dataset = V1Dataset(data, class_names, transform=transform)
    if limit is not None:
        dataset.records = dataset.records[:limit]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=partial(collate, image_size=image_size),
    )
    suite = MetricsSuite(canonical_focal=config["canonical_focal"], depth_regions=depth_regions)
    for batch in tqdm(loader, desc="eval", unit="batch", disable=None):
        batch = batch.to(dev)
        if len(batch) == 0:
            continue
        suite.update(run(batch.images.float() / 255.0), batch, *points)
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
