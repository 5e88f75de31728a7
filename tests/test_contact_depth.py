"""Depth labels for boxes of depth-less images, read from the ground where each box stands."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import PARTIAL_SIZE, one_batch
from torch import nn

from perception.data.synthetic.scene import CLASSES
from perception.errors import PerceptionError
from perception.ops.camera import depth_scale
from perception.training.contact_depth import (
    add_contact_loss,
    contact_depth,
    pseudo_label_contact_depth,
)
from perception.training.module import PerceptionModule

H, W = 20, 30
NEAR_BOX = [8.0, 4.0, 16.0, 12.0]  # core: columns 10-13, rows 7-11; ground strip rows 12-14


def ground() -> torch.Tensor:
    """``[H, W]`` a road seen from above the horizon: row ``r`` is ``100 / (r + 1)`` metres."""
    return (100.0 / torch.arange(1, H + 1, dtype=torch.float32))[:, None].expand(H, W).clone()


def everywhere() -> torch.Tensor:
    return torch.ones((H, W), dtype=torch.bool)


def test_a_box_core_gets_the_depth_of_the_ground_below_it() -> None:
    cores, strips = contact_depth(ground(), torch.tensor([NEAR_BOX]), everywhere())
    expected = torch.zeros((H, W))
    expected[7:12, 10:14] = ground()[13, 0]  # the median of ground rows 12, 13 and 14
    assert torch.equal(cores, expected)
    assert strips.nonzero().tolist() == [[r, c] for r in (12, 13, 14) for c in (10, 11, 12, 13)]


def test_nearer_boxes_paint_over_farther_ones() -> None:
    far = [6.0, 2.0, 18.0, 8.0]  # ground rows 8-10: 10 m; core columns 9-14, rows 4-7
    label, strips = contact_depth(ground(), torch.tensor([NEAR_BOX, far]), everywhere())
    assert label[7, 10:14].tolist() == pytest.approx([100.0 / 14] * 4)  # both cores: nearer
    assert label[7, 9].item() == pytest.approx(10.0) and label[4, 14].item() == pytest.approx(10.0)
    assert label[11, 10].item() == pytest.approx(100.0 / 14)
    assert int((label > 0).sum()) == 4 * 6 + 5 * 4 - 4  # the union of the two cores
    assert strips[8, 9] and strips[8, 14] and not strips[8, 10]  # the far strip, not under
    assert int(strips.sum()) == 3 * 2 + 3 * 4  # the near core; the near strip: all of it


def test_a_box_without_visible_ground_contact_gets_nothing() -> None:
    on_border = torch.tensor([[8.0, 10.0, 16.0, 20.0]])  # the bottom edge is the image's
    padded = everywhere()
    padded[12:] = False  # the ground strip lies in the padding
    sky = ground()
    sky[12:] = 0.0  # no depth under the box (a measured map: no return)
    for cores, strips in (
        contact_depth(ground(), on_border, everywhere()),
        contact_depth(ground(), torch.tensor([NEAR_BOX]), padded),
        contact_depth(sky, torch.tensor([NEAR_BOX]), everywhere()),
        contact_depth(ground(), torch.zeros((0, 4)), everywhere()),
    ):
        assert not cores.any() and not strips.any()


class DepthTeacher(nn.Module):
    """Predicts one canonical depth everywhere, at half the input resolution."""

    def __init__(self, metres: float) -> None:
        super().__init__()
        self.metres = metres
        self.calls: list[tuple[int, bool]] = []  # (images, training mode) per forward

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        self.calls.append((len(images), self.training))
        n, _, h, w = images.shape
        return SimpleNamespace(depth_log=torch.full((n, 1, h // 2, w // 2), math.log(self.metres)))


def test_depthless_rows_get_contact_labels_and_depth_rows_none(partial_sets) -> None:
    batch = one_batch(*partial_sets)  # rows 0-1 boxes + road labels, rows 2-3 boxes + depth
    assert batch.has_depth.tolist() == [False, False, True, True]
    assert all(len(b) for b in batch.boxes)
    teacher = DepthTeacher(5.0)
    teacher.train()
    before = batch.depth.clone()

    contact = pseudo_label_contact_depth(teacher, batch.images.float() / 255, batch, 500.0)

    assert teacher.calls == [(2, False)] and teacher.training  # one eval forward, mode restored
    assert torch.equal(batch.depth, before) and not batch.has_depth[:2].any()  # input kept
    assert not contact.depth[2:].any() and not contact.has_depth[2:].any()  # real rows: none
    scale = depth_scale(batch.camera, 500.0)  # [B] canonical -> metric
    for row in (0, 1):
        metres = torch.full(PARTIAL_SIZE, 5.0 * float(scale[row]))
        cores, strips = contact_depth(metres, batch.boxes[row], batch.valid[row])
        expected = torch.where(strips, metres, cores)  # strips: the teacher's own depth
        assert torch.allclose(contact.depth[row], expected)
        assert contact.has_depth[row].item() == bool(expected.any())
    assert contact.has_depth.any()
    assert torch.equal(contact.lane, batch.lane) and contact.boxes is batch.boxes


def test_nothing_to_fill_gives_none(partial_sets) -> None:
    teacher = DepthTeacher(5.0)
    labeled = one_batch(partial_sets[1])  # every image has depth
    assert pseudo_label_contact_depth(teacher, labeled.images.float() / 255, labeled, 500.0) is None
    assert teacher.calls == []
    unknown_camera = one_batch(partial_sets[0])
    unknown_camera.camera[:] = torch.nan  # no focal length: metres unknown to a camera-aware model
    images = unknown_camera.images.float() / 255
    assert pseudo_label_contact_depth(teacher, images, unknown_camera, 500.0) is None
    assert teacher.calls == []
    contact = pseudo_label_contact_depth(teacher, images, unknown_camera, 0.0)  # camera-blind
    assert teacher.calls == [(2, False)] and contact.has_depth.any()
    assert contact.depth[contact.depth > 0].eq(5.0).all()  # metric as predicted, no camera factor


def _module(**kwargs) -> PerceptionModule:
    torch.manual_seed(0)
    net = {"backbone": "resnet18", "neck_width": 16, "head_width": 16}
    return PerceptionModule(
        list(CLASSES), PARTIAL_SIZE, net=net, ema_decay=0.9, ema_ramp=1, overlay_images=0, **kwargs
    )


def test_contact_labels_are_a_loss_term_of_their_own(partial_sets) -> None:
    """The training step adds a term for the images without depth: their contact labels'
    depth loss, times the depth task's weight and ``box_depth_pseudo``; the depth task's
    own loss is unchanged. Off, or before ``box_depth_start``, the step is as without."""
    batch = one_batch(*partial_sets)  # rows 0-1 no depth, rows 2-3 depth
    totals, logged = {}, {}
    for name, kwargs in {
        "off": {},
        "on": {"box_depth_pseudo": 0.5, "box_depth_start": 0},
        "later": {"box_depth_pseudo": 0.5, "box_depth_start": 5},
    }.items():
        module = _module(**kwargs)
        into = logged[name] = {}
        module.log_dict = lambda values, into=into, **k: into.update(values)
        module.log = lambda key, value, into=into, **k: into.update({key: value})
        totals[name] = module.training_step(batch, 0).detach()
    on = logged["on"]
    assert totals["later"] == totals["off"] and "train/depth_contact" not in logged["later"]
    assert on["train/contact_depth_labeled"] >= 1
    assert on["train/depth"] == logged["off"]["train/depth"]  # real labels: same loss
    extra = 0.5 * on["train/weight_depth"] * on["train/depth_contact"]
    assert on["train/depth_contact"] > 0
    assert torch.allclose(totals["on"], totals["off"] + extra)


def test_contact_labels_need_the_ema() -> None:
    with pytest.raises(PerceptionError, match="box_depth_pseudo needs the EMA"):
        PerceptionModule(list(CLASSES), PARTIAL_SIZE, ema_decay=0, box_depth_pseudo=0.5)


def test_the_contact_term_ignores_the_teacher_scale(partial_sets) -> None:
    """A teacher whose depths are all off by one factor gives the same loss: the term
    teaches depth relative to the ground, so a teacher's scale error cannot drift the
    student's metric scale."""
    batch = one_batch(*partial_sets)
    contact = pseudo_label_contact_depth(DepthTeacher(5.0), batch.images.float() / 255, batch, 0)
    far = dataclasses.replace(contact, depth=contact.depth * 3.0)
    torch.manual_seed(0)
    depth_log = torch.randn((len(batch), 1, *PARTIAL_SIZE))
    zero = torch.zeros(())
    parts = {"weight_depth": torch.tensor(2.0)}
    near_total, near_parts = add_contact_loss(zero, parts, depth_log, contact, 0.5)
    far_total, _ = add_contact_loss(zero, parts, depth_log, far, 0.5)
    assert near_parts["depth_contact"] > 0
    assert torch.allclose(near_total, 0.5 * 2.0 * near_parts["depth_contact"])
    assert torch.allclose(near_total, far_total, atol=1e-5)
    shifted, _ = add_contact_loss(zero, parts, depth_log + 0.7, contact, 0.5)  # the student's
    assert torch.allclose(near_total, shifted, atol=1e-5)  # own scale is free too
