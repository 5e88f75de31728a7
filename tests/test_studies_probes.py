"""The ``gradients`` and ``hierarchy`` studies: run tiny, check their contract and the
properties their numbers must have (vanishing sigmoid gradients, probe scores at chance
on features that carry no information, table cells that come from ``raw``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_release

from perception.checkpoints import load_model
from perception.studies import gradients, hierarchy
from perception.studies.probes import auc, probe_auc
from perception.studies.report import load, mean_std, save


def _cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}"


def _numbers(cell: str) -> tuple[float, float]:
    mean, std = cell.split(" ± ")
    return float(mean), float(std)


def _check_saved(result, out: Path) -> None:
    """PNG drawn, JSON and Markdown written, the JSON reloads to the same table."""
    assert (out / result.plot).stat().st_size > 10_000
    path = save(result, out)
    assert load(path).rows == json.loads(json.dumps(result.rows))
    table = (out / f"{result.study}.md").read_text()
    assert table.splitlines()[0] == "| " + " | ".join(result.columns) + " |"
    assert len(table.splitlines()) == 2 + len(result.rows)


@pytest.fixture(scope="module")
def grad_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("gradients")
    result = gradients.run(out, budget=10 / gradients.STEPS, seeds=(0, 1), size=(16, 24), width=4)
    return result, out


def test_gradients_table_and_files(grad_result) -> None:
    result, out = grad_result
    _check_saved(result, out)
    assert [r["arm"] for r in result.rows] == list(gradients.ARMS)
    assert (out / "data").is_dir() and list((out / "data").glob("*.npz"))
    for row in result.rows:
        runs = list(result.raw["arms"][row["arm"]].values())
        assert len(runs) == 2
        for run in runs:
            assert len(run["init_grad_norms"]) == gradients.DEPTH  # one per body layer
            assert len(run["losses"]) == 10
            assert all(math.isfinite(v) and v > 0 for v in run["init_grad_norms"])
            assert run["grad_ratio_log10"] == gradients.ratio_log10(run["init_grad_norms"])
            assert 0.0 <= run["iou"] <= 1.0 and run["rel_bce"] > 0
        # every table cell is the mean ± std of the per-seed raw numbers
        ratios = [gradients.ratio_log10(r["init_grad_norms"]) for r in runs]
        assert row["grad_ratio_log10"] == _cell(ratios)
        for key in ("init_loss", "final_loss", "rel_bce", "iou"):
            assert row[key] == _cell([r[key] for r in runs])
            assert all(math.isfinite(x) for x in _numbers(row[key]))
        passed = sum(r["rel_bce"] < gradients.TRAINS_BELOW for r in runs)
        assert row["trains"].endswith(f"({passed}/2)")


def test_sigmoid_gradient_vanishes_at_init(grad_result) -> None:
    """16 plain sigmoid layers: each backward step multiplies by sigma' <= 1/4, so the first
    layer's gradient is orders of magnitude below the last; residual + BN keeps them level."""
    result, _ = grad_result
    arms = result.raw["arms"]
    for seed in ("0", "1"):
        sigmoid = arms["sigmoid"][seed]["grad_ratio_log10"]
        resnet = arms["relu+res+bn"][seed]["grad_ratio_log10"]
        assert sigmoid < -5.0, sigmoid
        assert abs(resnet) < 1.5, resnet
        norms = arms["sigmoid"][seed]["init_grad_norms"]
        assert norms == sorted(norms)  # shrinking monotonically towards the input


