"""``shared``: one backbone serving three heads versus one network per task.

Arms (resnet18, same data, steps and seeds):

* ``shared``: the normal model, trained on the three tasks at once.
* ``det_only``, ``seg_only`` (lane + drivable), ``depth_only``: the same architecture
  trained on its task alone. Each is built as the full model but trained with the
  ``fixed`` combiner and zero loss weights on the other two tasks: their loss adds
  nothing, so their heads get no gradient and the backbone serves one task only. This
  leaves the training code untouched (the other ways, partially labeled data sets with
  ``untrained_tasks``, would make the data differ between arms). Its cost is measured on
  what such a network would deploy, ``cost.TaskNetwork``: backbone, neck, its own head.
* ``separate``: the three single-task networks together, the alternative to ``shared``:
  each task's metrics from its own network, the costs summed.

Every network gets the same number of optimizer steps on the same batches, so each task
gets as much training in ``separate`` as in ``shared`` (``separate`` pays 3x the
training compute). The ``shared`` arm also uses ``fixed`` weights (all 1), so the arms
differ in sharing only, not in loss weighting.

Time at budget 1.0: 8 runs of 240 steps, ~14.5 min on a 2-core CPU (0.43 CPU s per
step, measured as ``common`` describes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perception.studies import common, cost, plots
from perception.studies.report import Result, mean_std

NAME = "shared"
TASKS: tuple[str, ...] = ("det", "seg", "depth")
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "det": ("det/mAP50", "det/mAP50_95"),
    "seg": ("lane/iou", "drivable/miou"),
    "depth": ("depth/abs_rel", "depth/delta1"),
}
COST_KEYS: tuple[str, ...] = ("params", "gflops", "latency_ms")


def arm_config(task: str | None) -> dict[str, Any]:
    """Module overrides: all tasks weighted 1 (``None``), or ``task`` alone."""
    weights = {t: float(task is None or t == task) for t in TASKS}
    return {"combiner": "fixed", "loss_weights": weights}


def run(out: Path, budget: float = 1.0, seeds: Sequence[int] = (0, 1)) -> Result:
    """Train the shared model and the three single-task ones over ``seeds``; measure
    their costs; table and figure."""
    out = Path(out)
    data = common.prepare_data(out, budget)
    steps = common.study_steps(budget)
    configs = {"shared": arm_config(None), **{f"{t}_only": arm_config(t) for t in TASKS}}
    networks = {"shared": common.build_arm_model(configs["shared"])}
    for task in TASKS:  # what each single-task deployment runs
        networks[f"{task}_only"] = cost.TaskNetwork(
            common.build_arm_model(configs[f"{task}_only"]), task
        )
    costs = cost.measure(networks, data.image_size)
    raw: dict[str, Any] = {
        arm: {
            "config": config,
            "cost": costs[arm],
            "runs": common.run_seeds(f"{NAME}/{arm}", config, data, steps, seeds, out),
        }
        for arm, config in configs.items()
    }
    raw["separate"] = {
        "cost": {k: sum(raw[f"{t}_only"]["cost"][k] for t in TASKS) for k in COST_KEYS},
        "runs": [
            {
                "seed": runs[0]["seed"],
                "metrics": {
                    k: r["metrics"][k]
                    for t, r in zip(TASKS, runs, strict=True)
                    for k in TASK_METRICS[t]
                },
                "train_s": sum(r["train_s"] for r in runs),
            }
            for runs in zip(*(raw[f"{t}_only"]["runs"] for t in TASKS), strict=True)
        ],
    }
    order = ["shared", "separate", *(f"{t}_only" for t in TASKS)]
    rows = [_row(arm, raw[arm]) for arm in order]
    _plot(out / f"{NAME}.png", raw)
    setup = {
        **data.describe(),
        "steps": steps,
        "seeds": [int(s) for s in seeds],
        "shared_config": common.arm_kwargs(arm_config(None), steps),
        "cost": f"params; GFLOPs of one {data.image_size[0]}x{data.image_size[1]} forward "
        f"pass (FlopCounterMode, 1 MAC = 2 FLOPs); median CPU fp32 batch-1 latency over "
        f"{cost.LATENCY_ITERS} runs (separate: the sum of the three networks)",
    }
    columns = ["arm", "networks", "params_M", "GFLOPs", "latency_ms", *common.METRIC_KEYS]
    return Result(NAME, [*columns, "train_s"], rows, f"{NAME}.png", setup, raw)


def _row(arm: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The table line: costs as numbers, each task metric as mean ± std over seeds."""
    task = arm.removesuffix("_only")
    keys = TASK_METRICS.get(task, common.METRIC_KEYS)
    costs = entry["cost"]
    return {
        "arm": arm,
        "networks": 3 if arm == "separate" else 1,
        "params_M": costs["params"] / 1e6,
        "GFLOPs": costs["gflops"],
        "latency_ms": costs["latency_ms"],
        **{k: "-" for k in common.METRIC_KEYS},
        **common.metric_cells(entry["runs"], keys),
        "train_s": mean_std([r["train_s"] for r in entry["runs"]])[0],
    }


def _plot(path: Path, raw: dict[str, Any]) -> Path:
    """Left: every task metric, shared vs separate. Right: costs relative to shared."""
    plt = plots.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), width_ratios=(2, 1))
    arms = {arm: raw[arm]["runs"] for arm in ("shared", "separate")}
    plots.bar_metrics(left, arms, common.METRIC_KEYS)
    base = raw["shared"]["cost"]
    labels = {"params": "params", "gflops": "GFLOPs", "latency_ms": "latency"}
    for i, arm in enumerate(arms):
        ratios = [raw[arm]["cost"][k] / base[k] for k in COST_KEYS]
        bars = right.bar([j + (i - 0.5) * 0.4 for j in range(len(COST_KEYS))], ratios, 0.4)
        bars.set_label(arm)
        for bar, k in zip(bars, COST_KEYS, strict=True):
            value = raw[arm]["cost"][k]
            text = f"{value / 1e6:.1f}M" if k == "params" else f"{value:.2f}"
            right.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    right.set_xticks(range(len(COST_KEYS)), [labels[k] for k in COST_KEYS])
    right.set(title="inference cost relative to shared", ylabel="x shared")
    right.legend(fontsize=8)
    return plots.save(fig, path)
