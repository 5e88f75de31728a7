"""Task gradients weighted by the share of the batch labeled for each task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import unaugmented_batch, write_partial_sets

from perception.data.synthetic.scene import CLASSES
from perception.structures import HeadOutputs
from perception.training.label_share import label_shares, scale_by_label_share
from perception.training.module import PerceptionModule

SIZE = (64, 96)
NET = {"backbone": "resnet18", "neck_width": 16, "head_width": 16}


@pytest.fixture(scope="module")
def partial_sets(tmp_path_factory) -> tuple[Path, Path]:
    """A boxes-lanes-drivable set of 1 image and a boxes-depth set of 3."""
    return write_partial_sets(tmp_path_factory.mktemp("label_share"), SIZE, road=1, depth=3)


def _batch(*roots: Path):
    return unaugmented_batch(roots, SIZE)


def _outputs(seed: int) -> HeadOutputs:
    g = torch.Generator().manual_seed(seed)
    shapes = {"cls_logits": (4, 7, 5), "box_dist": (4, 7, 4), "seg_logits": (4, 2, 6, 8),
              "depth_log": (4, 1, 6, 8)}  # fmt: skip
    return HeadOutputs(**{k: torch.randn(s, generator=g, requires_grad=True)
                          for k, s in shapes.items()})  # fmt: skip


def _grads(outputs: HeadOutputs, scaled: HeadOutputs) -> list[torch.Tensor]:
    """Gradients w.r.t. ``outputs`` of a fixed random functional of ``scaled``."""
    g = torch.Generator().manual_seed(7)
    total = sum((t * torch.randn(t.shape, generator=g)).sum() for t in scaled)
    return torch.autograd.grad(total, list(outputs))


def test_each_output_gradient_is_scaled_by_its_task_share(partial_sets) -> None:
    batch = _batch(*partial_sets)  # row 0: boxes, lanes, drivable; rows 1-3: boxes, depth
    assert {k: float(v) for k, v in label_shares(batch).items()} == {
        "det": 1.0,
        "lane": 0.25,
        "drivable": 0.25,
        "depth": 0.75,
    }
    outputs = _outputs(0)
    scaled = scale_by_label_share(outputs, batch)
    for before, after in zip(outputs, scaled, strict=True):
        assert torch.equal(before, after)  # the forward values (and the losses) are unchanged
    plain, weighted = _grads(outputs, outputs), _grads(outputs, scaled)
    torch.testing.assert_close(weighted[0], plain[0])  # boxes on every image
    torch.testing.assert_close(weighted[1], plain[1])
    torch.testing.assert_close(weighted[2], plain[2] * 0.25)  # lane and drivable channels
    torch.testing.assert_close(weighted[3], plain[3] * 0.75)  # depth


def test_the_channels_are_scaled_separately(partial_sets) -> None:
    batch = _batch(*partial_sets)
    batch.has_drivable[:] = True  # as after drivable-area pseudo-labels
    outputs = _outputs(1)
    plain, weighted = (
        _grads(outputs, outputs),
        _grads(outputs, scale_by_label_share(outputs, batch)),
    )
    torch.testing.assert_close(weighted[2][:, 0], plain[2][:, 0] * 0.25)
    torch.testing.assert_close(weighted[2][:, 1], plain[2][:, 1])


def test_a_fully_labeled_batch_is_untouched(partial_sets) -> None:
    batch = _batch(*partial_sets)
    for flags in (batch.has_det, batch.has_lane, batch.has_drivable, batch.has_depth):
        flags[:] = True
    outputs = _outputs(2)
    plain, weighted = (
        _grads(outputs, outputs),
        _grads(outputs, scale_by_label_share(outputs, batch)),
    )
    for a, b in zip(plain, weighted, strict=True):
        assert torch.equal(a, b)


def test_the_training_step_scales_the_depth_head_gradient(partial_sets) -> None:
    """The depth head learns from depth alone, so with the option its gradient is the
    depth share (3 / 4) of the one without; the loss value is the same."""
    batch = _batch(*partial_sets)
    grads, losses = {}, {}
    for on in (False, True):
        torch.manual_seed(0)
        module = PerceptionModule(list(CLASSES), SIZE, net=NET, overlay_images=0,
                                  label_share_gradients=on)  # fmt: skip
        module.log = module.log_dict = lambda *a, **k: None  # no trainer attached
        loss = module.training_step(batch, 0)
        loss.backward()
        head = module.model.depth
        grads[on] = torch.cat([p.grad.flatten() for p in head.parameters() if p.grad is not None])
        losses[on] = loss.detach()
    assert torch.equal(losses[False], losses[True])
    assert grads[False].abs().sum() > 0
    torch.testing.assert_close(grads[True], grads[False] * 0.75, rtol=1e-4, atol=1e-7)
