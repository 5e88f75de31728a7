"""One knob, several settings: the shape of the activations, depth-loss and optimizer studies.

Each arm is a set of ``PerceptionModule`` overrides; every arm trains on the same data for
the same steps from the same seeds (``common.train_arm``). The table holds the final
metrics as mean ± std over seeds; the figure the loss curves beside the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from perception.studies import common, plots
from perception.studies.report import Result, mean_std


def sweep(
    study: str,
    arms: Mapping[str, Mapping[str, Any]],
    out: Path,
    budget: float,
    seeds: Sequence[int],
    *,
    columns: Mapping[str, Mapping[str, Any]] | None = None,
    curve_keys: Sequence[str] = ("det", "seg", "depth"),
    relative: bool = False,
    base: Mapping[str, Any] | None = None,
    notes: Mapping[str, Any] | None = None,
) -> Result:
    """Train every arm over ``seeds`` and tabulate.

    Args:
        study: the study's name (file names, ``Result.study``).
        arms: arm name -> its ``PerceptionModule`` overrides (on top of ``base``).
        columns: arm name -> extra table cells that describe it (e.g. its ``lr``).
        curve_keys: the logged losses summed into the plotted curve; the unweighted task
            losses by default (the uncertainty-weighted total can go negative).
        relative: plot each curve as a fraction of its start (losses of different scales).
        base: overrides every arm shares (e.g. the backbone).
        notes: more ``setup`` entries for the doc (what is varied, why).
    """
    out = Path(out)
    data = common.prepare_data(out, budget)
    steps = common.study_steps(budget)
    raw: dict[str, Any] = {}
    for arm, overrides in arms.items():
        config = common.merge(base or {}, overrides)
        runs = common.run_seeds(f"{study}/{arm}", config, data, steps, seeds, out)
        raw[arm] = {"config": config, "runs": runs}
    extra = columns or {}
    extra_keys = list(dict.fromkeys(k for cells in extra.values() for k in cells))
    rows = [
        {
            "arm": arm,
            **extra.get(arm, {}),
            **common.metric_cells(entry["runs"]),
            "train_s": mean_std([r["train_s"] for r in entry["runs"]])[0],
        }
        for arm, entry in raw.items()
    ]
    _plot(out / f"{study}.png", study, raw, curve_keys, relative)
    setup = {
        **data.describe(),
        "steps": steps,
        "seeds": [int(s) for s in seeds],
        "shared_config": common.arm_kwargs(base or {}, steps),
        "curve": " + ".join(curve_keys) + (" (relative to its start)" if relative else ""),
        **(notes or {}),
    }
    return Result(
        study=study,
        columns=["arm", *extra_keys, *common.METRIC_KEYS, "train_s"],
        rows=rows,
        plot=f"{study}.png",
        setup=setup,
        raw=raw,
    )


def _plot(
    path: Path, study: str, raw: Mapping[str, Any], curve_keys: Sequence[str], relative: bool
) -> Path:
    plt = plots.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    arms = {arm: entry["runs"] for arm, entry in raw.items()}
    title = f"{study}: training loss (seed mean)"
    plots.plot_curves(left, arms, curve_keys, title=title, relative=relative)
    plots.bar_metrics(right, arms, common.METRIC_KEYS)
    return plots.save(fig, path)
