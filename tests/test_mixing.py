"""Training on datasets that each label only some tasks, validated per dataset."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from perception.data.check import check_dataset
from perception.data.datamodule import PerceptionDataModule
from perception.data.synthetic.scene import CLASSES
from perception.data.synthetic.writer import write_dataset
from perception.errors import PerceptionError
from perception.training.module import PerceptionModule

SIZE = (64, 96)
NET = {"backbone": "resnet18", "neck_width": 16, "head_width": 16}


@pytest.fixture(scope="module")
def partial_sets(tmp_path_factory) -> tuple[Path, Path]:
    """A BDD100K-like set (boxes, lanes, drivable) and a KITTI-like one (boxes, depth)."""
    root = tmp_path_factory.mktemp("mix")
    bdd = write_dataset(
        root / "bddlike", num=8, seed=1, size=SIZE, tasks=["det", "lane", "drivable"]
    )
    kitti = write_dataset(root / "kittilike", num=8, seed=2, size=SIZE, tasks=["det", "depth"])
    return bdd, kitti


def _keys(root: Path) -> set[str]:
    lines = (root / "manifest.jsonl").read_text().splitlines()
    return set().union(*(json.loads(line).keys() for line in lines))


def test_synth_writes_only_the_tasks_asked_for(partial_sets, tmp_path: Path) -> None:
    bdd, kitti = partial_sets
    assert {"boxes", "lane", "drivable"} <= _keys(bdd) and "depth" not in _keys(bdd)
    assert {"boxes", "depth"} <= _keys(kitti) and not {"lane", "drivable"} & _keys(kitti)
    assert not any((bdd / "depth").iterdir()) and not any((kitti / "lane").iterdir())
    for root in (bdd, kitti):
        assert check_dataset(root)[0] == []
    with pytest.raises(PerceptionError, match="tasks must be"):
        write_dataset(tmp_path / "bad", num=1, size=SIZE, tasks=["det", "lanes"])


def test_a_sample_trains_only_the_heads_it_has_labels_for(partial_sets) -> None:
    bdd, kitti = partial_sets
    torch.manual_seed(0)
    module = PerceptionModule(list(CLASSES), SIZE, net=NET, ema_decay=0.0, overlay_images=0)
    for root, trained, untouched in ((kitti, "depth", "lane"), (bdd, "lane", "depth")):
        data = PerceptionDataModule([str(root)], list(CLASSES), image_size=SIZE, batch_size=4,
                                    num_workers=0, augment=False)  # fmt: skip
        batch = next(iter(data.train_dataloader()))
        module.zero_grad(set_to_none=True)
        images = module.float_images(batch)
        total, _ = module.loss(module(images), batch, *module.points(images))
        total.backward()
        grads = {
            name: [p.grad for p in getattr(module.model, name).parameters()]
            for name in (trained, untouched)
        }
        assert all(g is None or not g.any() for g in grads[untouched]), untouched
        assert any(g is not None and g.abs().sum() > 0 for g in grads[trained]), trained


def test_mixed_training_reports_metrics_per_dataset_and_overall(partial_sets) -> None:
    bdd, kitti = partial_sets
    torch.manual_seed(0)
    module = PerceptionModule(list(CLASSES), SIZE, net=NET, ema_decay=0.0, overlay_images=0)
    data = PerceptionDataModule(
        [str(bdd), str(kitti)], list(CLASSES), train_weights=[3.0, 1.0],
        val=[str(bdd), str(kitti)], image_size=SIZE, batch_size=4, num_workers=0,
    )  # fmt: skip
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, num_sanity_val_steps=0, val_check_interval=2,
    )  # fmt: skip
    trainer.fit(module, data)
    logged = set(trainer.callback_metrics)
    assert data.val_names == ["synthetic-seed1", "synthetic-seed2"]
    bdd_keys = {k for k in logged if k.startswith("val/synthetic-seed1/")}
    kitti_keys = {k for k in logged if k.startswith("val/synthetic-seed2/")}
    assert {"val/synthetic-seed1/lane/iou", "val/synthetic-seed1/det/mAP50"} <= bdd_keys
    assert not any("depth" in k for k in bdd_keys)  # not labeled there: not reported
    assert {"val/synthetic-seed2/depth/abs_rel", "val/synthetic-seed2/det/mAP50"} <= kitti_keys
    assert not any("lane" in k or "drivable" in k for k in kitti_keys)
    assert {"val/lane/iou", "val/depth/abs_rel", "val/det/mAP50", "val/loss"} <= logged


def test_a_head_without_labels_is_refused_unless_left_untrained_on_purpose(partial_sets) -> None:
    bdd, _ = partial_sets
    data = PerceptionDataModule([str(bdd)], list(CLASSES), image_size=SIZE, num_workers=0)
    counts = data.labeled_counts()
    assert counts == {"det": 8, "lane": 8, "drivable": 8, "depth": 0}
    module = PerceptionModule(list(CLASSES), SIZE, net=NET, overlay_images=0)
    with pytest.raises(PerceptionError, match=r"model.untrained_tasks: \['depth'\]"):
        module.check_labels(counts)
    untrained = PerceptionModule(list(CLASSES), SIZE, net=NET, untrained_tasks=["depth"])
    untrained.check_labels(counts)  # BDD100K alone: boxes, lanes, drivable; depth on purpose
    with pytest.raises(PerceptionError, match="must be among"):
        PerceptionModule(list(CLASSES), SIZE, net=NET, untrained_tasks=["depths"])
