"""BatchNorm folding for inference (torch and the ONNX export): same outputs, no norms
left, and a model whose names mislead the folding is left as it was."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from perception.models import ModelConfig, build_model
from perception.models.fold import fold_batchnorm, fold_into, fold_tower
from perception.models.heads.detection import LevelTower, SharedTower


def _randomise_bn(model: nn.Module) -> nn.Module:
    """BatchNorms with non-trivial statistics, as after training (fresh ones are identity)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g))
    return model.eval()


def test_fold_into_equals_conv_then_bn() -> None:
    conv, bn = nn.Conv2d(3, 4, 3, bias=False), _randomise_bn(nn.BatchNorm2d(4))
    x = torch.randn(2, 3, 9, 9)
    expected = bn(conv(x))
    fold_into(conv, bn)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_each_level_of_a_folded_tower_equals_the_shared_tower() -> None:
    """The detection towers share convs across levels and keep a norm per level: each
    level's folded convs must give that level's outputs."""
    tower = _randomise_bn(SharedTower(8, 16, depth=2, num_levels=3))
    folded = fold_tower(tower)
    assert isinstance(folded, LevelTower)
    x = torch.randn(2, 8, 11, 13)
    with torch.no_grad():
        for level in range(3):
            torch.testing.assert_close(folded(x, level), tower(x, level), rtol=1e-5, atol=1e-5)
    assert fold_tower(SharedTower(8, 16, depth=2, num_levels=3, norm="none")) is None


def test_folded_model_gives_the_same_outputs_with_fewer_norms() -> None:
    model = _randomise_bn(
        build_model(ModelConfig(backbone="resnet18", neck_width=16, head_width=16))
    )
    before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded, count = fold_batchnorm(model, (64, 96))
    after = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # timm blocks, stem, downsample, ours; the detection towers' per-level norms too
    assert count == before and after == 0
    towers = (folded.detection.cls_tower, folded.detection.box_tower)
    assert all(isinstance(t, LevelTower) and len(t.levels) == 3 for t in towers)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        a, b = model(x), folded(x)
    for name in ("cls_logits", "box_dist", "seg_logits", "depth_log"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-4, atol=1e-4)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == before  # a copy


class _PreActivation(nn.Module):
    """Named like a ResNet block but normalising the input before the conv."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(3)
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.bn1(x))


def test_misleading_names_keep_the_original_model(caplog: pytest.LogCaptureFixture) -> None:
    model = _randomise_bn(_PreActivation())
    with caplog.at_level(logging.WARNING):
        out, count = fold_batchnorm(model, (8, 8))
    assert out is model and count == 0
    assert "kept the unfolded model" in caplog.text


class _RecordTF32(nn.Module):
    """A conv + BN that notes whether TF32 was allowed each time it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.seen = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return self.bn(self.conv(x))


def test_the_fold_check_runs_without_tf32_and_restores_it() -> None:
    """On a GPU, TF32 rounding alone moved the outputs by 0.02, above the check's 1e-3, and
    every fold was refused: the check compares in exact fp32, and leaves the flags as set."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        model = _randomise_bn(_RecordTF32())
        folded, count = fold_batchnorm(model, (8, 8))
        assert count == 1 and folded is not model
        assert model.seen == [(False, False)] and folded.seen == [(False, False)]
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
