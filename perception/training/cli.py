"""``perception train``: LightningCLI with the project's defaults and argument links.

Users get ``--config``, dotted overrides (``--model.lr 1e-3``), ``--print_config`` and
strict keys (an unknown key is an error) from jsonargparse. ``data.classes`` is linked to
``model.class_names``, ``data.image_size`` to ``model.image_size`` and
``model.net.default_hfov`` to ``data.default_hfov``, so the class list, input size and
default camera are written once and cannot disagree.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI

from perception.data.datamodule import PerceptionDataModule
from perception.errors import PerceptionError
from perception.training.module import PerceptionModule
from perception.training.precision import default_precision
from perception.training.run_paths import FinalCheckpoint, RunPaths


class PerceptionCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.class_names", "data.classes")
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments("model.net.default_hfov", "data.default_hfov")

    def parse_arguments(self, parser, args) -> None:
        """Parse, turning jsonargparse's usage dump into one line that names the key.

        Then put back the command the user typed (``run_train`` swapped it for the
        parser): DDP starts the other processes by running ``sys.argv`` again.
        """
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            raise PerceptionError(config_error(parser, str(err))) from None
        finally:
            if self.typed_argv is not None:
                sys.argv = self.typed_argv

    def __init__(self, *args: Any, typed_argv: list[str] | None = None, **kwargs: Any) -> None:
        self.typed_argv = typed_argv  # set before super().__init__, which parses
        super().__init__(*args, **kwargs)


def config_error(parser, message: str) -> str:
    """One line for a config or command-line mistake, with close matches to an unknown key.

    jsonargparse words it as ``Subcommand 'fit' does not accept option 'model.lrr'`` (YAML)
    or ``unrecognized arguments: --model.lrr 3`` (command line).
    """
    message = " ".join(message.split())  # its messages span lines
    unknown = re.search(
        r"does not accept option '([^']+)'|unrecognized arguments: --(\S+)", message
    )
    missing = re.search(r'Parser key "config": File does not exist: (.+)$', message)
    if missing:
        return f"config file not found: {missing.group(1)}"
    if not unknown:
        return message.replace("fit.", "")  # 'fit' is LightningCLI's subcommand, not the user's
    key = unknown.group(1) or unknown.group(2)
    try:  # jsonargparse keeps the 'fit' parser in a private map
        sub = parser._subcommands_action._name_parser_map["fit"]
        keys = [k for k in sub.get_defaults().keys() if not k.startswith("__")]  # noqa: SIM118
    except Exception:  # another jsonargparse: no suggestions, the error still names the key
        keys = []
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown key {key!r}{hint} (perception train --help lists every key)"


class LearningRates(LearningRateMonitor):
    """Lightning's learning-rate logger, idle in a run without loggers (``logger: false``)
    instead of refusing to start."""

    def on_train_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


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
            FinalCheckpoint(
                monitor="val/score",
                mode="max",
                save_last=True,
                filename="best-{epoch:03d}",
                auto_insert_metric_name=False,
            ),
            LearningRates(logging_interval="step"),
            RunPaths(),
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
            parser_kwargs={"exit_on_error": False, "allow_abbrev": False},  # one-line errors
            typed_argv=saved,
        )
    finally:
        sys.argv = saved
