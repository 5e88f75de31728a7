"""Training curves from a Lightning ``metrics.csv``: per-task losses and validation metrics.

``python -m perception.training.curves runs/.../metrics.csv [more.csv ...] docs/curves.png``

A run resumed from a checkpoint logs to a new CSV; pass every part in order and the
curves continue across the resume (a step logged twice keeps its last value).
"""

from __future__ import annotations

import csv
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from perception.errors import PerceptionError

# Unweighted task losses only: the combined loss of uncertainty weighting adds learned
# log-variances and goes negative, which a log axis cannot show.
LOSS_KEYS = ("train/det", "train/seg", "train/depth")
VAL_KEYS = ("val/det/mAP50", "val/lane/iou", "val/drivable/miou", "val/depth/delta1", "val/score")


def read_series(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
) -> dict[str, list[tuple[int, float]]]:
    """``key -> [(step, value)]`` sorted by step, over every non-empty cell of the CSVs."""
    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    merged: dict[str, dict[int, float]] = defaultdict(dict)
    for path in paths:
        if not Path(path).is_file():
            raise PerceptionError(f"{path}: metrics CSV not found")
        with open(path, newline="") as f:
            rows = csv.DictReader(f)
            if "step" not in (rows.fieldnames or ()):
                raise PerceptionError(f"{path}: not a Lightning metrics.csv (no 'step' column)")
            for row in rows:
                step = int(row["step"])
                for key, value in row.items():
                    if key not in ("step", "epoch") and value not in ("", None):
                        merged[key][step] = float(value)
    return {key: sorted(values.items()) for key, values in merged.items()}


def plot_curves(
    metrics_csv: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike
) -> Path:
    """Two panels: training losses (log scale) and validation metrics against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_series(metrics_csv)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for key in LOSS_KEYS:
        if series.get(key):
            steps, values = zip(*series[key], strict=True)
            left.plot(steps, values, label=key.removeprefix("train/"))
    left.set(yscale="log", xlabel="step", title="training loss per task (unweighted)")
    for key in VAL_KEYS:
        if series.get(key):
            steps, values = zip(*series[key], strict=True)
            right.plot(steps, values, marker="o", label=key.removeprefix("val/"))
    right.set(xlabel="step", ylim=(0, 1), title="validation metrics")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.splitlines()[2])
    try:
        print(plot_curves(sys.argv[1:-1], sys.argv[-1]))
    except PerceptionError as err:
        sys.exit(f"curves: error: {err}")
