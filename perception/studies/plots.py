"""The study figures' shared pieces: loss curves over seeds and grouped metric bars.

Everything is drawn from ``Result.raw``-shaped runs (``{"metrics", "curve"}`` per seed),
so a figure can be redrawn from a saved JSON without retraining.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on a training box)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (NaNs skipped), as long as ``values``."""
    x = np.asarray(values, dtype=float)
    out = np.empty_like(x)
    for i in range(len(x)):
        part = x[max(0, i - window + 1) : i + 1]
        part = part[~np.isnan(part)]
        out[i] = part.mean() if part.size else math.nan
    return out


def curve(run: Mapping[str, Any], keys: Sequence[str], relative: bool = False) -> np.ndarray:
    """One run's per-step sum of the curve ``keys`` (e.g. the three unweighted task losses);
    ``relative``: divided by its mean over the first 5 % of the steps, so losses of
    different definitions (and scales) compare as a fraction of where they started."""
    values = np.sum([np.asarray(run["curve"][k], dtype=float) for k in keys], axis=0)
    if relative:
        values = values / np.nanmean(values[: max(1, len(values) // 20)])
    return values


def plot_curves(
    ax,
    arms: Mapping[str, Sequence[Mapping[str, Any]]],
    keys: Sequence[str],
    *,
    title: str,
    log_scale: bool = True,
    relative: bool = False,
) -> None:
    """Per arm: the seed mean of the summed ``keys`` curve (smoothed), shaded by the
    seeds' min..max."""
    for arm, runs in arms.items():
        curves = np.stack([curve(r, keys, relative) for r in runs])  # [seeds, steps]
        window = max(1, curves.shape[1] // 20)
        smoothed = np.stack([smooth(c, window) for c in curves])
        steps = np.arange(1, curves.shape[1] + 1)
        (line,) = ax.plot(steps, smoothed.mean(axis=0), label=arm)
        ax.fill_between(steps, smoothed.min(0), smoothed.max(0), color=line.get_color(), alpha=0.2)
    label = " + ".join(keys) + (" / its start" if relative else "")
    ax.set(xlabel="step", ylabel=label, title=title)
    if log_scale:
        ax.set_yscale("log")
    ax.legend(fontsize=8)


def bar_metrics(
    ax,
    arms: Mapping[str, Sequence[Mapping[str, Any]]],
    keys: Sequence[str],
    *,
    title: str = "validation metrics (mean ± std over seeds)",
    lower_better: Sequence[str] = ("depth/abs_rel",),
) -> None:
    """Grouped bars: one group per metric key, one bar per arm, std error bars; the keys
    where lower is better are marked."""
    width = 0.8 / max(len(arms), 1)
    x = np.arange(len(keys))
    for i, (arm, runs) in enumerate(arms.items()):
        values = np.array([[r["metrics"][k] for k in keys] for r in runs], dtype=float)
        std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(keys))
        ax.bar(x + (i - (len(arms) - 1) / 2) * width, values.mean(0), width, yerr=std, label=arm)
    labels = [f"{k} (lower better)" if k in lower_better else k for k in keys]
    ax.set_xticks(x, labels, rotation=20, fontsize=8)
    ax.set(title=title)
    ax.legend(fontsize=8)


def save(fig, path: Path) -> Path:
    """Write the figure as PNG and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
