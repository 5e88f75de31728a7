"""The training recipe as a user writes it: YAML knobs reach the code, bf16 on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from perception.data.datamodule import PerceptionDataModule
from perception.data.synthetic.scene import CLASSES
from perception.data.synthetic.writer import write_dataset
from perception.errors import PerceptionError
from perception.training.cli import PerceptionCLI, trainer_defaults
from perception.training.module import PerceptionModule
from perception.training.precision import cpu_has_native_bf16, default_precision

SIZE = (64, 96)
KNOBS = {
    "cls_weight": 0.7,
    "box_weight": 3.5,
    "vfl_alpha": 0.6,
    "vfl_gamma": 1.5,
    "assigner_topk": 7,
    "assigner_beta": 4.0,
    "lane_pos_weight": 6.0,
    "lane_tversky_alpha": 0.2,
    "lane_tversky_beta": 0.8,
    "silog_lambda": 0.5,
    "depth_grad_weight": 0.25,
}


def _cli(tmp_path: Path, config: dict) -> PerceptionCLI:
    """Parse and instantiate (no training) exactly as ``perception train --config``."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    saved = sys.argv
    sys.argv = ["perception train", "--config", str(path)]
    try:
        return PerceptionCLI(
            PerceptionModule,
            PerceptionDataModule,
            trainer_defaults=trainer_defaults(),
            run=False,
        )
    finally:
        sys.argv = saved


def test_loss_knobs_reach_the_losses_from_yaml_and_the_checkpoint(tmp_path: Path) -> None:
    config = {
        "model": {
            "net": {"backbone": "resnet18", "neck_width": 16, "head_width": 16,
                    "canonical_focal": 300.0, "default_hfov": 75.0},
            "loss": KNOBS,
        },
        "data": {"train": [str(tmp_path)], "image_size": list(SIZE)},
        "trainer": {"accelerator": "cpu", "logger": False},
    }  # fmt: skip
    cli = _cli(tmp_path, config)
    loss = cli.model.loss
    det, seg, depth = loss.detection, loss.segmentation, loss.depth
    assert (det.cls_weight, det.box_weight, det.vfl_alpha, det.vfl_gamma) == (0.7, 3.5, 0.6, 1.5)
    assert (det.assigner.topk, det.assigner.beta) == (7, 4.0)
    assert seg.pos_weight[0] == 6.0 and (seg.fp_weight[0], seg.fn_weight[0]) == (0.2, 0.8)
    assert (depth.silog_lambda, depth.grad_weight, depth.canonical_focal) == (0.5, 0.25, 300.0)
    assert cli.model.model.canonical_focal == 300.0
    assert cli.datamodule.hparams.default_hfov == 75.0  # linked from model.net
    # the checkpoint records them as plain values (loadable with weights_only=True)
    assert cli.model.hparams["loss"] == {**cli.model.hparams["loss"], **KNOBS}
    assert isinstance(cli.model.hparams["net"], dict)


def test_unknown_loss_knob_is_refused(tmp_path: Path) -> None:
    config = {"model": {"loss": {"box_wieght": 1.0}}, "data": {"train": [str(tmp_path)]}}
    with pytest.raises(SystemExit):
        _cli(tmp_path, config)
    with pytest.raises(PerceptionError, match="box_wieght"):
        PerceptionModule(loss={"box_wieght": 1.0})


def test_knobs_change_the_loss_value() -> None:
    """Not just stored: a different knob gives a different loss on the same batch."""
    torch.manual_seed(0)
    net = {"backbone": "resnet18", "neck_width": 16, "head_width": 16}
    a = PerceptionModule(net=net, combiner="fixed", ema_decay=0.0)
    b = PerceptionModule(net=net, combiner="fixed", ema_decay=0.0, loss={"silog_lambda": 0.0})
    b.model.load_state_dict(a.model.state_dict())
    depth = torch.full((1, 32, 32), 10.0)
    valid, has = torch.ones(1, 32, 32, dtype=torch.bool), torch.ones(1, dtype=torch.bool)
    args = (torch.ones(1, 1, 32, 32), depth, valid, has, torch.tensor([[500.0, 500.0, 16, 16]]))
    assert float(a.loss.depth(*args).total) != float(b.loss.depth(*args).total)


