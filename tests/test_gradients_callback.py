"""``GradientNorms``: per-stage backbone gradient norms, logged, kept and plotted."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import CLASSES
from PIL import Image

from perception.data.datamodule import PerceptionDataModule
from perception.errors import PerceptionError
from perception.training.cli import PerceptionCLI, trainer_defaults
from perception.training.gradients import GradientNorms
from perception.training.module import PerceptionModule

SIZE = (64, 96)
NET = {"backbone": "resnet18", "neck_width": 16, "head_width": 16}
RESNET_STAGES = ["stem", "layer1", "layer2", "layer3", "layer4"]
KEYS = [f"grad/stage{i}" for i in range(5)]


class ReferenceNorms(L.Callback):
    """The same norms computed independently, straight from resnet18's named modules."""

    def __init__(self) -> None:
        self.norms: dict[int, list[float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        body = pl_module.model.backbone.body
        groups = [[body.conv1, body.bn1], [body.layer1], [body.layer2], [body.layer3]]
        groups.append([body.layer4])
        norms = []
        for modules in groups:
            grads = [p.grad.double().flatten() for m in modules for p in m.parameters()]
            norms.append(float(torch.cat(grads).norm()))
        self.norms[trainer.global_step] = norms


def test_three_step_fit_records_logs_and_plots_every_stage(tiny_dataset, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = PerceptionModule(
        CLASSES, SIZE, net=NET, ema_decay=0.0, overlay_images=0, warmup_steps=0
    )
    data = PerceptionDataModule(
        train=[str(tiny_dataset())], classes=CLASSES, image_size=SIZE, batch_size=2,
        num_workers=0, augment=False,
    )  # fmt: skip
    norms, reference = GradientNorms(every_n_steps=1), ReferenceNorms()
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[norms, reference],
        limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, data)

    assert norms.stage_names == RESNET_STAGES and norms.keys == KEYS
    assert sorted(norms.history) == [0, 1, 2]
    for step, values in norms.history.items():
        assert len(values) == 5 and all(math.isfinite(v) and v > 0 for v in values)
        assert values == pytest.approx(reference.norms[step], rel=1e-5)
    assert norms.history[0] != norms.history[2]  # measured each step, not cached
    logged = [float(trainer.callback_metrics[k]) for k in KEYS]
    assert logged == pytest.approx(norms.history[2], rel=1e-5)

    out = norms.plot(tmp_path / "plots" / "grad.png")
    assert out.is_file() and out.stat().st_size > 10_000
    assert Image.open(out).size == (704, 462)  # 6.4 x 4.2 in at 110 dpi


def test_callback_from_yaml_logs_every_n_steps(tiny_dataset, tmp_path: Path) -> None:
    """``trainer.callbacks`` in a training YAML builds it; it logs to the run's logger."""
    config = {
        "model": {"class_names": CLASSES, "net": NET, "ema_decay": 0.0, "overlay_images": 0},
        "data": {"train": [str(tiny_dataset())], "val_fraction": 0.5, "image_size": list(SIZE),
                 "batch_size": 2, "num_workers": 0, "augment": False},
        "trainer": {
            "accelerator": "cpu", "max_steps": 3, "log_every_n_steps": 1,
            "enable_progress_bar": False, "default_root_dir": str(tmp_path),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "logs")}},
            "callbacks": [{"class_path": "perception.training.gradients.GradientNorms",
                           "init_args": {"every_n_steps": 2}}],
        },
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    saved = sys.argv
    sys.argv = ["perception train", "--config", str(path)]
    try:
        cli = PerceptionCLI(
            PerceptionModule, PerceptionDataModule, trainer_defaults=trainer_defaults(), run=False
        )
    finally:
        sys.argv = saved
    found = [c for c in cli.trainer.callbacks if isinstance(c, GradientNorms)]
    assert len(found) == 1 and found[0].every_n_steps == 2
    cli.trainer.fit(cli.model, cli.datamodule)
    assert sorted(found[0].history) == [0, 2]
    rows = list(csv.DictReader(next((tmp_path / "logs").rglob("metrics.csv")).open()))
    logged = {int(r["step"]): [float(r[k]) for k in KEYS] for r in rows if r.get(KEYS[0])}
    assert sorted(logged) == [0, 2]
    for step, values in logged.items():
        assert values == pytest.approx(found[0].history[step], rel=1e-5)


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PerceptionError, match="every_n_steps"):
        GradientNorms(every_n_steps=0)
    with pytest.raises(PerceptionError, match="no gradient norms"):
        GradientNorms().plot(tmp_path / "empty.png")
