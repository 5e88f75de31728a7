"""Calibrated depth labels for the boxes of depth-less images, from where each box stands."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from perception.data.collate import collate
from perception.data.datamodule import PerceptionDataModule
from perception.data.synthetic.scene import CLASSES
from perception.data.synthetic.writer import write_dataset
from perception.training.contact_depth import (
    calibrated_batch,
    contact_depth,
    contact_labels,
    label_log_error,
)
from perception.training.module import PerceptionModule

H, W = 20, 30
NEAR_BOX = [8.0, 4.0, 16.0, 12.0]  # core: columns 10-13, rows 7-11; ground strip rows 12-14
SIZE = (64, 96)


def ground() -> torch.Tensor:
    """``[H, W]`` a road seen from above the horizon: row ``r`` is ``100 / (r + 1)`` metres."""
    return (100.0 / torch.arange(1, H + 1, dtype=torch.float32))[:, None].expand(H, W).clone()


def everywhere() -> torch.Tensor:
    return torch.ones((H, W), dtype=torch.bool)


def test_a_box_core_gets_the_depth_of_the_ground_below_it() -> None:
    cores = contact_depth(ground(), torch.tensor([NEAR_BOX]), everywhere())
    expected = torch.zeros((H, W))
    expected[7:12, 10:14] = ground()[13, 0]  # the median of ground rows 12, 13 and 14
    assert torch.equal(cores, expected)


def test_nearer_boxes_paint_over_farther_ones() -> None:
    far = [6.0, 2.0, 18.0, 8.0]  # ground rows 8-10: 10 m; core columns 9-14, rows 4-7
    label = contact_depth(ground(), torch.tensor([NEAR_BOX, far]), everywhere())
    assert label[7, 10:14].tolist() == pytest.approx([100.0 / 14] * 4)  # both cores: nearer
    assert label[7, 9].item() == pytest.approx(10.0) and label[4, 14].item() == pytest.approx(10.0)
    assert int((label > 0).sum()) == 4 * 6 + 5 * 4 - 4  # the union of the two cores


def test_a_box_without_visible_ground_contact_gets_nothing() -> None:
    on_border = torch.tensor([[8.0, 10.0, 16.0, 20.0]])  # the bottom edge is the image's
    padded = everywhere()
    padded[12:] = False  # the ground strip lies in the padding
    sky = ground()
    sky[12:] = 0.0  # no depth under the box
    for cores in (
        contact_depth(ground(), on_border, everywhere()),
        contact_depth(ground(), torch.tensor([NEAR_BOX]), padded),
        contact_depth(sky, torch.tensor([NEAR_BOX]), everywhere()),
        contact_depth(ground(), torch.zeros((0, 4)), everywhere()),
    ):
        assert not cores.any()


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


@pytest.fixture(scope="module")
def mixed_batch(tmp_path_factory):
    """Rows 0-1: boxes, lanes, drivable area; rows 2-3: boxes and depth."""
    root: Path = tmp_path_factory.mktemp("contact")
    road = write_dataset(root / "a", num=2, seed=1, size=SIZE, tasks=["det", "lane", "drivable"])
    depth = write_dataset(root / "b", num=2, seed=2, size=SIZE, tasks=["det", "depth"])
    data = PerceptionDataModule([str(road), str(depth)], list(CLASSES), image_size=SIZE,
                                batch_size=4, num_workers=0, augment=False)  # fmt: skip
    data.setup("fit")
    return collate([data.train_set[i] for i in range(len(data.train_set))])


def test_labels_are_corrected_by_their_error_on_the_depth_labeled_images(mixed_batch) -> None:
    batch = mixed_batch
    assert batch.has_depth.tolist() == [False, False, True, True]
    teacher = DepthTeacher(5.0)
    teacher.train()
    labels, rows = contact_labels(teacher, batch.images.float() / 255, batch, 500.0)
    assert teacher.calls == [(4, False)] and teacher.training  # one eval forward, mode restored
    assert rows.all()  # every image of the synthetic sets has a box standing in view
    core = (labels > 0) & (batch.depth > 0)
    expected = (batch.depth[core].log() - labels[core].log()).mean()
    error = label_log_error(labels, batch)
    torch.testing.assert_close(error, expected)
    contact = calibrated_batch(labels, batch, float(error))
    assert contact.has_depth.tolist() == [True, True, False, False]
    assert not contact.depth[2:].any()  # real depth rows get no contact labels
    torch.testing.assert_close(contact.depth[:2], labels[:2] * float(error.exp()))
    assert not batch.has_depth[:2].any()  # the input batch is not modified


def test_no_depth_labeled_image_means_no_correction_and_no_labels(mixed_batch) -> None:
    batch = mixed_batch
    labels, _ = contact_labels(DepthTeacher(5.0), batch.images.float() / 255, batch, 500.0)
    only_road = labels.clone()
    only_road[2:] = 0  # no label on a depth-labeled image: nothing to measure the error on
    assert label_log_error(only_road, batch) is None
    only_depth = labels.clone()
    only_depth[:2] = 0  # no label on a depth-less image: nothing to add
    assert calibrated_batch(only_depth, batch, 0.0) is None


def _module(**kwargs) -> PerceptionModule:
    torch.manual_seed(0)
    net = {"backbone": "resnet18", "neck_width": 16, "head_width": 16}
    return PerceptionModule(
        list(CLASSES), SIZE, net=net, ema_decay=0.9, ema_ramp=1, overlay_images=0, **kwargs
    )


def test_contact_labels_are_a_loss_term_of_their_own(mixed_batch) -> None:
    """The step adds ``box_depth_pseudo`` x the depth task's weight x the contact term;
    the depth task's own loss is unchanged. Off, or before the start step, nothing changes."""
    totals, logged = {}, {}
    for name, kwargs in {
        "off": {},
        "on": {"box_depth_pseudo": 0.5, "seg_pseudo_start": 0},
        "later": {"box_depth_pseudo": 0.5, "seg_pseudo_start": 5},
    }.items():
        module = _module(**kwargs)
        into = logged[name] = {}
        module.log_dict = lambda values, into=into, **k: into.update(values)
        module.log = lambda key, value, into=into, **k: into.update({key: value})
        totals[name] = module.training_step(mixed_batch, 0).detach()
    on = logged["on"]
    assert totals["later"] == totals["off"] and "train/depth_contact" not in logged["later"]
    assert on["train/contact_depth_labeled"] == 2 and on["train/depth_contact"] > 0
    assert on["train/depth"] == logged["off"]["train/depth"]
    added = 0.5 * on["train/weight_depth"] * on["train/depth_contact"]
    torch.testing.assert_close(totals["on"], totals["off"] + added)
