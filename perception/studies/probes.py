"""Linear probes: how much of a target a frozen feature vector exposes *linearly*.

A probe is logistic regression on per-pixel features (a 1x1 conv on the feature map is
the same map), fitted on one set of images and scored on others. The score is ROC AUC:
it needs no threshold, it is 0.5 for features that carry no information whatever the
share of positives (vehicle pixels are ~8 %, edge labels are balanced by construction),
and so scores stay comparable across stages and targets.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

WEIGHT_DECAY = 1e-4  # on standardised features: keeps 512-channel fits well posed
MAX_ITER = 100


def auc(scores: Tensor, labels: Tensor) -> float:
    """ROC AUC of ``scores [n]`` for boolean ``labels [n]`` (Mann-Whitney, ties averaged).

    NaN when only one class is present: there is nothing to rank.
    """
    s = scores.detach().double().cpu().numpy()
    y = labels.bool().cpu().numpy()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not (n_pos and n_neg):
        return math.nan
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties averaged
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def fit_probe(x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class-balanced logistic regression of ``y [n]`` on ``x [n, C]`` by L-BFGS.

    Features are standardised with the training statistics (a random backbone's maps are
    not normalised; without it the fit would measure scale, not information). Positives
    are weighted by negatives / positives so a rare class is not answered by the bias.
    Returns ``(mean [C], std [C], weight [C], bias [])``.
    """
    x, y = x.float(), y.float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)  # [C]: a constant channel stays 0
    z = (x - mean) / std  # [n, C]
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(x.shape[1], generator=gen) * 0.01).requires_grad_()
    bias = torch.zeros((), requires_grad=True)
    pos = y.sum().clamp_min(1.0)
    pos_weight = (len(y) - pos).clamp_min(1.0) / pos
    opt = torch.optim.LBFGS(
        [weight, bias], max_iter=MAX_ITER, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def closure() -> Tensor:
        opt.zero_grad()
        logits = z @ weight + bias  # [n]
        loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
        loss = loss + WEIGHT_DECAY * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, weight.detach(), bias.detach()


def probe_auc(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, seed: int) -> float:
    """Fit on ``(x_train [n, C], y_train [n])`` and return the AUC on the held-out pair."""
    if x_train.dim() != 2 or y_train.dim() != 1 or x_test.dim() != 2 or y_test.dim() != 1:
        raise ValueError("probe_auc: features must be [n, C] and labels [n]")
    if not (0 < int(y_train.sum()) < len(y_train)):
        return math.nan  # one class only: no probe to fit
    mean, std, weight, bias = fit_probe(x_train, y_train, seed)
    with torch.no_grad():
        scores = ((x_test.float() - mean) / std) @ weight + bias  # [m]
    return auc(scores, y_test)
