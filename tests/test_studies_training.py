"""The training studies of ``perception compare`` at a tiny size, and the plain backbone.

Each study runs for real (every arm, seeds 0 and 1, a few steps on 64x96 images, a tiny
network) and must write its PNG, JSON and Markdown, list every arm, and show numbers
that are finite and are exactly what its runs produced.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from perception.errors import PerceptionError
from perception.models import ModelConfig, build_model
from perception.models.backbone import Backbone, build_backbone
from perception.models.plain import (
    PlainBackbone,
    matched_width,
    parse_plain,
    plain_params,
    stage_depths,
)
from perception.studies import (
    STUDIES,
    activations,
    common,
    cost,
    deep_vs_wide,
    depth_losses,
    optimizers,
    report,
    run_study,
    shared,
)

TINY_BUDGET = 0.01  # a few steps; images: one batch to train, 2 to score
SEEDS = (0, 1)
TINY_NET = {"backbone": "plain:4x8", "neck_width": 8, "head_width": 8}
SMALL = {"neck_width": 8, "head_width": 8, "num_classes": 2}


# ---------------------------------------------------------------------------- plain backbone
def test_plain_backbone_maps_channels_and_parameters() -> None:
    torch.manual_seed(0)
    backbone = PlainBackbone("plain:10x8", act="relu")
    assert stage_depths(10) == [2, 2, 3, 3]
    assert backbone.out_channels == [8, 16, 32, 64]
    assert backbone.strides == [4, 8, 16, 32]
    assert len(backbone.mean) == 3 and len(backbone.std) == 3
    assert backbone.body.feature_info.module_name() == ["stage1", "stage2", "stage3", "stage4"]
    maps = backbone(torch.rand(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [
        (2, c, 64 // s, 96 // s)
        for c, s in zip(backbone.out_channels, backbone.strides, strict=True)
    ]
    assert sum(p.numel() for p in backbone.parameters()) == plain_params(10, 8)
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.kernel_size for m in convs] == [(4, 4)] + [(3, 3)] * 10  # the stem, then depth


def test_plain_widths_match_parameters_within_10_percent() -> None:
    target = plain_params(4, 96)
    widths = {d: matched_width(d, target) for d in (4, 8, 16, 32)}
    assert widths[4] == 96 and widths[4] > widths[8] > widths[16] > widths[32]
    for depth, width in widths.items():
        built = PlainBackbone(f"plain:{depth}x{width}")
        assert abs(sum(p.numel() for p in built.parameters()) / target - 1) < 0.1, depth


def test_plain_backbone_in_the_model_follows_act_and_norm() -> None:
    model = build_model(ModelConfig(backbone="plain:4x8", act="gelu", norm="group", **SMALL))
    kinds = {type(m) for m in model.backbone.modules()}
    assert torch.nn.GELU in kinds and torch.nn.GroupNorm in kinds and torch.nn.ReLU not in kinds
    out = model(torch.rand(1, 3, 64, 96))
    assert out.depth_log.shape == (1, 1, 64, 96) and model.size_divisor == 32
    assert isinstance(build_backbone("resnet18"), Backbone)  # the timm path as before


@pytest.mark.parametrize("name", ["plain:3x8", "plain:8", "plain:ax8", "plain:8x0"])
def test_bad_plain_names_fail_with_the_format(name: str) -> None:
    with pytest.raises(PerceptionError, match="plain"):
        ModelConfig(backbone=name)
    with pytest.raises(PerceptionError, match="plain"):
        parse_plain(name)


def test_plain_backbone_has_no_pretrained_weights() -> None:
    with pytest.raises(PerceptionError, match="no pretrained"):
        PlainBackbone("plain:4x8", pretrained=True)


# ---------------------------------------------------------------------------- the studies
def test_study_registry_and_unknown_name(tmp_path: Path) -> None:
    assert STUDIES == (
        "shared", "deep_vs_wide", "gradients", "hierarchy", "activations", "depth_losses",
        "optimizers",
    )  # fmt: skip
    with pytest.raises(PerceptionError, match="valid: shared, deep_vs_wide, gradients"):
        run_study("shard", tmp_path)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """One output folder for all studies (they share the rendered data), sizes shrunk."""
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common, "IMAGE_SIZE", (64, 96))
        patch.setattr(common, "BATCH_SIZE", 4)
        patch.setattr(common, "NET", TINY_NET)
        patch.setattr(activations, "BACKBONE", "plain:4x8")
        patch.setattr(deep_vs_wide, "DEPTHS", (4, 8, 16))
        patch.setattr(deep_vs_wide, "REFERENCE", (4, 24))
        yield tmp_path_factory.mktemp("studies")


@pytest.fixture(scope="module")
def results(out: Path) -> dict[str, report.Result]:
    """Each study run once (lazily, by the first test that asks for it)."""
    return {}


def study(name: str, out: Path, results: dict) -> report.Result:
    if name not in results:
        results[name] = run_study(name, out, budget=TINY_BUDGET, seeds=SEEDS)
    return results[name]


ARMS = {
    "shared": ["shared", "separate", "det_only", "seg_only", "depth_only"],
    "deep_vs_wide": ["4x24", "8x14", "16x9"],
    "activations": ["relu", "leaky_relu", "prelu", "elu", "gelu", "silu"],
    "depth_losses": ["silog", "l1", "l2", "smooth_l1", "huber"],
    "optimizers": ["sgd", "sgd_momentum", "adam", "adamw", "rmsprop", "adagrad"],
}
TRAINED = {"shared": ["shared", "det_only", "seg_only", "depth_only"]}  # else ARMS


@pytest.mark.parametrize("name", list(ARMS))
def test_study_writes_its_files_and_tables_its_runs(name: str, out: Path, results: dict) -> None:
    result = study(name, out, results)
    png, md = out / f"{name}.png", out / f"{name}.md"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert report.load(out / f"{name}.json").rows == json.loads(json.dumps(result.rows))
    assert md.read_text() == report.markdown_table(result)
    assert [row["arm"] for row in result.rows] == ARMS[name]
    assert result.plot == f"{name}.png" and result.setup["seeds"] == list(SEEDS)
    steps = result.setup["steps"]
    assert steps == common.study_steps(TINY_BUDGET) >= 2
    rows = {row["arm"]: row for row in result.rows}
    for arm in TRAINED.get(name, ARMS[name]):
        runs = result.raw[arm]["runs"]
        assert [r["seed"] for r in runs] == list(SEEDS)
        for run in runs:
            assert all(math.isfinite(run["metrics"][k]) for k in common.METRIC_KEYS), arm
            assert len(run["curve"]["loss"]) == steps
            assert all(math.isfinite(v) for v in run["curve"]["loss"])
            logged = json.loads((out / "runs" / name / arm / f"seed{run['seed']}.json").read_text())
            assert logged["metrics"] == pytest.approx(run["metrics"], nan_ok=True)
        # the cells are the runs' numbers, mean ± std over the seeds
        for key in common.METRIC_KEYS:
            if rows[arm][key] != "-":
                assert rows[arm][key] == common.cell([r["metrics"][key] for r in runs])
        # the seeds really are different runs
        assert runs[0]["curve"]["loss"] != runs[1]["curve"]["loss"], arm
        assert runs[0]["metrics"]["depth/rmse"] != runs[1]["metrics"]["depth/rmse"], arm


def test_shared_costs_are_the_built_networks(out: Path, results: dict) -> None:
    result = study("shared", out, results)
    rows = {row["arm"]: row for row in result.rows}
    full = common.build_arm_model(shared.arm_config(None))
    assert result.raw["shared"]["cost"]["params"] == sum(p.numel() for p in full.parameters())
    assert rows["shared"]["params_M"] == result.raw["shared"]["cost"]["params"] / 1e6
    singles = {}
    for task in shared.TASKS:
        net = cost.TaskNetwork(common.build_arm_model(shared.arm_config(task)), task)
        singles[task] = result.raw[f"{task}_only"]["cost"]
        assert singles[task]["params"] == sum(p.numel() for p in net.parameters())
        assert singles[task]["params"] < result.raw["shared"]["cost"]["params"]
        assert result.raw[f"{task}_only"]["config"]["loss_weights"] == {
            t: float(t == task) for t in shared.TASKS
        }
    for key in ("params", "gflops", "latency_ms"):
        total = sum(s[key] for s in singles.values())
        assert result.raw["separate"]["cost"][key] == pytest.approx(total)
        assert 0 < result.raw["shared"]["cost"][key] < total or key == "latency_ms"  # timing
    assert rows["separate"]["networks"] == 3 and rows["shared"]["networks"] == 1
    assert rows["det_only"]["lane/iou"] == "-"  # a single-task network scores its task only
    for i, combined in enumerate(result.raw["separate"]["runs"]):
        for task, keys in shared.TASK_METRICS.items():
            own = result.raw[f"{task}_only"]["runs"][i]["metrics"]
            assert all(combined["metrics"][k] == own[k] for k in keys)


def test_deep_vs_wide_arms_match_parameters(out: Path, results: dict) -> None:
    result = study("deep_vs_wide", out, results)
    backbone_params = []
    for row in result.rows:
        entry = result.raw[row["arm"]]
        model = common.build_arm_model(entry["config"])
        assert entry["config"]["net"]["backbone"] == f"plain:{row['depth']}x{row['width']}"
        assert entry["cost"]["params"] == sum(p.numel() for p in model.parameters())
        backbone_params.append(sum(p.numel() for p in model.backbone.parameters()))
        assert row["backbone_params_M"] == backbone_params[-1] / 1e6
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("GFLOPs", "latency_ms"))
    assert [row["depth"] for row in result.rows] == [4, 8, 16]
    assert max(backbone_params) / min(backbone_params) < 1.1


@pytest.mark.parametrize(
    ("name", "field", "values"),
    [
        ("activations", ("net", "act"), activations.ACTIVATIONS),
        ("depth_losses", ("loss", "depth_loss"), depth_losses.DEPTH_LOSSES),
        ("optimizers", ("optimizer",), [a["optimizer"] for a in optimizers.ARMS.values()]),
    ],
)
def test_sweeps_vary_only_their_knob(
    name: str, field: tuple[str, ...], values, out: Path, results: dict
) -> None:
    result = study(name, out, results)
    kwargs = [common.arm_kwargs(result.raw[row["arm"]]["config"], 3) for row in result.rows]
    seen, rest = [], set()
    for kw in kwargs:
        parent = kw
        for key in field[:-1]:
            parent = parent[key]
        seen.append(parent.pop(field[-1]))
        for key in ("lr", "momentum", "weight_decay") if name == "optimizers" else ():
            kw.pop(key, None)
        rest.add(json.dumps(kw, sort_keys=True))
    assert seen == list(values)
    assert len(rest) == 1  # nothing else differs between the arms (backbone, data, steps)
    if name == "optimizers":
        rows = {row["arm"]: row for row in result.rows}
        for arm, cfg in optimizers.ARMS.items():
            assert rows[arm]["lr"] == f"{cfg['lr']:g}" and result.raw[arm]["config"] == cfg


def test_compare_command_prints_the_table_and_writes_the_files(out: Path, capsys) -> None:
    from perception.cli import main

    args = ["compare", "--study", "deep_vs_wide", "--out", str(out / "cli"), "--budget",
            str(TINY_BUDGET), "--seeds", *map(str, SEEDS)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert all(arm in printed for arm in ARMS["deep_vs_wide"])
    saved = report.load(out / "cli" / "deep_vs_wide.json")
    assert (out / "cli" / saved.plot).is_file() and (out / "cli" / "deep_vs_wide.md").is_file()
    assert report.markdown_table(saved) in printed
