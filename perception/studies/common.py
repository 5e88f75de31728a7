"""What the training studies share: one cached synthetic data set, one way to train and
score an arm, and the mean ± std cells of their tables.

Every arm of every study trains on the same rendered images, for the same number of
steps, from the same seeds, and is scored by the same ``MetricsSuite`` as ``perception
eval``; only what the study varies differs. Sizes are module constants (tests shrink
them); ``budget`` multiplies the steps and the number of images, so a GPU user can run
the same study longer.

Time at budget 1.0: one training step (batch 8, 96x160, bf16 autocast) costs ~0.25 CPU
seconds for the plain 3.6 M-parameter backbones and ~0.43 s for resnet18, Lightning's
per-step logging included; a run adds ~0.5 s to build and ~2.5 s to score 64 images.
Measured as single-thread CPU time (``time.process_time``) at budgets 0.1 and 0.2 (30 and
60 steps: the slope is the per-step cost) while another training run shared the two
cores, so it is what one idle core needs; torch's two threads on an idle 2-core CPU only
shorten it. The five training studies then need ~74 min together (see each docstring).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from perception.data.collate import collate
from perception.data.datasets import V1Dataset
from perception.data.formats import v1
from perception.data.synthetic.scene import CLASSES
from perception.data.synthetic.writer import write_dataset
from perception.data.transforms import SampleTransform
from perception.evaluation.metrics import MetricsSuite
from perception.structures import Sample
from perception.studies.report import cell
from perception.training.module import PerceptionModule
from perception.training.precision import default_precision

IMAGE_SIZE: tuple[int, int] = (96, 160)  # H, W: small enough for a 2-core CPU
TRAIN_IMAGES = 512  # x budget
VAL_IMAGES = 64  # x budget
BATCH_SIZE = 8
STEPS = 240  # x budget; every arm, every seed (sized for ~75 min of all five studies)
TRAIN_SEED, VAL_SEED = 101, 202  # of the renderer: disjoint scenes
# The model the studies vary from: resnet18 as released, narrow neck and heads to fit the
# CPU budget. EMA off: at a few hundred steps its ramped decay is ~0, i.e. the live weights.
NET: dict[str, Any] = {"backbone": "resnet18", "neck_width": 32, "head_width": 32}
LR = 3e-3  # configs/cpu_small.yaml
# The metrics the tables show (the JSON keeps every SPEC key); lower is better for abs_rel.
METRIC_KEYS: tuple[str, ...] = (
    "det/mAP50",
    "det/mAP50_95",
    "lane/iou",
    "drivable/miou",
    "depth/abs_rel",
    "depth/delta1",
)
CURVE_KEYS: tuple[str, ...] = ("loss", "det", "seg", "depth")  # total and unweighted tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyData:
    """The rendered train and val sets every arm uses."""

    train: Path
    val: Path
    image_size: tuple[int, int]
    batch_size: int

    def describe(self) -> dict[str, Any]:
        """For ``Result.setup``: where the images came from and how many."""
        return {
            "image_size": list(self.image_size),
            "batch_size": self.batch_size,
            "train": f"{_count(self.train)} synthetic images (renderer seed {TRAIN_SEED})",
            "val": f"{_count(self.val)} synthetic images (renderer seed {VAL_SEED})",
        }


def scaled(value: int, budget: float, minimum: int = 1) -> int:
    """``value * budget`` rounded, at least ``minimum``."""
    return max(minimum, round(value * budget))


def study_steps(budget: float) -> int:
    return scaled(STEPS, budget, minimum=2)


def prepare_data(out: Path, budget: float = 1.0) -> StudyData:
    """Render (once: later calls and other studies reuse ``out/data``) the train and val
    sets at the network size, so no resizing blurs the labels."""
    h, w = IMAGE_SIZE
    sets = []
    for split, count, seed, minimum in (
        ("train", TRAIN_IMAGES, TRAIN_SEED, BATCH_SIZE),
        ("val", VAL_IMAGES, VAL_SEED, 2),
    ):
        num = scaled(count, budget, minimum)
        root = Path(out) / "data" / f"{split}_{h}x{w}_n{num}_s{seed}"
        if not (root / v1.MANIFEST_FILE).exists():
            write_dataset(root, num=num, seed=seed, size=(h, w))
        sets.append(root)
    return StudyData(sets[0], sets[1], (h, w), BATCH_SIZE)


def _count(root: Path) -> int:
    return sum(1 for line in (root / v1.MANIFEST_FILE).read_text().splitlines() if line)


@cache
def _samples(root: str, image_size: tuple[int, int]) -> tuple[Sample, ...]:
    """Every sample of ``root`` decoded once per process: with augmentation off each epoch
    sees identical samples, and decoding them again would cost a fifth of a CPU step."""
    dataset = V1Dataset(root, list(CLASSES), transform=SampleTransform(image_size))
    return tuple(dataset[i] for i in range(len(dataset)))


class _InMemory(Dataset):
    """Cached samples, handed out as copies so nothing downstream can alter the cache."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return copy.deepcopy(self.samples[index])


