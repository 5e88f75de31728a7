"""``deep_vs_wide``: at one parameter budget, is a deeper, narrower backbone better?

Plain conv3x3-BN-ReLU backbones (``plain:<depth>x<width>``, ``models.plain``: no
residuals, so depth is the only path the signal takes) with 4, 8, 16 and 32 layers, each
as wide as matches the backbone parameters of the 4-layer, width-96 stack (3.6 M; the
match is within the rounding of one channel, ~6 % at 32 layers). Neck, heads, data,
steps and seeds are the same for every arm; ReLU everywhere.

Time at budget 1.0: 8 runs of 240 steps, ~8.5 min on a 2-core CPU (0.25 CPU s per step on
average, the 32-layer arm ~1.5x the 4-layer one; measured as ``common`` describes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perception.models.plain import matched_width, plain_params
from perception.studies import common, cost, plots
from perception.studies.report import Result, mean_std

NAME = "deep_vs_wide"
DEPTHS: tuple[int, ...] = (4, 8, 16, 32)
REFERENCE: tuple[int, int] = (4, 96)  # (depth, width) whose parameter count all arms match
ACT = "relu"
PLOTTED = ("det/mAP50", "lane/iou", "drivable/miou", "depth/delta1")  # all higher-better


def arms() -> dict[str, tuple[int, int]]:
    """``"<depth>x<width>"`` -> (depth, width), widths matched to ``REFERENCE``."""
    target = plain_params(*REFERENCE)
    pairs = [(d, matched_width(d, target)) for d in DEPTHS]
    return {f"{d}x{w}": (d, w) for d, w in pairs}


def arm_config(depth: int, width: int) -> dict[str, Any]:
    return {"net": {"backbone": f"plain:{depth}x{width}", "act": ACT}}


def run(out: Path, budget: float = 1.0, seeds: Sequence[int] = (0, 1)) -> Result:
    """Train every depth/width pair over ``seeds``; measure costs; table and figure."""
    out = Path(out)
    data = common.prepare_data(out, budget)
    steps = common.study_steps(budget)
    pairs = arms()
    configs = {arm: arm_config(depth, width) for arm, (depth, width) in pairs.items()}
    models = {arm: common.build_arm_model(config) for arm, config in configs.items()}
    costs = cost.measure(models, data.image_size)
    raw: dict[str, Any] = {
        arm: {
            "depth": pairs[arm][0],
            "width": pairs[arm][1],
            "config": config,
            "cost": {**costs[arm], "backbone_params": cost.param_count(models[arm].backbone)},
            "runs": common.run_seeds(f"{NAME}/{arm}", config, data, steps, seeds, out),
        }
        for arm, config in configs.items()
    }
    rows = [
        {
            "arm": arm,
            "depth": entry["depth"],
            "width": entry["width"],
            "backbone_params_M": entry["cost"]["backbone_params"] / 1e6,
            "params_M": entry["cost"]["params"] / 1e6,
            "GFLOPs": entry["cost"]["gflops"],
            "latency_ms": entry["cost"]["latency_ms"],
            **common.metric_cells(entry["runs"]),
            "train_s": mean_std([r["train_s"] for r in entry["runs"]])[0],
        }
        for arm, entry in raw.items()
    ]
    _plot(out / f"{NAME}.png", raw)
    setup = {
        **data.describe(),
        "steps": steps,
        "seeds": [int(s) for s in seeds],
        "shared_config": common.arm_kwargs(arm_config(*REFERENCE), steps),
        "matched": f"backbone parameters of plain:{REFERENCE[0]}x{REFERENCE[1]} "
        f"({plain_params(*REFERENCE)})",
    }
    columns = [*rows[0]] if rows else ["arm"]
    return Result(NAME, columns, rows, f"{NAME}.png", setup, raw)


def _plot(path: Path, raw: dict[str, Any]) -> Path:
    """Left: headline metrics against depth (mean ± std). Right: GFLOPs and latency."""
    plt = plots.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    depths = [entry["depth"] for entry in raw.values()]
    for key in PLOTTED:
        values = np.array([[r["metrics"][key] for r in e["runs"]] for e in raw.values()])
        std = values.std(axis=1, ddof=1) if values.shape[1] > 1 else np.zeros(len(depths))
        left.errorbar(depths, values.mean(axis=1), yerr=std, marker="o", capsize=3, label=key)
    left.set(xscale="log", xlabel="3x3 layers (width shrinks to keep parameters)")
    left.set(title="validation metrics at matched parameters")
    left.set_xticks(
        depths, [f"{d}\n(w {e['width']})" for d, e in zip(depths, raw.values(), strict=True)]
    )
    left.legend(fontsize=8)
    gflops = [e["cost"]["gflops"] for e in raw.values()]
    latency = [e["cost"]["latency_ms"] for e in raw.values()]
    right.plot(depths, gflops, marker="o", label="GFLOPs")
    twin = right.twinx()
    twin.plot(depths, latency, marker="s", color="C1", label="latency (ms)")
    right.set(xscale="log", xlabel="3x3 layers", ylabel="GFLOPs", title="cost per image")
    twin.set(ylabel="CPU latency, batch 1 (ms)")
    right.set_xticks(depths, [str(d) for d in depths])
    handles = [*right.get_lines(), *twin.get_lines()]
    right.legend(handles, [h.get_label() for h in handles], fontsize=8)
    for ax in (left, right):
        ax.minorticks_off()
    return plots.save(fig, path)
