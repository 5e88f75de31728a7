"""Fold BatchNorm into the convolution before it, for inference (torch and ONNX export).

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` is one conv with
rescaled weights and a new bias: the same output, one pass over the feature map less.
ONNX Runtime does this when it loads a graph; eager PyTorch does not, so the torch path
does it here.

Which BatchNorm follows which conv is read from the module structure: a ``conv`` /
``norm`` pair (``layers.ConvNormAct``), ``convN`` / ``bnN`` pairs (timm's ResNet blocks and
stem) and a ``Conv2d`` directly followed by a ``BatchNorm2d`` in an ``nn.Sequential``
(timm's downsample paths). The detection towers share each conv across levels with a
norm per level, so each level gets a folded copy of the conv (``LevelTower``). A backbone
whose blocks apply a norm elsewhere (pre-activation designs) would be folded wrongly by
those names, so ``fold_batchnorm`` checks the folded model against the original on a
random batch and keeps the original if they differ.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import re
from collections.abc import Iterator

import torch
from torch import nn

from perception.models.heads.detection import LevelTower, SharedTower

log = logging.getLogger(__name__)


@torch.no_grad()
def fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``conv`` becomes ``bn(conv(x))`` in eval mode (in place; ``bn`` is left alone)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv name, norm name) of ``module``'s direct children that fold, each once."""
    children = dict(module.named_children())
    candidates = [("conv", "norm")]
    for name in children:
        match = re.fullmatch(r"conv(\d*)", name)
        if match:
            candidates.append((name, f"bn{match.group(1)}"))
    if isinstance(module, nn.Sequential):
        candidates += list(itertools.pairwise(children))
    return [
        (a, b)
        for a, b in dict.fromkeys(candidates)
        if isinstance(children.get(a), nn.Conv2d) and isinstance(children.get(b), nn.BatchNorm2d)
    ]


def fold_tower(tower: SharedTower) -> LevelTower | None:
    """Per-level copies of ``tower``'s convs with that level's BatchNorms folded in, or
    ``None`` when its norms are not BatchNorms."""
    if not all(isinstance(n, nn.BatchNorm2d) for norms in tower.norms for n in norms):
        return None
    levels = []
    for norms in tower.norms:
        convs = [copy.deepcopy(conv) for conv in tower.convs]
        for conv, bn in zip(convs, norms, strict=True):
            fold_into(conv, bn)
        levels.append(convs)
    return LevelTower(levels, tower.acts)


@torch.no_grad()
def fold_batchnorm(
    model: nn.Module, image_size: tuple[int, int], atol: float = 1e-3
) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with each foldable BatchNorm folded into its conv
    (replaced by ``nn.Identity``), and how many were folded. If the copy's outputs differ
    from the original's by more than ``atol`` on a random ``[1, 3, H, W]`` image, the
    original is returned (0 folded) with a warning."""
    model = model.eval()
    folded = copy.deepcopy(model)
    count = 0
    for module in list(folded.modules()):
        for conv_name, bn_name in _pairs(module):
            bn = getattr(module, bn_name)
            if isinstance(bn, nn.BatchNorm2d):  # not already folded through another parent
                fold_into(getattr(module, conv_name), bn)
                setattr(module, bn_name, nn.Identity())
                count += 1
        for name, child in list(module.named_children()):
            if isinstance(child, SharedTower) and (tower := fold_tower(child)) is not None:
                setattr(module, name, tower)
                count += sum(len(norms) for norms in child.norms)
    device = next(model.parameters()).device
    images = torch.rand(1, 3, *image_size, device=device)
    with exact_fp32():
        worst = max(
            float((a.float() - b.float()).abs().max())
            for a, b in zip(_tensors(model(images)), _tensors(folded(images)), strict=True)
        )
    if worst > atol:
        log.warning("BatchNorm folding changed the outputs by %.3g; kept the unfolded model", worst)
        return model, 0
    return folded, count


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off for the block, then as it was. cuDNN runs fp32 convolutions in TF32 by
    default (a 10-bit mantissa): a folded and an unfolded model then differ by ~1e-2 from
    rounding alone (0.02 on an H200), which the fold check must not read as a wrong fold."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _tensors(outputs: object) -> list[torch.Tensor]:
    """The tensors of a model's outputs (a tensor, a tuple/list, or a dataclass of them)."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    values = outputs if isinstance(outputs, list | tuple) else vars(outputs).values()
    return [v for v in values if isinstance(v, torch.Tensor)]
