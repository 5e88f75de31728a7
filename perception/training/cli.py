"""``perception train``: LightningCLI with the project's defaults and argument links.

Users get ``--config``, dotted overrides (``--model.lr 1e-3``), ``--print_config`` and
strict keys (an unknown key is an error) from jsonargparse. ``data.classes`` is linked to
``model.class_names``, ``data.image_size`` to ``model.image_size`` and
``model.net.default_hfov`` to ``data.default_hfov``, so the class list, input size and
default camera are written once and cannot disagree.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from perception.data.datamodule import PerceptionDataModule
from perception.training.module import PerceptionModule
from perception.training.precision import default_precision


class PerceptionCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.class_names", "data.classes")
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments("model.net.default_hfov", "data.default_hfov")


def trainer_defaults() -> dict:
    """bf16 mixed precision on a GPU or a CPU with native bf16 (``training.precision``),
    fp32 elsewhere; best + last checkpoints; logs.

    Called once per run, so every run gets fresh callback objects; loggers are parser
    defaults (``class_path`` dicts) that a config may replace (as may ``trainer.precision``).
    """
    return {
        "precision": default_precision(),
        "gradient_clip_val": 10.0,
        "default_root_dir": "runs",
        "logger": [
            {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "perception"},
            },
            {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": "perception-csv"},
            },
        ],
        "callbacks": [  # LightningCLI adds these instances to every run as they are
            ModelCheckpoint(
                monitor="val/score",
                mode="max",
                save_last=True,
                filename="best-{epoch:03d}",
                auto_insert_metric_name=False,
            ),
            LearningRateMonitor(logging_interval="step"),
        ],
    }


def run_train(argv: Sequence[str]) -> None:
    """Run ``fit``; ``argv`` is everything after ``perception train``.

    LightningCLI reads ``sys.argv`` (passing ``args=`` as well makes it warn on every run),
    so the arguments go through ``sys.argv`` for the duration of the call.
    """
    saved = sys.argv
    sys.argv = ["perception train", "fit", *argv]
    try:
        PerceptionCLI(
            PerceptionModule,
            PerceptionDataModule,
            trainer_defaults=trainer_defaults(),
            save_config_kwargs={"overwrite": True},
        )
    finally:
        sys.argv = saved
