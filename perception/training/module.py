"""The LightningModule: the *system* around the model (loss, optimizer, EMA, metrics).

The model itself (``perception.models``) knows nothing about Lightning, losses or data on
disk; this module wires them together. Init arguments are primitives on purpose: they
are the ``model:`` section of the YAML configs and the checkpoint's hyperparameters, and
a released checkpoint must load without unpickling custom objects.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import lightning as L
import torch

from perception.checkpoints import init_from
from perception.data.synthetic.scene import CLASSES
from perception.errors import PerceptionError
from perception.evaluation.distributed import gather_suites
from perception.evaluation.metrics import MetricsSuite, combined_score
from perception.losses.multitask import LossConfig, build_combiner, build_loss
from perception.models import ModelConfig, build_model
from perception.ops.distributed import all_reduce_sum, world_size
from perception.structures import TASKS, Batch, HeadOutputs
from perception.training.ema import ModelEMA
from perception.training.label_share import scale_by_label_share
from perception.training.nonfinite import ACTIONS, describe, nonfinite_grads, nonfinite_terms
from perception.training.optim import OPTIMIZERS, build_optimizer, warmup_cosine
from perception.training.pseudo import (
    check_channels,
    check_threshold,
    pseudo_label_segmentation,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
# Shared default instances, never mutated (``_dataclass`` copies): a dataclass default (not
# None) gives LightningCLI a nested ``model.net.*`` group that arguments can link to.
DEFAULT_NET = ModelConfig()
DEFAULT_LOSS = LossConfig()


def _dataclass(value: Any, cls: type[T], key: str) -> T:
    """``None`` (defaults), an instance, or a dict of its fields (strict) -> a new ``cls``."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return dataclasses.replace(value)
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise PerceptionError(f"{key}: unknown keys {unknown}; valid: {sorted(known)}")
        return cls(**value)
    raise PerceptionError(f"{key}: expected a mapping of {cls.__name__} fields, got {value!r}")


