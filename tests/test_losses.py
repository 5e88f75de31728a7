"""Loss contracts: partial-label masking, empty batches, descent, sparse depth, combiners."""

from __future__ import annotations

import math

import pytest
import torch

from perception.errors import PerceptionError
from perception.losses import (
    DepthLoss,
    DetectionLoss,
    DynamicWeightAverage,
    FixedWeights,
    MultiTaskLoss,
    SegmentationLoss,
    UncertaintyWeights,
    build_combiner,
)
from perception.ops.points import dense_points, level_sizes
from perception.structures import Batch, HeadOutputs

H, W, K, STRIDES = 32, 64, 3, (8, 16, 32)
POINTS, POINT_STRIDES = dense_points(level_sizes((H, W), STRIDES), STRIDES)
A = POINTS.shape[0]


def make_batch(b: int = 2, seed: int = 0, labeled: bool = True) -> Batch:
    """``b`` images, every task labeled (flags all ``labeled``); depth is a ramp in metres."""
    g = torch.Generator().manual_seed(seed)
    boxes = [
        torch.tensor([[8.0, 4.0, 40.0, 28.0], [30.0, 2.0, 60.0, 20.0]])[: i % 3] for i in range(b)
    ]
    lane = torch.zeros(b, H, W, dtype=torch.uint8)
    lane[:, :, 30:32] = 1
    lane[:, :2] = 255
    drivable = torch.zeros(b, H, W, dtype=torch.uint8)
    drivable[:, H // 2 :] = 1
    depth = torch.linspace(40.0, 2.0, H)[None, :, None].expand(b, H, W).clone()
    depth[:, :4] = 0.0
    flags = torch.full((b,), labeled)
    return Batch(
        images=torch.randint(0, 255, (b, 3, H, W), dtype=torch.uint8, generator=g),
        boxes=boxes,
        labels=[torch.arange(len(x)) % K for x in boxes],
        lane=lane,
        drivable=drivable,
        depth=depth,
        valid=torch.ones(b, H, W, dtype=torch.bool),
        has_det=flags.clone(),
        has_lane=flags.clone(),
        has_drivable=flags.clone(),
        has_depth=flags.clone(),
        camera=torch.full((b, 4), math.nan),
        letterbox=torch.tensor([[1.0, 0.0, 0.0, H, W]]).expand(b, 5).clone(),
    )


def make_outputs(b: int = 2, seed: int = 0, seg_channels: int = 2) -> HeadOutputs:
    """Random raw outputs as leaf tensors with gradients."""
    g = torch.Generator().manual_seed(seed)
    return HeadOutputs(
        cls_logits=(torch.randn(b, A, K, generator=g) - 3).requires_grad_(True),
        box_dist=torch.randn(b, A, 4, generator=g).requires_grad_(True),
        seg_logits=torch.randn(b, seg_channels, H, W, generator=g).requires_grad_(True),
        depth_log=(torch.randn(b, 1, H, W, generator=g) + 2).requires_grad_(True),
    )


def crazy(outputs: HeadOutputs, sample: int) -> HeadOutputs:
    """Same outputs with sample ``sample`` replaced by huge values (new leaf tensors)."""
    out = []
    for t in outputs:
        t = t.detach().clone()
        t[sample] = 1e4 * torch.sign(torch.randn_like(t[sample]))
        out.append(t.requires_grad_(True))
    return HeadOutputs(*out)


def run(loss, outputs: HeadOutputs, batch: Batch):
    if isinstance(loss, DetectionLoss):
        return loss(
            outputs.cls_logits, outputs.box_dist, batch.boxes, batch.labels, batch.has_det,
            POINTS, POINT_STRIDES,
        )  # fmt: skip
    if isinstance(loss, SegmentationLoss):
        return loss(
            outputs.seg_logits, batch.lane, batch.drivable, batch.valid, batch.has_lane,
            batch.has_drivable,
        )  # fmt: skip
    return loss(outputs.depth_log, batch.depth, batch.valid, batch.has_depth)


TASKS = {
    "det": (DetectionLoss, "has_det", ("cls_logits", "box_dist")),
    "seg": (SegmentationLoss, "has_lane", ("seg_logits",)),
    "depth": (DepthLoss, "has_depth", ("depth_log",)),
}


@pytest.mark.parametrize("task", TASKS)
def test_unlabeled_sample_changes_nothing_and_gets_no_gradient(task: str) -> None:
    cls, flag, fields = TASKS[task]
    batch = make_batch(3)
    getattr(batch, flag)[1] = False
    if task == "seg":
        batch.has_drivable[1] = False
    loss = cls()
    normal, wild = make_outputs(3), crazy(make_outputs(3), 1)
    a, b = run(loss, normal, batch), run(loss, wild, batch)
    torch.testing.assert_close(a.total, b.total)
    for name in a.terms:
        torch.testing.assert_close(a.terms[name], b.terms[name])
    b.total.backward()
    for field in fields:
        grad = getattr(wild, field).grad
        assert torch.isfinite(grad).all()
        assert (grad[1] == 0).all()
        assert grad[[0, 2]].abs().sum() > 0


@pytest.mark.parametrize("task", TASKS)
def test_no_labels_gives_exact_zero_and_finite_grads(task: str) -> None:
    cls, _, fields = TASKS[task]
    outputs = make_outputs(2)
    result = run(cls(), outputs, make_batch(2, labeled=False))
    assert result.total.item() == 0.0 and not result.present
    assert all(v.item() == 0.0 for v in result.terms.values())
    result.total.backward()
    for field in fields:
        grad = getattr(outputs, field).grad
        assert grad is not None and (grad == 0).all()


@pytest.mark.parametrize("task", TASKS)
def test_loss_decreases_when_predictions_move_to_targets(task: str) -> None:
    cls, _, fields = TASKS[task]
    batch, outputs = make_batch(2), make_outputs(2)
    loss = cls()
    params = [getattr(outputs, f) for f in fields]
    opt = torch.optim.Adam(params, lr=0.1)
    first = None
    for _ in range(30):
        value = run(loss, outputs, batch).total
        first = value.item() if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    assert run(loss, outputs, batch).total.item() < 0.5 * first


def test_detection_zero_gt_image_learns_background_only() -> None:
    batch, outputs = make_batch(1), make_outputs(1)  # image 0 has "boxes": []
    result = run(DetectionLoss(), outputs, batch)
    assert result.present and result.terms["cls"] > 0 and result.terms["box"] == 0


def test_detection_exact_boxes_have_zero_box_loss() -> None:
    from perception.ops.boxes import encode_box_dist

    batch = make_batch(2)
    gt = batch.boxes[1][0]
    outputs = make_outputs(2)
    target = encode_box_dist(gt.expand(1, A, 4), POINTS, POINT_STRIDES)
    with torch.no_grad():
        outputs.box_dist.copy_(target.expand(2, -1, -1))
    batch.boxes[1], batch.labels[1] = gt[None], batch.labels[1][:1]
    result = run(DetectionLoss(), outputs, batch)
    assert result.terms["box"].item() == pytest.approx(0.0, abs=1e-5)


def test_segmentation_masks_ignore_invalid_and_per_channel_flags() -> None:
    batch, outputs = make_batch(2), make_outputs(2)
    batch.valid[:, :, :8] = False
    batch.has_drivable[0] = False
    result = run(SegmentationLoss(), outputs, batch)
    result.total.backward()
    grad = outputs.seg_logits.grad
    assert (grad[:, :, :, :8] == 0).all()  # padding
    assert (grad[:, 0, :2] == 0).all()  # lane 255 rows
    assert (grad[0, 1] == 0).all() and grad[0, 0].abs().sum() > 0  # drivable unlabeled only
    batch.lane[:] = 255
    batch.drivable[:] = 255
    empty = run(SegmentationLoss(), make_outputs(2), batch)
    assert empty.total.item() == 0.0 and not empty.present


def test_segmentation_lane_only_model_and_imbalance_default() -> None:
    batch = make_batch(2)
    lane_only = run(SegmentationLoss(), make_outputs(2, seg_channels=1), batch)
    assert set(lane_only.terms) == {"lane_bce", "lane_dice"}
    zeros = torch.full((2, 2, H, W), -6.0)  # "no lane anywhere": cheap for plain BCE
    outputs = make_outputs(2)._replace(seg_logits=zeros)
    plain = run(SegmentationLoss(pos_weight=(1.0, 1.0), fn_weight=(0.5, 0.5)), outputs, batch)
    robust = run(SegmentationLoss(), outputs, batch)
    assert robust.terms["lane_bce"] > 2 * plain.terms["lane_bce"]
    assert robust.terms["lane_dice"] > 0.9  # the region term flags the missed lane


def test_sparse_depth_and_scale() -> None:
    batch = make_batch(2)
    g = torch.Generator().manual_seed(1)
    batch.depth[torch.rand(2, H, W, generator=g) > 0.05] = 0.0  # ~5 % measured
    truth = torch.where(batch.depth > 0, batch.depth, 10.0).log()[:, None]
    loss = DepthLoss()
    perfect = loss(truth, batch.depth, batch.valid, batch.has_depth)
    assert perfect.present and perfect.total.item() == pytest.approx(0.0, abs=1e-5)
    scaled = loss(truth + math.log(2.0), batch.depth, batch.valid, batch.has_depth)
    assert scaled.terms["silog"] > 0.1  # lambda < 1: metric scale is still penalised
    assert scaled.terms["grad"].item() == pytest.approx(0.0, abs=1e-5)  # gradients are not
    noisy = make_outputs(2).depth_log
    result = loss(noisy, batch.depth, batch.valid, batch.has_depth)
    result.total.backward()
    assert torch.isfinite(result.total) and result.terms["grad"] > 0
    assert (noisy.grad[:, 0][batch.depth == 0] == 0).all()


def _parts(det: float, seg: float, depth: float) -> tuple[dict, dict]:
    losses = {
        k: torch.tensor(v, requires_grad=True)
        for k, v in zip(("det", "seg", "depth"), (det, seg, depth), strict=True)
    }
    return losses, {k: torch.tensor(True) for k in losses}


def test_fixed_combiner_matches_hand_sum_and_skips_missing() -> None:
    losses, present = _parts(1.0, 2.0, 3.0)
    total, weights = FixedWeights({"det": 2.0, "depth": 0.5})(losses, present)
    assert total.item() == pytest.approx(2.0 * 1 + 2.0 + 0.5 * 3)
    assert weights["det"].item() == 2.0 and weights["seg"].item() == 1.0
    present["seg"] = torch.tensor(False)
    assert FixedWeights()(losses, present)[0].item() == pytest.approx(4.0)


def test_uncertainty_is_bounded_and_learns() -> None:
    combiner = build_combiner("uncertainty", weights=None)
    assert isinstance(combiner, UncertaintyWeights)
    opt = torch.optim.Adam(combiner.parameters(), lr=0.1)

    def step(det: float) -> torch.Tensor:
        losses, present = _parts(det, 1.0, 500.0)
        present["seg"] = torch.tensor(False)
        total, _ = combiner(losses, present)
        opt.zero_grad()
        total.backward()
        assert combiner.raw.grad[1] == 0  # seg missing: its s is left alone
        opt.step()
        return total

    total = step(2.0)
    assert combiner.raw.grad[0] != 0 and combiner.raw.grad[2] != 0
    for _ in range(300):  # det loss ~0 wants s -> -inf, depth 500 wants s = log 500 > 4
        total = step(1e-6)
    s = combiner.log_variance().detach()
    assert torch.isfinite(total)
    assert s[0] == -combiner.bound and s[2] == combiner.bound and s[1] == 0.0
    assert combiner.raw.detach().abs().max() < combiner.bound + 2.0  # no run-away
    for _ in range(10):  # det loss grows again: s leaves the edge (not trapped)
        step(1.0)
    assert combiner.log_variance()[0] > -combiner.bound + 0.5


def test_dwa_weights_sum_to_tasks_and_favour_slow_task() -> None:
    combiner = build_combiner("dwa", warmup_steps=5)
    assert isinstance(combiner, DynamicWeightAverage)
    for step in range(60):
        losses, present = _parts(0.8**step, 0.99**step, 0.95**step)
        total, weights = combiner(losses, present)
        total.backward()
        assert losses["det"].grad.item() == pytest.approx(weights["det"].item())
    w = combiner.current_weights(torch.ones(3, dtype=torch.bool))
    assert w.sum().item() == pytest.approx(3.0)
    assert w[1] > w[2] > w[0]  # seg falls slowest, det fastest
    losses, present = _parts(1.0, 1.0, 1.0)
    present["depth"] = torch.tensor(False)
    _, partial = combiner.eval()(losses, present)
    assert partial["depth"].item() == 0.0
    assert partial["det"].item() + partial["seg"].item() == pytest.approx(2.0)
    assert (partial["seg"] / partial["det"]).item() == pytest.approx((w[1] / w[0]).item())


def test_build_combiner_rejects_unknown_names_and_tasks() -> None:
    with pytest.raises(PerceptionError, match="fixed, uncertainty, dwa"):
        build_combiner("gradnorm")
    with pytest.raises(PerceptionError, match="unknown task"):
        build_combiner("fixed", weights={"lane": 1.0})


@pytest.mark.parametrize("name", ["fixed", "uncertainty", "dwa"])
def test_multitask_total_parts_and_missing_tasks(name: str) -> None:
    batch, outputs = make_batch(3), make_outputs(3)
    batch.has_depth[:] = False
    criterion = MultiTaskLoss(build_combiner(name))
    total, parts = criterion(outputs, batch, POINTS, POINT_STRIDES)
    expected = {"det_cls", "det_box", "lane_bce", "lane_dice", "drivable_bce", "drivable_dice"}
    expected |= {"depth_silog", "depth_grad", "det", "seg", "depth"}
    assert set(parts) == expected | {"weight_det", "weight_seg", "weight_depth"}
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    assert parts["depth"].item() == 0.0
    total.backward()
    assert (outputs.depth_log.grad == 0).all() and outputs.cls_logits.grad.abs().sum() > 0
    nothing = make_batch(2, labeled=False)
    total, _ = MultiTaskLoss(build_combiner(name))(make_outputs(2), nothing, POINTS, POINT_STRIDES)
    assert total.item() == 0.0
