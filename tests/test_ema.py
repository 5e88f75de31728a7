"""Why the package keeps its own EMA rather than Lightning's ``EMAWeightAveraging``.

Lightning's callback averages with a fixed decay (``torch.optim.swa_utils.get_ema_avg_fn``)
from the first step. Our runs are often short (CPU fine-tunes, the studies' few hundred
steps) with the decay of a long run, and then a fixed-decay average is still mostly the
random initialisation when validation and the release read it. ``ModelEMA`` ramps its
decay up, so the average forgets the initial weights within a few hundred steps and is the
same long-run EMA later. It is also a submodule, saved as ``ema.module.*`` in every
checkpoint, which is what ``load_model`` and ``init_weights`` read.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from perception.errors import PerceptionError
from perception.training.ema import ModelEMA
from perception.training.module import PerceptionModule

DECAY = 0.9995  # the release recipe's
STEPS = 300


def _train_with_both() -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    start = nn.Linear(8, 1)
    start.load_state_dict(model.state_dict())
    ours = ModelEMA(model, DECAY)
    fixed = AveragedModel(model, multi_avg_fn=None, avg_fn=get_ema_avg_fn(DECAY))
    target = torch.randn(8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(STEPS):
        x = torch.randn(32, 8)
        loss = ((model(x).squeeze(1) - x @ target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ours.update(model)
        fixed.update_parameters(model)
    return model, start, ours.module, fixed.module


def _distance(a: nn.Module, b: nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return float(torch.cat([(p - q).detach().flatten() for p, q in pairs]).norm())


def test_ramped_ema_forgets_the_initialisation_a_fixed_decay_keeps() -> None:
    live, start, ours, fixed = _train_with_both()
    travelled = _distance(live, start)  # how far training moved the weights
    assert travelled > 1.0
    # fixed decay: 0.9995 ** 300 = 86 % of the average is still the initial weights
    assert _distance(fixed, live) > 0.7 * travelled
    # ramped: the average has followed training (decay ~0.07 after 300 of 2000 ramp steps)
    assert _distance(ours, live) < 0.05 * travelled


def test_ramped_ema_reaches_the_configured_decay_on_long_runs() -> None:
    ema = ModelEMA(nn.Linear(2, 1), DECAY, ramp=2000.0)
    ema.updates.fill_(20_000)  # ten ramps in
    model = nn.Linear(2, 1)
    before = [p.clone() for p in ema.module.parameters()]
    ema.update(model)
    for avg, old, new in zip(ema.module.parameters(), before, model.parameters(), strict=True):
        blended = DECAY * (1 - torch.exp(torch.tensor(-20_001 / 2000.0))) * old
        expected = blended + (1 - DECAY * (1 - torch.exp(torch.tensor(-20_001 / 2000.0)))) * new
        torch.testing.assert_close(avg, expected.detach())


def test_the_ramp_is_a_training_setting() -> None:
    """``model.ema_ramp`` reaches the EMA: a 1000-step run with the default 2000-step ramp
    ends at an effective decay of 0.39, an average of the last ~2 steps."""
    net = {"backbone": "resnet18", "neck_width": 16, "head_width": 16}
    module = PerceptionModule(net=net, image_size=(64, 96), ema_decay=0.99, ema_ramp=200)
    assert module.ema.ramp == 200 and module.hparams.ema_ramp == 200
    with pytest.raises(PerceptionError, match="ema_ramp must be >= 1"):
        PerceptionModule(net=net, image_size=(64, 96), ema_ramp=0)
