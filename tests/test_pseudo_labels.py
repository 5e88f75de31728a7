"""Lane / drivable pseudo-labels from the EMA teacher for the images of a partial mix."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import unaugmented_batch, write_partial_sets
from torch import nn

from perception.data.synthetic.scene import CLASSES
from perception.data.transforms import IGNORE
from perception.errors import PerceptionError
from perception.training.module import PerceptionModule
from perception.training.pseudo import confident_labels, pseudo_label_segmentation

SIZE = (64, 96)
NET = {"backbone": "resnet18", "neck_width": 16, "head_width": 16}


class FixedTeacher(nn.Module):
    """Returns the same seg logits for every image, at half the input resolution."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits  # [S, h, w]
        self.modes: list[bool] = []

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        self.modes.append(self.training)
        return SimpleNamespace(seg_logits=self.logits.expand(len(images), -1, -1, -1))


@pytest.fixture(scope="module")
def partial_sets(tmp_path_factory) -> tuple[Path, Path]:
    """A boxes-lanes-drivable set and a boxes-depth set of 2 images each."""
    return write_partial_sets(tmp_path_factory.mktemp("seg_pseudo"), SIZE)


def _batch(*roots: Path):
    """One batch holding every sample of ``roots`` in order, unaugmented."""
    return unaugmented_batch(roots, SIZE)


def test_only_confident_pixels_become_labels() -> None:
    prob = torch.tensor([[[0.95, 0.9, 0.5, 0.1, 0.05, 0.97]]])  # [1, 1, 6]
    valid = torch.tensor([[[True, True, True, True, True, False]]])
    labels = confident_labels(prob, valid, threshold=0.9)
    assert labels.dtype == torch.uint8
    assert labels.tolist() == [[[1, 1, IGNORE, 0, 0, IGNORE]]]  # padding is never a label