def loader(root: Path, data: StudyData, *, shuffle: bool, seed: int = 0) -> DataLoader:
    """Batches of ``root`` (seeded order when shuffled, so each seed sees its own order)."""
    samples = _samples(str(root), data.image_size)
    return DataLoader(
        _InMemory(samples),
        batch_size=data.batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(samples) >= data.batch_size,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        collate_fn=partial(collate, image_size=data.image_size),
    )


def arm_kwargs(overrides: Mapping[str, Any], steps: int) -> dict[str, Any]:
    """``PerceptionModule`` arguments: the studies' defaults, then the arm's ``overrides``
    (``net`` and ``loss`` merged key by key)."""
    base: dict[str, Any] = {
        "class_names": list(CLASSES),
        "image_size": tuple(IMAGE_SIZE),
        "net": dict(NET),
        "lr": LR,
        "warmup_steps": max(1, steps // 10),
        "ema_decay": 0.0,
        "overlay_images": 0,
    }
    return merge(base, overrides)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` then ``overrides``, the ``net`` and ``loss`` dicts merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        nested = key in ("net", "loss") and isinstance(merged.get(key), Mapping)
        merged[key] = {**merged[key], **value} if nested else value
    return merged


def build_arm_model(overrides: Mapping[str, Any]) -> torch.nn.Module:
    """The network an arm trains (fresh weights), built the way training builds it."""
    return PerceptionModule(**arm_kwargs(overrides, steps=1)).model


class _Curve(L.Callback):
    """The total loss and the unweighted task losses of every step."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {k: [] for k in CURVE_KEYS}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        logged = trainer.callback_metrics
        for key in CURVE_KEYS:
            value = logged.get(f"train/{key}")
            self.values[key].append(float(value) if value is not None else math.nan)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: StudyData, canonical_focal: float) -> dict[str, float]:
    """Every SPEC metric of ``model`` on the val set, fp32, as ``perception eval`` scores."""
    device = next(model.parameters()).device
    model.eval()
    suite = MetricsSuite(canonical_focal=canonical_focal)
    points = None
    for batch in loader(data.val, data, shuffle=False):
        batch = batch.to(device)
        images = batch.images.float().div_(255.0).contiguous(memory_format=torch.channels_last)
        if points is None:
            points = model.points(images.shape[-2:], device)
        suite.update(model(images), batch, *points)
    return {k: float(v) for k, v in suite.compute().items()}


def train_arm(
    name: str,
    module_kwargs: Mapping[str, Any],
    data: StudyData,
    steps: int,
    seed: int,
    out: Path,
) -> dict[str, Any]:
    """Train one arm for ``steps`` steps from ``seed`` and score it on the val set.

    ``module_kwargs`` are the arm's ``PerceptionModule`` overrides (merged into the
    studies' defaults by ``arm_kwargs``). Returns ``{"seed", "metrics", "curve",
    "train_s", "eval_s"}`` and writes the same as ``out/runs/<name>/seed<seed>.json`` (a
    partial study leaves its finished runs behind).
    """
    L.seed_everything(seed, workers=True, verbose=False)
    module = PerceptionModule(**arm_kwargs(module_kwargs, steps))
    curve = _Curve()
    start = time.perf_counter()
    with _quiet():
        trainer = L.Trainer(
            accelerator="auto",
            devices=1,
            precision=default_precision(),
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[curve],
        )
        trainer.fit(module, train_dataloaders=loader(data.train, data, shuffle=True, seed=seed))
    train_s = time.perf_counter() - start
    model = module.eval_model.to("cuda" if torch.cuda.is_available() else "cpu")
    metrics = evaluate(model, data, module.canonical_focal)
    run = {
        "seed": int(seed),
        "metrics": metrics,
        "curve": curve.values,
        "train_s": train_s,
        "eval_s": time.perf_counter() - start - train_s,
    }
    path = Path(out) / "runs" / name / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, default=float) + "\n")
    log.info("%s seed %d: %.0f s, %s", name, seed, train_s, _headline(metrics))
    return run


def _headline(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in METRIC_KEYS if k in metrics)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's per-fit banner and the hints that do not apply here (no loader
    workers: the samples are in memory; no validation loop: ``evaluate`` scores after)."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for hint in ("does not have many workers", "no `val_dataloader`", "LeafSpec"):
                warnings.filterwarnings("ignore", message=f".*{hint}.*")
            yield
    finally:
        logger.setLevel(level)


def metric_cells(runs: Sequence[Mapping[str, Any]], keys: Sequence[str] = METRIC_KEYS) -> dict:
    """``key -> cell`` over the runs (one per seed) of one arm."""
    return {k: cell([r["metrics"][k] for r in runs]) for k in keys}


def run_seeds(
    name: str,
    overrides: Mapping[str, Any],
    data: StudyData,
    steps: int,
    seeds: Sequence[int],
    out: Path,
) -> list[dict[str, Any]]:
    """``train_arm`` once per seed, in order."""
    if not seeds:
        raise ValueError("give at least one seed (two or more for a spread)")
    return [train_arm(name, overrides, data, steps, int(s), out) for s in seeds]