class PerceptionModule(L.LightningModule):
    """Multi-task training: one backbone, three heads, one composite loss.

    Args:
        class_names: detection classes (``net.num_classes`` follows their count).
        image_size: network input ``(H, W)`` (linked from ``data.image_size``).
        net: the architecture (``ModelConfig``; YAML ``model.net``), defaults otherwise.
        loss: the criterion's knobs (``LossConfig``; YAML ``model.loss``).
        combiner, loss_weights: how task losses become one (``losses.combiners``).
        optimizer, lr, weight_decay, momentum, warmup_steps: see ``training.optim``.
        ema_decay: EMA of the weights used for validation and release (0 = off).
        ema_ramp: steps over which the EMA decay ramps up (``training.ema``): keep it well
            below the run's length, or the EMA stays close to the live weights.
        seg_pseudo_labels: lane / drivable pseudo-labels from the EMA for the images of a
            partially labeled mix that lack them (``training.pseudo``): the confidence a
            pixel needs, in (0.5, 1); 0 = off. Needs the EMA.
        seg_pseudo_start: optimizer step from which they are made (the EMA of the first
            steps is close to the random initialisation).
        seg_pseudo_channels: which of ``lane`` and ``drivable`` get pseudo-labels.
        label_share_gradients: scale each task's gradient by the share of the batch
            labeled for it (``training.label_share``); a no-op on fully labeled data.
        overlay_images: prediction overlays drawn at each validation (0 = off).
        init_weights: a release ``.safetensors`` or ``.ckpt`` to start from (fine-tuning at
            another input size or on other data; ``checkpoints.init_from``). Not a resume:
            the optimizer, schedule and EMA start afresh (resume with ``--ckpt_path``).
        untrained_tasks: heads no training dataset labels, left untrained on purpose
            (BDD100K alone has no depth); their outputs mean nothing.
        on_nonfinite: a NaN/inf loss or gradient ``skip``s the step (logged, named and
            counted in ``train/nonfinite_steps``) or ``stop``s the run with a checkpoint.

    ``net`` and ``loss`` are typed dataclasses for the CLI (strict keys, ``--print_config``)
    but are stored as plain dicts in the hyperparameters, so a checkpoint loads with
    ``weights_only=True``; dicts are accepted too, which is how a checkpoint reloads.
    """

    def __init__(
        self,
        class_names: Sequence[str] = CLASSES,
        image_size: tuple[int, int] = (384, 640),
        net: ModelConfig = DEFAULT_NET,
        loss: LossConfig = DEFAULT_LOSS,
        combiner: str = "uncertainty",
        loss_weights: dict[str, float] | None = None,
        optimizer: str = "adamw",
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        warmup_steps: int = 300,
        ema_decay: float = 0.9995,
        ema_ramp: int = 2000,
        seg_pseudo_labels: float = 0.0,
        seg_pseudo_start: int = 300,
        seg_pseudo_channels: Sequence[str] = ("lane", "drivable"),
        label_share_gradients: bool = False,
        overlay_images: int = 4,
        init_weights: str | None = None,
        untrained_tasks: Sequence[str] = (),
        on_nonfinite: str = "skip",
    ) -> None:
        super().__init__()
        if on_nonfinite not in ACTIONS:
            raise PerceptionError(f"model.on_nonfinite: {on_nonfinite!r}; valid: {list(ACTIONS)}")
        untrained_tasks = list(untrained_tasks)  # a plain list in the hyperparameters
        if not set(untrained_tasks) <= set(TASKS):
            raise PerceptionError(
                f"model.untrained_tasks: {untrained_tasks} must be among {list(TASKS)}"
            )
        if optimizer.lower() not in OPTIMIZERS:
            raise PerceptionError(
                f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}"
            )
        net_cfg = _dataclass(net, ModelConfig, "model.net")
        net_cfg = dataclasses.replace(net_cfg, num_classes=len(class_names))
        loss_cfg = _dataclass(loss, LossConfig, "model.loss")
        if ema_ramp < 1:
            raise PerceptionError(f"model.ema_ramp must be >= 1, got {ema_ramp}")
        check_threshold(seg_pseudo_labels)
        check_channels(seg_pseudo_channels)
        seg_pseudo_channels = list(seg_pseudo_channels)  # a plain list in the hyperparameters
        if seg_pseudo_labels and ema_decay <= 0:
            raise PerceptionError("model.seg_pseudo_labels needs the EMA (model.ema_decay > 0)")
        class_names = list(class_names)  # plain values in the checkpoint (read by
        net = dataclasses.asdict(net_cfg)  # save_hyperparameters from these locals)
        loss = dataclasses.asdict(loss_cfg)
        self.save_hyperparameters()
        self.net_config = net_cfg
        # channels_last: the layout oneDNN (CPU) and cuDNN (GPU) convolutions run fastest in,
        # for bf16 above all; the images are made channels_last in ``float_images``
        self.model = build_model(net_cfg)
        if init_weights:
            fresh = init_from(self.model, net_cfg, init_weights)
            if fresh:
                log.info("%s: %d tensors start afresh (new class list)", init_weights, len(fresh))
        self.model = self.model.to(memory_format=torch.channels_last)
        self.loss = build_loss(
            loss_cfg,
            build_combiner(combiner, weights=loss_weights),
            canonical_focal=net_cfg.canonical_focal,
        )
        self.ema = ModelEMA(self.model, ema_decay, ema_ramp) if ema_decay > 0 else None
        self.metrics = MetricsSuite(canonical_focal=net_cfg.canonical_focal)
        self.dataset_metrics: list[MetricsSuite] = []  # per validation dataset, when several
        self.dataset_names: list[str] = []
        self._val_loss = torch.zeros(2)
        self._val_index: list[dict[str, int]] = []  # per validation dataset: id -> index
        self._log_dir: str | None = None  # where validation overlays go
        self._points: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.nonfinite_steps = 0  # skipped so far (saved in the checkpoint)
        self._loss_ok = False  # this step's loss was finite (the EMA takes the step in)
        self._step_ids: list[str] = []

    @property
    def canonical_focal(self) -> float:
        return self.net_config.canonical_focal

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights used for validation and release: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def points(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense detection points for this input size, cached per (H, W, device)."""
        h, w = images.shape[-2:]
        key = (h, w, images.device)
        if key not in self._points:
            self._points[key] = self.model.points((h, w), images.device)
        return self._points[key]

    def forward(self, images: torch.Tensor) -> HeadOutputs:
        """``images`` ``[B, 3, H, W]`` float in [0, 1] -> raw head outputs."""
        return self.model(images)

    # ------------------------------------------------------------------ data plumbing
    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int):
        return batch.to(device)

    @staticmethod
    def float_images(batch: Batch) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> float [0, 1], on the device (cheaper to ship uint8)."""
        return batch.images.float().div_(255.0).contiguous(memory_format=torch.channels_last)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        if stage == "fit" and datamodule is not None:
            self.check_labels(datamodule.labeled_counts())
        # each validation image's index in its dataset, for the keys of ``_split_keys``
        datasets = getattr(getattr(datamodule, "val_set", None), "datasets", [])
        self._val_index = [{s: i for i, s in enumerate(getattr(d, "ids", []))} for d in datasets]

    def check_labels(self, counts: dict[str, int]) -> None:
        """Refuse to train a head that no training sample has labels for, unless the
        config says so (``untrained_tasks``): a silently untrained head would still
        produce confident-looking output."""
        wanted = [t for t in TASKS if t != "drivable" or self.net_config.drivable]
        untrained = set(self.hparams.untrained_tasks)
        missing = [t for t in wanted if counts.get(t, 0) == 0 and t not in untrained]
        if missing:
            hint = (
                " (set model.net.drivable: false)"
                if missing == ["drivable"]
                else f" (or leave it untrained on purpose: model.untrained_tasks: {missing})"
            )
            raise PerceptionError(
                f"the model has a {', '.join(missing)} head but no training sample is labeled "
                f"for {' or '.join(missing)}{hint}; labeled counts: {counts}"
            )

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        if batch.num_skipped:
            self.log("data/skipped", float(batch.num_skipped), reduce_fx="sum", batch_size=1)
        if len(batch) == 0:
            return None
        images = self.float_images(batch)
        batch = self.pseudo_label(images, batch)
        outputs = self.model(images)
        if self.hparams.label_share_gradients:
            outputs = scale_by_label_share(outputs, batch)
        total, parts = self.loss(outputs, batch, *self.points(images))
        self._step_ids = list(batch.ids)
        bad = nonfinite_terms(total, parts)
        if self._any_rank(bool(bad)):
            step = self.global_step
            self._nonfinite(
                describe("loss", bad, step, batch.ids)
                if bad
                else f"non-finite loss on another process at step {step}"
            )
            return None  # every process skips backward and the optimizer step together
        self._loss_ok = True
        logged = {f"train/{k}": v.detach().float() for k, v in parts.items()}
        self.log_dict(logged, batch_size=len(batch))
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=len(batch))
        return total

    def pseudo_label(self, images: torch.Tensor, batch: Batch) -> Batch:
        """``batch`` with the EMA's lane / drivable pseudo-labels on the images that lack
        them (``training.pseudo``), once ``seg_pseudo_start`` steps have passed; else as is."""
        threshold = self.hparams.seg_pseudo_labels  # > 0 only with an EMA (``__init__``)
        if not threshold or self.global_step < self.hparams.seg_pseudo_start:
            return batch
        batch, rows = pseudo_label_segmentation(
            self.ema.module,
            images,
            batch,
            threshold,
            self.model.num_seg,
            self.hparams.seg_pseudo_channels,
        )
        self.log("train/pseudo_labeled", float(rows), batch_size=len(batch))
        return batch

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        bad = nonfinite_grads(self.model)
        if bad:
            self._nonfinite(describe("gradient", bad, self.global_step, self._step_ids))
            optimizer.zero_grad(set_to_none=True)  # the optimizer skips grad-less parameters

    @staticmethod
    def _any_rank(flag: bool) -> bool:
        """``flag`` on any process. Under DDP one process cannot skip a step alone (the
        others would wait in backward's all-reduce forever), so they decide together."""
        if world_size() == 1:
            return flag
        return bool(all_reduce_sum(torch.tensor(float(flag))) > 0)

    def _nonfinite(self, message: str) -> None:
        """Skip-and-count, or stop with a checkpoint (``on_nonfinite``)."""
        if self.hparams.on_nonfinite == "stop":
            path = f"{self.trainer.log_dir or '.'}/nonfinite-step{self.global_step}.ckpt"
            self.trainer.save_checkpoint(path)
            raise PerceptionError(f"{message}; stopped, checkpoint: {path}")
        self.nonfinite_steps += 1
        log.warning("%s; step skipped (%d so far)", message, self.nonfinite_steps)
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_steps"] = self.nonfinite_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_steps = int(checkpoint.get("nonfinite_steps", 0))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA takes it in: once per optimizer step (not per
        micro-batch under gradient accumulation), never after a skipped one, and before
        any ``on_train_batch_end`` checkpoint is written, so a resumed run's EMA is the
        uninterrupted run's."""
        self._loss_ok = False  # set by training_step, which runs inside the step's closure
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None and self._loss_ok:
            self.ema.update(self.model)

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if len(batch) == 0:
            return
        images = self.float_images(batch)
        outputs = self.eval_model(images)
        points, strides = self.points(images)
        total, _ = self.loss(outputs, batch, points, strides)
        self._val_loss += torch.stack([total.detach() * len(batch), total.new_tensor(len(batch))])
        keys = self._split_keys(batch.ids, dataloader_idx)
        self.metrics.update(outputs, batch, points, strides, keys)
        if self.dataset_metrics:
            self.dataset_metrics[dataloader_idx].update(outputs, batch, points, strides, keys)
        first = batch_idx == 0 and dataloader_idx == 0
        if first and self.hparams.overlay_images > 0 and self.trainer.is_global_zero:  # one writer
            from perception.training.callbacks import log_overlays

            log_overlays(self, batch, outputs, points, strides, self._log_dir)

    def _split_keys(self, ids: Sequence[str], dataloader_idx: int) -> list[tuple] | None:
        """Each image's place in the validation split, ``(dataset, index)``: ranks' shards
        are scored in split order once gathered. None without a datamodule's ids."""
        if dataloader_idx >= len(self._val_index):
            return None
        index = self._val_index[dataloader_idx]
        if not all(i in index for i in ids):
            return None
        return [(dataloader_idx, index[i]) for i in ids]

    def on_validation_epoch_start(self) -> None:
        # on every process: under DDP, reading it is a collective (a broadcast from rank 0)
        self._log_dir = self.trainer.log_dir
        self.metrics.reset()
        self._val_loss = torch.zeros(2, device=self.device)  # sum of loss x images, images
        # several validation datasets (a BDD100K split and a KITTI split, say): each is also
        # scored on its own, so a mix that helps one dataset and hurts another shows
        loaders = len(self.trainer.num_val_batches)
        names: list[str] = []
        if loaders > 1:
            given = list(getattr(self.trainer.datamodule, "val_names", None) or [])
            names = given if len(given) == loaders else [f"val{i}" for i in range(loaders)]
        self.dataset_metrics = [MetricsSuite(canonical_focal=self.canonical_focal) for _ in names]
        self.dataset_names = names

    def on_validation_epoch_end(self) -> None:
        # Under DDP each process scored its own shard (no sample twice: the datamodule's
        # validation sampler does not pad); merging the shards' sum states gives every
        # process the whole split's metrics, equal on all of them.
        loss_sum, images = all_reduce_sum(self._val_loss).tolist()
        gather_suites([self.metrics, *self.dataset_metrics])
        results = self.metrics.compute()
        finite = {f"val/{k}": v for k, v in results.items() if not math.isnan(v)}
        for name, suite in zip(self.dataset_names, self.dataset_metrics, strict=True):
            part = suite.compute()
            finite |= {f"val/{name}/{k}": v for k, v in part.items() if not math.isnan(v)}
        if images > 0:
            finite["val/loss"] = loss_sum / images
        # the values are already equal on every process: "max" syncs them without change
        self.log_dict(finite, sync_dist=True, reduce_fx="max")
        score = combined_score(results)
        self.log("val/score", score, prog_bar=True, sync_dist=True, reduce_fx="max")

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = build_optimizer(hp.optimizer, self, hp.lr, hp.weight_decay, hp.momentum)
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(total, min(hp.warmup_steps, total // 3))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
