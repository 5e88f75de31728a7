"""Say where a run's files go, keep stable names for its newest checkpoints, and make the
last one the final step's.

Lightning numbers each run's folder (``version_0``, ``version_1``, ...), so a crashed
earlier run silently shifts the path a user copies from the docs. At the end of every
fit, ``<default_root_dir>/last.ckpt``, ``best.ckpt`` and ``metrics.csv`` point at that
run's checkpoints and CSV log, and the paths are printed at the start and the end.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only


def link(target: Path, name: Path) -> Path:
    """Make ``name`` point at ``target`` (a relative symlink; a copy where the file system
    has none), replacing an older link in one step so a reader never sees it missing."""
    tmp = name.with_name(f".{name.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(target, name.parent), tmp)
    except OSError:
        shutil.copy2(target, tmp)
    os.replace(tmp, name)
    return name


class RunPaths(L.Callback):
    """Print the checkpoint and log folders; link the newest checkpoints and CSV at the end."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        where = getattr(ckpt, "dirpath", None) or "(no checkpointing)"
        logs = trainer.log_dir  # every process: under DDP it is a collective (a broadcast)
        if trainer.is_global_zero:
            print(f"perception train: checkpoints in {where}; logs in {logs}", flush=True)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        root = Path(trainer.default_root_dir)
        csv = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
        made = []
        root.mkdir(parents=True, exist_ok=True)  # the logger may write elsewhere
        for name, path in (
            ("last.ckpt", getattr(ckpt, "last_model_path", "")),
            ("best.ckpt", getattr(ckpt, "best_model_path", "")),
            ("metrics.csv", str(Path(csv[0].log_dir) / "metrics.csv") if csv else ""),
        ):
            if path and Path(path).is_file():
                made.append(f"{link(Path(path), root / name)} -> {path}")
        if made:
            print("perception train: " + "; ".join(made), flush=True)


class FinalCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` holds the final step.

    Lightning writes checkpoints after each validation. A run that reaches ``max_steps``
    between two validations (1000 steps of 188-step epochs stop 60 steps after the last
    one) would otherwise end with ``last.ckpt`` at that validation: ``perception eval``,
    a release or a resume would read weights up to an epoch behind the run it asked for.
    It calls ``ModelCheckpoint``'s own saving steps (private in Lightning 2.6, which the
    package pins; ``test_last_checkpoint_is_the_final_step_between_validations`` guards it).
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
