"""``PerceptionDataModule``: dataset roots and loader settings -> train/val ``DataLoader``s.

Init arguments are typed primitives only: they become Lightning hyperparameters and the
``data:`` keys of a training YAML, so a config round-trips through ``--print_config``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from functools import partial

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from perception.data.collate import collate
from perception.data.datasets import V1Dataset
from perception.data.order import SeededDraws, TrainOrder, mixing_weights
from perception.data.transforms import AugmentConfig, SampleTransform
from perception.errors import PerceptionError
from perception.ops.camera import DEFAULT_HFOV
from perception.ops.distributed import world_size
from perception.structures import TASKS


def in_val_split(sample_id: str, val_fraction: float) -> bool:
    """Deterministic split by id: the same id always lands on the same side, whatever the
    machine, run or manifest order, and adding samples never moves existing ones."""
    digest = hashlib.sha1(sample_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


class PerceptionDataModule(L.LightningDataModule):
    """Training and validation data from one or more perception-v1 dataset roots.

    Args:
        train: training dataset roots.
        classes: model class names (labels become indices into this list).
        train_weights: share of draws per training root (weighted mixing); ``None`` =
            plain shuffling over all samples.
        balanced_draws: every batch holds each training root in its share of the draws
            (``train_weights``, else its size) to within two samples, rather than at
            random (``data.order.balanced_order``: for roots that each label only some
            tasks, so that no batch is short of one task's labels).
        val: validation roots (each scored on its own too when there are several).
        val_fraction: fraction of each ``train`` root's ids held out for validation, as
            well as ``val``: a dataset without a published val split (KITTI) next to one
            with one (BDD100K).
        class_map: dataset class -> model class, or null to drop a class.
        image_size: network input ``[H, W]`` in pixels.
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings
            (pinning only applies when CUDA is available).
        augment: train-time augmentation on/off; the rest set its strength
            (see ``AugmentConfig``).
        default_hfov: horizontal field of view (degrees) given to samples without
            intrinsics; ``perception train`` links it to ``model.net.default_hfov``.
    """

    def __init__(
        self,
        train: list[str],
        classes: Sequence[str],
        *,
        train_weights: list[float] | None = None,
        balanced_draws: bool = False,
        val: list[str] | None = None,
        val_fraction: float = 0.0,
        class_map: dict[str, str | None] | None = None,
        image_size: tuple[int, int] | list[int] = (384, 640),
        batch_size: int = 16,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        augment: bool = True,
        flip_p: float = 0.5,
        zoom_p: float = 0.7,
        zoom_range: tuple[float, float] | list[float] = (0.75, 1.33),
        translate: float = 0.1,
        photometric: float = 1.0,
        weather_p: float = 0.05,
        default_hfov: float = DEFAULT_HFOV,
    ):
        super().__init__()
        self.save_hyperparameters()
        _check_args(train, classes, train_weights, val, val_fraction, image_size, batch_size)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.augment = AugmentConfig(
            enabled=augment,
            flip_p=flip_p,
            zoom_p=zoom_p,
            zoom_range=(float(zoom_range[0]), float(zoom_range[1])),
            translate=translate,
            photometric=photometric,
            weather_p=weather_p,
        )
        self.train_set: ConcatDataset | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, batches used) from a checkpoint
        self._seed = 0  # of the training order (TrainOrder)
        self.val_set: ConcatDataset | None = None
        self.val_names: list[str] = []  # one per validation dataset, for per-dataset metrics

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        train_tf = SampleTransform(self.image_size, self.augment, hp.default_hfov)
        val_tf = SampleTransform(self.image_size, default_hfov=hp.default_hfov)
        train_parts, val_parts = [], []
        for root in hp.train:
            full = V1Dataset(root, hp.classes, hp.class_map, train_tf)
            held = {i for i in full.ids if in_val_split(i, hp.val_fraction)}
            if not held:
                train_parts.append(full)
                continue
            kept = [i for i in full.ids if i not in held]
            train_parts.append(V1Dataset(root, hp.classes, hp.class_map, train_tf, kept))
            val_parts.append(V1Dataset(root, hp.classes, hp.class_map, val_tf, sorted(held)))
        for root in hp.val or []:
            val_parts.append(V1Dataset(root, hp.classes, hp.class_map, val_tf))
        self.train_set = ConcatDataset(train_parts)
        self.val_set = ConcatDataset(val_parts) if val_parts else None
        self.val_names = unique_names([d.info.name for d in val_parts])

    def labeled_counts(self) -> dict[str, int]:
        """Training samples labeled per task (from the manifests; no image is read).

        Lets the training module refuse a head that has nothing to learn from.
        """
        self.setup("fit")
        counts = dict.fromkeys(TASKS, 0)
        for dataset in self.train_set.datasets:
            for record in dataset.records:
                counts["det"] += record.boxes is not None
                for task in ("lane", "drivable", "depth"):
                    counts[task] += getattr(record, task) is not None
        return counts

    def train_dataloader(self) -> DataLoader:
        """Draws in ``TrainOrder`` (a pure function of seed, epoch and position); after a
        resume, the interrupted epoch continues at the draw where it stopped."""
        self.setup("fit")
        weights, balance = None, None
        lengths = [len(d) for d in self.train_set.datasets]
        shares = self.hparams.train_weights
        if self.hparams.balanced_draws:
            balance = (lengths, list(shares) if shares is not None else [float(n) for n in lengths])
        elif shares is not None:
            weights = mixing_weights(lengths, list(shares))
        if self._resume is None:
            self._seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything
        order = TrainOrder(len(self.train_set), self._seed, weights, balance)
        if self._resume is not None:
            epoch, batches = self._resume
            batches_per_epoch = math.ceil(order.num_samples / self.hparams.batch_size)
            if batches >= batches_per_epoch:  # saved at the end of an epoch
                epoch, batches = epoch + 1, 0
            order.set_epoch(epoch)
            order.skip = batches * self.hparams.batch_size
            self._resume = None
        return self._loader(SeededDraws(self.train_set), order, ResumableLoader)

    def state_dict(self) -> dict[str, int]:
        """Where training is in the data: the order's seed, the epoch and the batches of
        it already used (saved in every checkpoint; ``load_state_dict`` resumes there).
        The seed is kept because ``seed_everything: true`` draws a new one every run."""
        trainer = self.trainer
        if trainer is None:
            return {}
        used = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return {"seed": self._seed, "epoch": int(trainer.current_epoch), "batches": int(used)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self._seed = int(state["seed"])
            self._resume = (int(state["epoch"]), int(state["batches"]))

    def val_dataloader(self) -> DataLoader | list:
        """One loader per validation dataset (several: metrics per dataset and overall)."""
        self.setup("validate")
        if self.val_set is None:
            return []
        loaders = [self._loader(d, shard_sampler(d)) for d in self.val_set.datasets]
        return loaders[0] if len(loaders) == 1 else loaders

    def _loader(self, dataset: Dataset, sampler: object, cls: type = DataLoader) -> DataLoader:
        """A loader of the datamodule's settings; the order is the ``sampler``'s."""
        hp = self.hparams
        return cls(
            dataset,
            batch_size=hp.batch_size,
            sampler=sampler,
            num_workers=hp.num_workers,
            collate_fn=partial(collate, image_size=self.image_size),
            pin_memory=hp.pin_memory and torch.cuda.is_available(),
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
        )


class ResumableLoader(DataLoader):
    """The training loader, marked resumable for Lightning: the position it resumes from
    is saved and restored by ``PerceptionDataModule.state_dict`` (from Lightning's own
    count of the batches used, which knows about prefetching) and applied by
    ``TrainOrder.skip``; the loader itself keeps nothing."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def shard_sampler(dataset: Dataset) -> Sampler | None:
    """Under DDP, this process's strided shard of a validation set, not padded: Lightning's
    default sampler repeats samples so that every process gets as many, and repeated
    samples would be counted twice in the metrics. None (all of it) on one process."""
    if world_size() == 1:
        return None
    return UnrepeatedDistributedSampler(dataset, shuffle=False)


def unique_names(names: list[str]) -> list[str]:
    """Dataset names usable as metric key parts: ``/`` removed, repeats numbered."""
    out: list[str] = []
    for name in names:
        base = name.replace("/", "_") or "data"
        candidate, n = base, 2
        while candidate in out:
            candidate, n = f"{base}_{n}", n + 1
        out.append(candidate)
    return out


def _check_args(
    train: list[str],
    classes: list[str],
    train_weights: list[float] | None,
    val: list[str] | None,
    val_fraction: float,
    image_size: tuple[int, int] | list[int],
    batch_size: int,
) -> None:
    """One clear line per user mistake, raised before any file is read."""
    if not train:
        raise PerceptionError("data.train: give at least one dataset root")
    if not classes:
        raise PerceptionError("data.classes: give the model's class names")
    if train_weights is not None:
        if len(train_weights) != len(train):
            raise PerceptionError(
                f"data.train_weights: {len(train_weights)} weights for {len(train)} train "
                f"roots; give one weight per root"
            )
        if any(w < 0 for w in train_weights) or sum(train_weights) <= 0:
            raise PerceptionError(
                f"data.train_weights: must be >= 0 with a positive sum, got {list(train_weights)}"
            )
    if not 0.0 <= val_fraction < 1.0:
        raise PerceptionError(f"data.val_fraction: must be in [0, 1), got {val_fraction}")
    if len(image_size) != 2 or min(int(v) for v in image_size) <= 0:
        raise PerceptionError(f"data.image_size: expected [H, W] positive ints, got {image_size}")
    if batch_size < 1:
        raise PerceptionError(f"data.batch_size: must be >= 1, got {batch_size}")
