"""Depth losses chosen from YAML; every activation and optimizer trains one finite step."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CLASSES

from perception.data.datamodule import PerceptionDataModule
from perception.errors import PerceptionError
from perception.losses.depth import DEPTH_LOSSES, DepthLoss
from perception.losses.multitask import LossConfig
from perception.models.layers import ACT_NAMES, make_act
from perception.training.module import PerceptionModule
from perception.training.optim import OPTIMIZERS

SIZE = (64, 96)
NET = {"backbone": "resnet18", "neck_width": 16, "head_width": 16}
NAMES = ["silog", "l1", "l2", "smooth_l1", "huber"]

# 2x2 example: ground truth in metres (0 = unmeasured) and the log error at each pixel
GT = torch.tensor([[[2.0, 4.0], [0.0, 8.0]]])  # [1, 2, 2]
ERR = torch.tensor([[[0.05, -0.5], [7.0, 2.0]]])  # 7.0 sits on the unmeasured pixel
# by hand, on the 3 measured errors (0.05, -0.5, 2.0), beta = 0.1, lambda = 0.85, eps = 1e-6:
HAND = {
    "l1": (0.05 + 0.5 + 2.0) / 3,  # 0.85
    "l2": (0.0025 + 0.25 + 4.0) / 3,  # 1.4175
    "smooth_l1": (0.5 * 0.0025 / 0.1 + (0.5 - 0.05) + (2.0 - 0.05)) / 3,  # 0.804167
    "huber": (0.5 * 0.0025 + 0.1 * (0.5 - 0.05) + 0.1 * (2.0 - 0.05)) / 3,  # 0.080417
    # sqrt(mean d^2 - lambda mean(d)^2 + eps) - sqrt(eps)
    "silog": math.sqrt(1.4175 - 0.85 * (1.55 / 3) ** 2 + 1e-6) - 1e-3,  # 1.090145
}


def _call(loss: DepthLoss, depth_log: torch.Tensor, gt: torch.Tensor, **kw):
    valid = kw.pop("valid", torch.ones_like(gt, dtype=torch.bool))
    has = kw.pop("has", torch.ones(gt.shape[0], dtype=torch.bool))
    return loss(depth_log[:, None], gt, valid, has, kw.pop("camera", None))


def test_the_choices_are_the_documented_ones() -> None:
    assert list(DEPTH_LOSSES) == NAMES and LossConfig().depth_loss == "silog"


@pytest.mark.parametrize("name", NAMES)
def test_zero_for_a_perfect_prediction_positive_otherwise(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 16, 24, generator=g) * 70 + 1  # [B, H, W] metres
    gt[torch.rand(2, 16, 24, generator=g) > 0.3] = 0.0  # sparse, as LiDAR
    truth = torch.where(gt > 0, gt, 1.0).log()
    loss = DepthLoss(loss=name)
    perfect = _call(loss, truth, gt)
    assert set(perfect.terms) == {name, "grad"}
    assert perfect.total.item() == pytest.approx(0.0, abs=1e-5)
    noisy = _call(loss, truth + 0.3 * torch.randn(truth.shape, generator=g), gt)
    assert noisy.terms[name] > 1e-3 and noisy.total > noisy.terms[name]  # grad term too
    # camera-aware (unchanged handling): a 250 px lens sees depth 2x the canonical 500 px one
    aware, camera = DepthLoss(loss=name, canonical_focal=500.0), torch.tensor([[250.0] * 4] * 2)
    canonical = truth - math.log(0.5)  # what the head predicts for the 500 px lens
    assert _call(aware, canonical, gt, camera=camera).total.item() == pytest.approx(0, abs=1e-5)
    assert _call(aware, truth, gt, camera=camera).terms[name] > 0.05  # wrong metric scale


@pytest.mark.parametrize("name", NAMES)
def test_hand_computed_value_on_2x2(name: str) -> None:
    result = _call(DepthLoss(loss=name), GT.clamp(min=1).log() + ERR, GT)
    assert result.terms[name].item() == pytest.approx(HAND[name], rel=1e-5)
    expected_total = HAND[name] + 0.5 * result.terms["grad"].item()
    assert result.total.item() == pytest.approx(expected_total, rel=1e-5)
    assert result.terms["grad"].item() > 0  # the 3 pixels' errors differ: not smooth


@pytest.mark.parametrize("name", NAMES)
def test_invalid_pixels_change_neither_value_nor_gradient(name: str) -> None:
    gt = torch.cat([GT, GT])  # [2, 2, 2]
    valid = torch.ones_like(gt, dtype=torch.bool)
    valid[0, 0, 1] = False  # padding
    has = torch.tensor([True, False])  # image 1 has no depth label at all
    base = GT.clamp(min=1).log() + ERR
    loss = DepthLoss(loss=name)
    values = []
    for junk in (0.0, 50.0):
        pred = torch.cat([base, base]).clone()
        pred[0, 1, 0] += junk  # unmeasured (depth 0)
        pred[0, 0, 1] += junk  # padding
        pred[1] += junk  # unlabeled image
        pred.requires_grad_(True)
        result = _call(loss, pred, gt, valid=valid, has=has)
        result.total.backward()
        values.append(result.terms[name].item())
        assert pred.grad[0, 1, 0] == 0 and pred.grad[0, 0, 1] == 0 and (pred.grad[1] == 0).all()
        assert pred.grad[0, 0, 0] != 0 and pred.grad[0, 1, 1] != 0
    assert values[0] == values[1]
    two_pixels = (0.05, 2.0)  # what is left: pixels (0, 0) and (1, 1) of image 0
    if name == "l1":
        assert values[0] == pytest.approx(sum(two_pixels) / 2, rel=1e-6)


def test_yaml_key_reaches_the_built_loss() -> None:
    module = PerceptionModule(net=NET, ema_decay=0.0, loss={"depth_loss": "huber"})
    depth = module.loss.depth
    assert depth.loss == "huber" and module.hparams.loss["depth_loss"] == "huber"
    assert depth.canonical_focal == module.canonical_focal  # camera handling as before
    camera = torch.tensor([[500.0, 500.0, 48.0, 32.0]])  # the canonical lens: scale 1
    pred = GT.clamp(min=1).log() + ERR
    result = _call(depth, pred, GT, camera=camera)
    assert set(result.terms) == {"huber", "grad"}
    assert result.terms["huber"].item() == pytest.approx(HAND["huber"], rel=1e-5)
    beta = PerceptionModule(
        net=NET, ema_decay=0.0, loss={"depth_loss": "huber", "depth_loss_beta": 1.0}
    )
    assert beta.loss.depth.beta == 1.0 and beta.hparams.loss["depth_loss_beta"] == 1.0


def test_unknown_depth_loss_is_one_clear_error() -> None:
    valid = "silog, l1, l2, smooth_l1, huber"
    with pytest.raises(PerceptionError, match=f"unknown depth loss 'berhu'; valid: {valid}"):
        PerceptionModule(net=NET, loss={"depth_loss": "berhu"})
    with pytest.raises(PerceptionError, match=valid):
        LossConfig(depth_loss="L1")
    with pytest.raises(PerceptionError, match=valid):
        DepthLoss(loss="mse")


# ---------------------------------------------------------------- one real training step
def fit_one_step(root: Path, seed: int = 0, **module_kwargs) -> tuple[PerceptionModule, L.Trainer]:
    """One optimizer step of a tiny model through Lightning; returns module and trainer."""
    torch.manual_seed(seed)
    module = PerceptionModule(
        CLASSES, SIZE, ema_decay=0.0, overlay_images=0, warmup_steps=0, **module_kwargs
    )
    data = PerceptionDataModule(
        train=[str(root)], classes=CLASSES, image_size=SIZE, batch_size=2, num_workers=0,
        augment=False,
    )  # fmt: skip
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0,
    )  # fmt: skip
    torch.manual_seed(seed)  # the same batch whatever happened during construction
    trainer.fit(module, data)
    return module, trainer


def _params(module: PerceptionModule) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.model.parameters()])


@pytest.fixture(scope="module")
def initial() -> torch.Tensor:
    torch.manual_seed(0)
    return _params(PerceptionModule(CLASSES, SIZE, net=NET, ema_decay=0.0))


def _check_step(module: PerceptionModule, trainer: L.Trainer, initial: torch.Tensor) -> None:
    assert trainer.global_step == 1
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    after = _params(module)
    assert torch.isfinite(after).all() and not torch.equal(after, initial)


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "prelu", "elu", "gelu", "silu"])
def test_every_activation_builds_and_trains_a_finite_step(act: str, tiny_dataset) -> None:
    assert set(ACT_NAMES) == {"relu", "leaky_relu", "prelu", "elu", "gelu", "silu"}
    module, trainer = fit_one_step(tiny_dataset(), net={**NET, "act": act})
    kind = type(make_act(act))
    assert sum(isinstance(m, kind) for m in module.model.neck.modules()) > 0
    assert module.hparams.net["act"] == act
    torch.manual_seed(0)
    initial = _params(PerceptionModule(CLASSES, SIZE, net={**NET, "act": act}, ema_decay=0.0))
    _check_step(module, trainer, initial)


@pytest.mark.parametrize(
    ("name", "momentum"),
    [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.9), ("adamw", 0.9), ("rmsprop", 0.9),
     ("adagrad", 0.9)],
)  # fmt: skip
def test_every_optimizer_builds_and_trains_a_finite_step(
    name: str, momentum: float, tiny_dataset, initial: torch.Tensor
) -> None:
    module, trainer = fit_one_step(tiny_dataset(), net=NET, optimizer=name, momentum=momentum)
    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw", "rmsprop", "adagrad"}
    assert type(trainer.optimizers[0]) is OPTIMIZERS[name]
    _check_step(module, trainer, initial)


def test_sgd_momentum_changes_the_optimizer_state_and_the_step(
    tiny_dataset, initial: torch.Tensor
) -> None:
    root = tiny_dataset()
    runs = {m: fit_one_step(root, net=NET, optimizer="sgd", momentum=m, lr=0.05) for m in (0, 0.9)}
    plain, heavy = (runs[m][1].optimizers[0] for m in (0, 0.9))
    assert [g["momentum"] for g in plain.param_groups] == [0.0, 0.0]
    assert not any(g["nesterov"] for g in plain.param_groups)
    assert all(s.get("momentum_buffer") is None for s in plain.state.values())
    assert [g["momentum"] for g in heavy.param_groups] == [0.9, 0.9]
    assert all(g["nesterov"] for g in heavy.param_groups)
    buffers = [s["momentum_buffer"] for s in heavy.state.values()]
    assert len(buffers) == sum(len(g["params"]) for g in heavy.param_groups)
    assert sum(float(b.abs().sum()) for b in buffers) > 0  # (timm zero-inits some BN: 0 grad)
    # first step: buffer = g, Nesterov update g + 0.9 * buffer = 1.9 g, against g
    step0 = _params(runs[0][0]) - initial
    step9 = _params(runs[0.9][0]) - initial
    assert (step9.norm() / step0.norm()).item() == pytest.approx(1.9, rel=1e-3)
    assert torch.nn.functional.cosine_similarity(step0, step9, dim=0) > 0.9999