def test_precise_bn_uses_the_exact_statistics() -> None:
    """Held-out scoring sees BatchNorm statistics of the final weights, not lagging averages."""
    torch.manual_seed(0)
    model = gradients.Stack("relu", True, True, depth=3, width=4)
    images = torch.rand(100, 3, 16, 24)
    gradients.precise_bn(model, images)
    with torch.no_grad():
        first = model.stem(images)  # [N, 4, H, W]: what the first layer's BN normalises
    norm = model.layers[0].norm
    assert torch.allclose(norm.running_mean, first.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(norm.running_var, first.var((0, 2, 3)), rtol=1e-3)
    assert norm.momentum == 0.1


def test_auc_matches_pairwise_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (200,), generator=gen).float()  # many ties
    labels = torch.rand(200, generator=gen) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()
    assert auc(scores, labels) == pytest.approx(float(pairs.mean()))
    assert auc(labels.float(), labels) == 1.0
    assert auc(-labels.float(), labels) == 0.0
    assert auc(torch.zeros(10), torch.arange(10) < 3) == 0.5
    assert math.isnan(auc(scores, torch.ones(200, dtype=torch.bool)))


def test_edge_target_is_zero_on_a_constant_image() -> None:
    flat = torch.full((1, 3, 32, 48), 0.4)
    assert float(hierarchy.edge_map(flat).abs().max()) == 0.0
    step = flat.clone()
    step[..., 24:] = 0.9
    edges = hierarchy.edge_map(step)[0]  # [H, W]
    assert float(edges[:, 23:25].min()) > 0  # the two columns beside the step
    assert float(edges[:, :23].max()) == 0.0 and float(edges[:, 25:].max()) == 0.0


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory) -> Path:
    return write_tiny_release(tmp_path_factory.mktemp("release") / "tiny.safetensors")


def test_probe_at_chance_without_information_above_with_it(tiny_release, tmp_path) -> None:
    """Features of constant images cannot predict anything: held-out AUC ~ 0.5. The same
    probe on real images' features predicts their edges (else this test could not fail)."""
    model = load_model(tiny_release).model
    gen = torch.Generator().manual_seed(0)
    grey = torch.rand(40, 1, 1, 1, generator=gen).expand(40, 3, 64, 96)
    positions = hierarchy.sample_positions(40, [16 * 24], 64, seed=0)
    flat = hierarchy.extract(model, grey.contiguous(), positions)[0]
    noise = torch.rand(40, 64, generator=gen) < 0.5  # labels unrelated to the images
    train = (torch.arange(40) < 28)[:, None].expand(40, 64)  # [N, P]: first 28 images
    score = probe_auc(flat[train], noise[train], flat[~train], noise[~train], seed=0)
    assert 0.4 < score < 0.6
    scenes = hierarchy.render_scenes(tmp_path, 40, (64, 96), seed=hierarchy.DATA_SEED)
    images = torch.from_numpy(scenes["image"]).permute(0, 3, 1, 2).float() / 255.0
    real = hierarchy.extract(model, images, positions)[0]  # [40, 64, 64]
    values = hierarchy.gather(
        hierarchy.stage_targets(images, images[:, 0] > 2, [4])[0]["edge"], positions[0]
    )
    y = values > values[train].median()
    assert probe_auc(real[train], y[train], real[~train], y[~train], seed=0) > 0.7


def test_hierarchy_table_and_files(tiny_release, tmp_path) -> None:
    result = hierarchy.run(
        tmp_path, budget=32 / hierarchy.NUM_IMAGES, seeds=(0, 1), weights=tiny_release,
        size=(128, 192),
    )  # fmt: skip
    _check_saved(result, tmp_path)
    assert [r["stage"] for r in result.rows] == [1, 2, 3, 4]
    assert [r["stride"] for r in result.rows] == [4, 8, 16, 32]
    assert [r["channels"] for r in result.rows] == [64, 128, 256, 512]  # resnet18
    scores = result.raw["scores"]
    for kind in ("trained", "random"):
        assert set(scores[kind]) == {"0", "1"}
        for target in hierarchy.TARGETS:
            per_stage = hierarchy.per_stage(scores, kind, target)
            assert len(per_stage) == 4
            for row, values in zip(result.rows, per_stage, strict=True):
                assert all(0.0 <= v <= 1.0 for v in values), values  # finite AUCs
                assert row[f"{target}_{kind}"] == _cell(values)
    assert all(n > 0 for n in result.raw["cells"]["vehicle_positive"])
    assert np.isfinite([_numbers(r[c]) for r in result.rows for c in result.columns[3:]]).all()