def test_default_precision_follows_the_hardware() -> None:
    assert default_precision(cuda=True, flags=set()) == "bf16-mixed"
    assert default_precision(cuda=False, flags={"avx2", "avx512f"}) == "32-true"
    assert default_precision(cuda=False, flags={"avx512_bf16"}) == "bf16-mixed"
    assert default_precision(cuda=False, flags={"amx_bf16", "amx_tile"}) == "bf16-mixed"
    assert cpu_has_native_bf16(set()) is False


def test_bf16_cpu_training_runs_steps_with_finite_losses(tmp_path: Path) -> None:
    """bf16-mixed on the CPU (emulated where the CPU lacks bf16: slower, still correct)."""
    root = write_dataset(tmp_path / "synth", num=8, seed=4, size=SIZE)
    torch.manual_seed(0)
    module = PerceptionModule(
        net={"backbone": "resnet18", "neck_width": 16, "head_width": 16},
        image_size=SIZE, ema_decay=0.9, overlay_images=0, warmup_steps=1,
    )  # fmt: skip
    data = PerceptionDataModule(
        train=[str(root)], classes=list(CLASSES), image_size=SIZE, batch_size=4, num_workers=0
    )
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", precision="bf16-mixed", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, callbacks=[Record()],
    )  # fmt: skip
    before = next(module.model.parameters()).detach().clone()
    trainer.fit(module, data)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    after = next(module.model.parameters())
    assert after.dtype == torch.float32 and not torch.equal(before, after)  # fp32 master weights
    assert module.model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_init_weights_starts_from_a_release_and_refuses_another_architecture(
    tmp_path: Path,
) -> None:
    from conftest import TINY_RELEASE_CLASSES, write_tiny_release

    from perception.checkpoints import load_model

    release = write_tiny_release(tmp_path / "release.safetensors")
    source = load_model(release).model.state_dict()
    net = {"backbone": "resnet18", "neck_width": 16, "head_width": 16}

    def module(classes: list[str], **changes) -> PerceptionModule:
        net_cfg = {**net, **changes}
        return PerceptionModule(classes, (64, 96), net=net_cfg, init_weights=str(release))

    same = module(TINY_RELEASE_CLASSES)  # fine-tuning at another size: every tensor carries
    for model in (same.model, same.ema.module):
        for k, v in model.state_dict().items():
            assert torch.equal(v, source[k]), k

    half = module(TINY_RELEASE_CLASSES, dense_refine_stride=2)  # the decoders refine at H/2
    assert half.model.lane.refine_stride == 2
    assert all(torch.equal(v, source[k]) for k, v in half.model.state_dict().items())

    other = module(["car", "pedestrian"])  # a new class list: only the class logits start afresh
    state = other.model.state_dict()
    fresh = [k for k, v in state.items() if v.shape != source[k].shape]
    assert fresh and all(k.startswith("detection.cls_pred") for k in fresh)
    assert all(torch.equal(v, source[k]) for k, v in state.items() if k not in fresh)

    with pytest.raises(PerceptionError, match="neck_width: 16 in the file, 32 here"):
        module(TINY_RELEASE_CLASSES, neck_width=32)
    with pytest.raises(PerceptionError, match=r"canonical_focal: 500\.0 in the file, 0\.0 here"):
        module(TINY_RELEASE_CLASSES, canonical_focal=0.0)  # depth would mean something else


CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_parses_and_builds(path: Path, monkeypatch) -> None:
    """Each YAML in configs/ is valid for ``perception train`` (keys, types, links)."""
    monkeypatch.chdir(path.parents[1])  # paths in the configs are relative to the repo
    config = yaml.safe_load(path.read_text())
    overrides = []
    init = config["model"].get("init_weights")
    if init and not Path(init).exists():  # a later stage starts from an earlier one's output
        earlier = [p.read_text() for p in CONFIGS if p != path]  # whose recipe must write it
        assert any(init in text for text in earlier), f"{init} is made by no documented stage"
        overrides = ["--model.init_weights", "null"]
    saved = sys.argv
    sys.argv = ["perception train", "--config", str(path), *overrides]
    try:
        cli = PerceptionCLI(
            PerceptionModule, PerceptionDataModule, trainer_defaults=trainer_defaults(), run=False
        )
    finally:
        sys.argv = saved
    assert list(cli.model.hparams.class_names) == config["model"]["class_names"]
    assert tuple(cli.datamodule.image_size) == tuple(config["data"]["image_size"])
