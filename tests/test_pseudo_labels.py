"""Depth pseudo-labels from the EMA teacher on the depth-less images of a partial mix."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from perception.data.collate import collate
from perception.data.datamodule import PerceptionDataModule
from perception.data.synthetic.scene import CLASSES
from perception.data.synthetic.writer import write_dataset
from perception.errors import PerceptionError
from perception.losses.depth import DepthLoss
from perception.losses.multitask import MultiTaskLoss
from perception.losses.terms import TaskLoss
from perception.training.module import PerceptionModule
from perception.training.pseudo import PseudoLabelConfig, pseudo_depth_loss, teacher_depth

SIZE = (64, 96)
NET = {"backbone": "resnet18", "neck_width": 16, "head_width": 16}


@pytest.fixture(scope="module")
def partial_sets(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Depth-less, depth-only and fully labeled sets of 4 images."""
    root = tmp_path_factory.mktemp("pseudo")
    no_depth = write_dataset(root / "a", num=4, seed=1, size=SIZE, tasks=["det", "lane"])
    depth = write_dataset(root / "b", num=4, seed=2, size=SIZE, tasks=["det", "depth"])
    return no_depth, depth, write_dataset(root / "c", num=4, seed=3, size=SIZE)


def _module(**kwargs) -> PerceptionModule:
    torch.manual_seed(0)
    return PerceptionModule(
        list(CLASSES), SIZE, net=NET, ema_decay=0.9, ema_ramp=1, overlay_images=0, **kwargs
    )


def _batch(*roots: Path):
    """One batch holding every sample of ``roots``, unaugmented."""
    data = PerceptionDataModule([str(r) for r in roots], list(CLASSES), image_size=SIZE,
                                batch_size=4, num_workers=0, augment=False)  # fmt: skip
    data.setup("fit")
    samples = [data.train_set[i] for i in range(len(data.train_set))]
    return collate(samples)


def test_the_weight_ramps_in_after_start() -> None:
    cfg = PseudoLabelConfig(depth_weight=2.0, start=10, ramp=4)
    assert [cfg.weight(s) for s in (0, 9, 10, 11, 12, 14, 100)] == [0, 0, 0, 0.5, 1.0, 2.0, 2.0]
    assert PseudoLabelConfig(depth_weight=1.0, start=3).weight(3) == 1.0
    assert PseudoLabelConfig().weight(10_000) == 0.0  # off by default
    with pytest.raises(PerceptionError, match="pseudo_labels"):
        PseudoLabelConfig(depth_weight=-1.0)


def test_a_pseudo_label_is_scored_by_the_labeled_depth_loss() -> None:
    """Against a teacher log depth ``t``, the loss is the depth loss of a label ``exp(t)``."""
    torch.manual_seed(0)
    student = torch.randn(3, 1, 8, 12)
    teacher = torch.randn(3, 1, 8, 12)
    valid = torch.rand(3, 8, 12) > 0.2
    for name in ("silog", "l1"):
        loss = DepthLoss(loss=name)
        labeled = loss(student, teacher[:, 0].exp(), valid, torch.ones(3, dtype=torch.bool))
        pseudo = pseudo_depth_loss(loss, student, teacher, valid, weight=0.25)
        torch.testing.assert_close(pseudo.total, 0.25 * labeled.total, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pseudo.terms[name], labeled.terms[name])
    same = pseudo_depth_loss(DepthLoss(), teacher, teacher, valid, weight=1.0)
    assert float(same.total) == 0.0 and bool(same.present)


def test_the_teacher_runs_in_eval_mode_and_is_left_as_found() -> None:
    module = _module()
    teacher = module.ema.module.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    images = torch.rand(2, 3, *SIZE)
    out = teacher_depth(teacher, images)
    assert out.shape == (2, 1, *SIZE) and not out.requires_grad
    assert teacher.training, "the teacher's mode was not restored"
    for k, v in teacher.state_dict().items():  # BatchNorm running stats untouched
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        torch.testing.assert_close(out, teacher.eval()(images).depth_log)


def test_the_pseudo_loss_joins_its_task_before_the_combiner() -> None:
    loss = MultiTaskLoss()  # fixed weights 1
    base = {"det": 1.0, "seg": 2.0, "depth": 0.0}
    tasks = {k: TaskLoss(torch.tensor(v), {}, torch.tensor(v > 0)) for k, v in base.items()}
    loss.task_losses = lambda *a: dict(tasks)
    extra = TaskLoss(torch.tensor(0.5), {"silog": torch.tensor(0.75)}, torch.tensor(True))
    total, parts = loss(None, None, None, None, pseudo={"depth": extra})
    assert float(total) == 3.5  # depth had no label in the batch; the pseudo-label counts
    assert float(parts["depth"]) == 0.5 and float(parts["depth_pseudo_silog"]) == 0.75
    assert float(loss(None, None, None, None)[0]) == 3.0


def test_only_depth_less_images_are_pseudo_labeled(partial_sets) -> None:
    no_depth, depth, _ = partial_sets
    module = _module(pseudo_labels={"depth_weight": 1.0, "start": 0, "ramp": 0})
    batch = _batch(no_depth, depth)
    assert batch.has_depth.tolist() == [False] * 4 + [True] * 4
    images = module.float_images(batch)
    outputs = module(images)
    pseudo = module.pseudo_losses(images, outputs, batch)["depth"]
    teacher = teacher_depth(module.ema.module, images[:4])
    expected = pseudo_depth_loss(
        module.loss.depth, outputs.depth_log[:4], teacher, batch.valid[:4], 1.0
    )
    torch.testing.assert_close(pseudo.total, expected.total)
    pseudo.total.backward()
    head = [p for n, p in module.model.named_parameters() if n.startswith("depth.")]
    assert float(pseudo.total.detach()) > 0 and all(p.grad is not None for p in head)
    only_depth = _batch(depth)
    images = module.float_images(only_depth)
    assert module.pseudo_losses(images, module(images), only_depth) == {}


def test_pseudo_labels_need_the_ema_and_leave_full_labels_alone(partial_sets, tmp_path) -> None:
    with pytest.raises(PerceptionError, match="EMA teacher"):
        PerceptionModule(list(CLASSES), SIZE, net=NET, ema_decay=0.0,
                         pseudo_labels={"depth_weight": 1.0})  # fmt: skip
    full = partial_sets[2]
    trained = []
    for weight in (0.0, 1.0):  # every image has depth: the same run either way
        module = _module(pseudo_labels={"depth_weight": weight}, warmup_steps=1)
        data = PerceptionDataModule([str(full)], list(CLASSES), image_size=SIZE, batch_size=2,
                                    num_workers=0, augment=False)  # fmt: skip
        trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            default_root_dir=str(tmp_path))  # fmt: skip
        trainer.fit(module, data)
        trained.append(module.model.state_dict())
    for k, v in trained[0].items():
        assert torch.equal(v, trained[1][k]), k
