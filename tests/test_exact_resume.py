"""A run stopped inside an epoch and resumed from its checkpoint ends exactly where an
uninterrupted run ends: weights, EMA, learned loss weights, optimizer and schedule, and
the data it saw after the resume point (order and augmentation)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from perception.data.datamodule import PerceptionDataModule
from perception.data.order import SeededDraws, TrainOrder
from perception.data.synthetic.writer import write_dataset
from perception.training.module import PerceptionModule

SIZE = (64, 96)
STEPS = 8  # 3 batches an epoch: the stop at step 4 is inside the second epoch
STOP = 4


class _Seen(L.Callback):
    """Records each training batch's sample ids and a checksum of its images."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, list[str], int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        checksum = int(batch.images.long().sum())  # differs if the augmentation differs
        self.batches.append((trainer.global_step, list(batch.ids), checksum))


def _parts(
    tmp: Path, workers: int = 0, seed: int = 0
) -> tuple[PerceptionModule, PerceptionDataModule]:
    L.seed_everything(seed, workers=True, verbose=False)
    module = PerceptionModule(
        image_size=SIZE,
        net={"backbone": "resnet18", "neck_width": 16, "head_width": 16},
        ema_decay=0.9,
        overlay_images=0,
        warmup_steps=2,
    )
    data = PerceptionDataModule(
        [str(tmp / "train")],
        module.hparams.class_names,
        image_size=SIZE,
        batch_size=4,
        num_workers=workers,
        persistent_workers=False,
    )
    return module, data


def _fit(tmp: Path, ckpt_path: str | None = None, save_every: int = 0, seed: int = 0) -> tuple:
    module, data = _parts(tmp, seed=seed)
    seen = _Seen()
    callbacks: list[L.Callback] = [seen]
    if save_every:
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=tmp / "ckpt", every_n_train_steps=save_every, save_top_k=-1
            )
        )
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        precision="32-true",
        logger=False,
        enable_checkpointing=bool(save_every),
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
        deterministic=True,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, trainer, seen.batches


def _state(module: PerceptionModule, trainer: L.Trainer) -> dict[str, torch.Tensor]:
    """Every tensor the run's end state is made of, flattened into one name space."""
    out = {f"module.{k}": v for k, v in module.state_dict().items()}  # weights, EMA, loss
    optimizer = trainer.optimizers[0].state_dict()
    for pid, slots in optimizer["state"].items():
        out |= {f"optim.{pid}.{k}": torch.as_tensor(v) for k, v in slots.items()}
    schedule = trainer.lr_scheduler_configs[0].scheduler
    out["schedule.last_epoch"] = torch.tensor(schedule.last_epoch)
    out["schedule.lr"] = torch.tensor(schedule.get_last_lr())
    out["global_step"] = torch.tensor(trainer.global_step)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("resume")
    write_dataset(tmp / "train", 12, seed=5, size=SIZE)
    whole = _fit(tmp, save_every=STOP)
    ckpt = next((tmp / "ckpt").glob(f"*step={STOP}.ckpt"))
    # another seed on resume, as `seed_everything: true` draws: the checkpoint's must win
    resumed = _fit(tmp, ckpt_path=str(ckpt), seed=1234)
    return {"whole": whole, "resumed": resumed}


def test_resumed_run_sees_the_same_batches_after_the_stop(runs: dict) -> None:
    _, _, whole = runs["whole"]
    _, _, resumed = runs["resumed"]
    after = [b for b in whole if b[0] >= STOP]
    assert [b[0] for b in resumed] == list(range(STOP, STEPS))
    assert resumed == after  # same ids, same augmented pixels, same steps


def test_resumed_run_ends_in_the_same_state(runs: dict) -> None:
    whole = _state(*runs["whole"][:2])
    resumed = _state(*runs["resumed"][:2])
    assert whole.keys() == resumed.keys()
    assert any(k.startswith("module.ema.") for k in whole)
    assert any(k.startswith("module.loss.") for k in whole)  # learned task weights
    assert any(k.startswith("optim.") for k in whole)
    for key, value in whole.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)


def test_draws_are_the_same_whatever_the_worker_count(tmp_path: Path) -> None:
    write_dataset(tmp_path / "train", 6, seed=6, size=SIZE)
    images = []
    for workers in (0, 2):
        _, data = _parts(tmp_path, workers)
        loader = data.train_dataloader()
        images.append(torch.cat([b.images for b in loader]))
    assert torch.equal(images[0], images[1])


def test_train_order_skips_and_shards_one_global_order() -> None:
    order = TrainOrder(10, seed=3)
    order.set_epoch(2)
    full = order.draws()
    assert sorted(i for i, _ in full) == list(range(10))  # a permutation
    order.skip = 4
    assert list(order) == full[4:] and list(order) == full  # skip applies once
    order.set_epoch(3)
    assert order.draws() != full
    shards = []
    for rank in (0, 1, 2):
        shard = TrainOrder(10, seed=3)
        shard.num_replicas, shard.rank = 3, rank
        shard.num_samples, shard.total_size = 4, 12
        shard.set_epoch(2)
        shards.append(shard.draws())
    interleaved = [shards[r][k] for k in range(4) for r in range(3)]
    assert interleaved[:10] == full  # every process takes every 3rd draw of one order


def test_a_draw_is_augmented_from_its_own_seed(tmp_path: Path) -> None:
    write_dataset(tmp_path / "train", 2, seed=7, size=SIZE)
    _, data = _parts(tmp_path)
    data.setup("fit")
    draws = SeededDraws(data.train_set)
    a, b, c = draws[(1, 11)], draws[(1, 11)], draws[(1, 12)]
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
