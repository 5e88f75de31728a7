"""A NaN loss or gradient never reaches the weights: the step is skipped, named and
counted, or the run stops with a checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch

from perception.data.datamodule import PerceptionDataModule
from perception.data.synthetic.scene import CLASSES
from perception.data.synthetic.writer import write_dataset
from perception.errors import PerceptionError
from perception.training.module import PerceptionModule

SIZE = (64, 96)
BAD_STEP = 1  # the second optimizer step


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("nan") / "s", num=8, seed=5, size=SIZE)


def _fit(synth: Path, tmp_path: Path, module: PerceptionModule, steps: int = 3) -> None:
    data = PerceptionDataModule(
        train=[str(synth)], classes=list(CLASSES), image_size=SIZE, batch_size=4, num_workers=0
    )
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", precision="32-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
        gradient_clip_val=10.0,
    )  # fmt: skip
    trainer.fit(module, data)


def _module(**kwargs) -> PerceptionModule:
    torch.manual_seed(0)
    return PerceptionModule(
        net={"backbone": "resnet18", "neck_width": 16, "head_width": 16},
        image_size=SIZE, ema_decay=0.0, overlay_images=0, warmup_steps=1, **kwargs,
    )  # fmt: skip


def _nan_depth_loss_at(module: PerceptionModule, step: int) -> None:
    forward = module.loss.forward

    def poisoned(*args, **kwargs):
        total, parts = forward(*args, **kwargs)
        if module.global_step == step:
            parts = {**parts, "depth": parts["depth"] * float("nan")}
            total = total * float("nan")
        return total, parts

    module.loss.forward = poisoned


def _finite(module: PerceptionModule) -> bool:
    return all(torch.isfinite(p).all() for p in module.model.parameters())


def test_a_nan_loss_is_skipped_named_and_counted(synth, tmp_path, caplog) -> None:
    module = _module()
    _nan_depth_loss_at(module, BAD_STEP)
    with caplog.at_level(logging.WARNING, logger="perception.training.module"):
        _fit(synth, tmp_path, module)
    assert module.global_step == 3 and module.nonfinite_steps == 1
    assert _finite(module), "the NaN reached the weights"
    warning = next(r.getMessage() for r in caplog.records if "non-finite" in r.getMessage())
    assert f"non-finite loss (depth) at step {BAD_STEP}" in warning and "samples [" in warning
    assert "step skipped (1 so far)" in warning


def test_a_nan_gradient_is_skipped_naming_the_parameter(synth, tmp_path, caplog) -> None:
    module = _module()
    name, weight = next((n, p) for n, p in module.model.named_parameters() if "depth" in n)
    calls = {"n": 0}

    def poison(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == BAD_STEP + 1 else grad

    weight.register_hook(poison)
    with caplog.at_level(logging.WARNING, logger="perception.training.module"):
        _fit(synth, tmp_path, module)
    assert module.nonfinite_steps == 1 and _finite(module)
    warning = next(r.getMessage() for r in caplog.records if "non-finite" in r.getMessage())
    assert f"non-finite gradient ({name}) at step {BAD_STEP}" in warning


def test_stop_mode_stops_with_a_loadable_checkpoint(synth, tmp_path) -> None:
    module = _module(on_nonfinite="stop")
    _nan_depth_loss_at(module, BAD_STEP)
    with pytest.raises(PerceptionError, match=f"at step {BAD_STEP}.*stopped, checkpoint: ") as err:
        _fit(synth, tmp_path, module)
    path = Path(str(err.value).split("checkpoint: ")[-1])
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == BAD_STEP
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(PerceptionError, match="on_nonfinite"):
        _module(on_nonfinite="ignore")