def test_missing_rows_get_teacher_labels_and_labeled_rows_are_untouched(partial_sets) -> None:
    batch = _batch(*partial_sets)  # rows 0-1 road labels, rows 2-3 depth only
    assert batch.has_lane.tolist() == [True, True, False, False]
    h, w = SIZE
    lane = torch.full((h // 2, w // 2), -9.0)
    lane[:, : w // 4] = 9.0  # confident lane on the left half, background on the right
    drivable = torch.zeros((h // 2, w // 2))  # p = 0.5 everywhere: never confident
    teacher = FixedTeacher(torch.stack([lane, drivable]))
    teacher.train()
    before = (batch.lane.clone(), batch.drivable.clone())

    new, rows = pseudo_label_segmentation(teacher, batch.images.float() / 255, batch, 0.9)

    assert rows == 2
    assert teacher.modes == [False] and teacher.training  # eval forward, mode restored
    assert torch.equal(batch.lane, before[0]) and torch.equal(batch.drivable, before[1])
    assert not batch.has_lane[2:].any()  # the input batch is not modified
    assert torch.equal(new.lane[:2], batch.lane[:2])  # real labels kept, bit for bit
    assert torch.equal(new.drivable[:2], batch.drivable[:2])
    assert new.has_lane.tolist() == [True] * 4 and new.has_drivable.tolist() == [True] * 4
    valid = batch.valid[2:]
    left, right = new.lane[2:, :, : w // 2 - 2], new.lane[2:, :, w // 2 + 2 :]
    assert (left[valid[:, :, : w // 2 - 2]] == 1).all()
    assert (right[valid[:, :, w // 2 + 2 :]] == 0).all()
    assert (new.lane[2:][~valid] == IGNORE).all()
    assert (new.drivable[2:] == IGNORE).all()  # unsure teacher: ignored, not background
    assert torch.equal(new.depth, batch.depth) and new.has_depth.tolist() == [
        False,
        False,
        True,
        True,
    ]


def test_a_fully_labeled_batch_is_returned_as_is(partial_sets) -> None:
    batch = _batch(partial_sets[0])
    teacher = FixedTeacher(torch.zeros((2, SIZE[0], SIZE[1])))
    new, rows = pseudo_label_segmentation(teacher, batch.images.float() / 255, batch, 0.9)
    assert new is batch and rows == 0 and teacher.modes == []


def test_a_lane_only_model_fills_lanes_only(partial_sets) -> None:
    """Without a drivable channel, a lane-labeled image lacks nothing: no teacher call for
    it, not counted; a depth-only image gets lanes and still no drivable labels."""
    batch = _batch(*partial_sets)
    batch.has_drivable[:] = False  # as a set without drivable labels would have it
    teacher = FixedTeacher(torch.full((1, SIZE[0], SIZE[1]), 9.0))  # one channel: lane
    new, rows = pseudo_label_segmentation(teacher, batch.images.float() / 255, batch, 0.9, 1)
    assert rows == 2
    assert new.has_lane.tolist() == [True] * 4 and new.has_drivable.tolist() == [False] * 4
    assert torch.equal(new.drivable, batch.drivable)
    assert (new.lane[2:][batch.valid[2:]] == 1).all()
    lane_only = _batch(partial_sets[0])
    lane_only.has_drivable[:] = False
    same, rows = pseudo_label_segmentation(
        teacher, lane_only.images.float() / 255, lane_only, 0.9, 1
    )
    assert same is lane_only and rows == 0


def test_only_the_chosen_channels_are_filled(partial_sets) -> None:
    """``fill=("drivable",)``: depth-only images get drivable labels and keep no lane
    labels; a batch that lacks only lanes is returned as is."""
    batch = _batch(*partial_sets)
    teacher = FixedTeacher(torch.full((2, SIZE[0], SIZE[1]), 9.0))
    images = batch.images.float() / 255
    new, rows = pseudo_label_segmentation(teacher, images, batch, 0.9, fill=("drivable",))
    assert rows == 2
    assert new.has_drivable.tolist() == [True] * 4
    assert new.has_lane.tolist() == [True, True, False, False]
    assert torch.equal(new.lane, batch.lane)
    assert (new.drivable[2:][batch.valid[2:]] == 1).all()
    lane_missing = _batch(partial_sets[0])
    lane_missing.has_lane[:] = False
    same, rows = pseudo_label_segmentation(
        teacher, images[:2], lane_missing, 0.9, fill=("drivable",)
    )
    assert same is lane_missing and rows == 0


def _module(**kwargs) -> PerceptionModule:
    torch.manual_seed(0)
    return PerceptionModule(
        list(CLASSES), SIZE, net=NET, ema_decay=0.9, ema_ramp=1, overlay_images=0, **kwargs
    )


def test_the_training_step_trains_lanes_on_depth_only_images(partial_sets) -> None:
    """Depth-only images give the lane loss nothing without pseudo-labels, and a lane loss
    from the teacher's labels with them; before ``seg_pseudo_start`` nothing changes."""
    batch = _batch(partial_sets[1])  # depth only
    parts = {}
    for name, kwargs in {
        "off": {},
        "on": {"seg_pseudo_labels": 0.6, "seg_pseudo_start": 0},
        "later": {"seg_pseudo_labels": 0.6, "seg_pseudo_start": 5},
        "drivable": {
            "seg_pseudo_labels": 0.6,
            "seg_pseudo_start": 0,
            "seg_pseudo_channels": ["drivable"],
        },
    }.items():
        module = _module(**kwargs)
        module.log = module.log_dict = lambda *a, **k: None  # no trainer attached
        images = module.float_images(batch)
        labeled = module.pseudo_label(images, batch)
        _, parts[name] = module.loss(module.model(images), labeled, *module.points(images))
    assert parts["off"]["seg"] == 0 and parts["later"]["seg"] == 0
    assert parts["on"]["seg"] > 0
    # the random teacher is sure of background lanes only: drivable-only labels nothing
    assert parts["on"]["lane_bce"] > 0 and parts["drivable"]["lane_bce"] == 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(PerceptionError, match="seg_pseudo_labels must be 0"):
        _module(seg_pseudo_labels=0.4)
    with pytest.raises(PerceptionError, match="needs the EMA"):
        PerceptionModule(list(CLASSES), SIZE, net=NET, ema_decay=0, seg_pseudo_labels=0.9)
    with pytest.raises(PerceptionError, match="seg_pseudo_channels must be among"):
        _module(seg_pseudo_labels=0.9, seg_pseudo_channels=["road"])
    with pytest.raises(PerceptionError, match="seg_pseudo_channels must be among"):
        _module(seg_pseudo_labels=0.9, seg_pseudo_channels=[])
