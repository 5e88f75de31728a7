"""``collate`` and ``PerceptionDataModule``: Batch contract (presence flags, ignore fills,
skipped samples, empty batches), multi-worker loading, id split and weighted mixing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CLASSES
from torch.utils.data import DataLoader

from perception.data.collate import collate
from perception.data.datamodule import PerceptionDataModule, in_val_split
from perception.data.datasets import V1Dataset
from perception.data.formats import v1
from perception.data.order import TrainOrder, mixing_weights
from perception.data.transforms import AugmentConfig, SampleTransform
from perception.errors import PerceptionError
from perception.structures import Camera, Letterbox, Sample

H, W = 8, 12


def full_sample() -> Sample:
    rng = np.random.default_rng(0)
    valid = np.ones((H, W), bool)
    valid[:, :2] = False
    return Sample(
        id="full", image=rng.integers(0, 255, (H, W, 3), dtype=np.uint8),
        boxes=np.array([[1, 1, 4, 5]], np.float32), labels=np.array([1]),
        lane=np.zeros((H, W), np.uint8), drivable=np.ones((H, W), np.uint8),
        depth=np.full((H, W), 7.5, np.float32), camera=Camera(10, 11, 6, 4), valid=valid,
        letterbox=Letterbox(0.5, 0, 2, 12, 24),
    )  # fmt: skip


def test_collate_fills_unlabeled_with_ignore_and_flags_presence():
    bare = Sample(id="bare", image=np.zeros((H, W, 3), np.uint8))
    b = collate([full_sample(), None, bare])
    assert len(b) == 2 and b.num_skipped == 1 and b.ids == ["full", "bare"]
    assert b.images.shape == (2, 3, H, W) and b.images.dtype == torch.uint8
    np.testing.assert_array_equal(b.images[0].permute(1, 2, 0).numpy(), full_sample().image)
    assert b.has_det.tolist() == [True, False] and b.has_lane.tolist() == [True, False]
    assert b.has_drivable.tolist() == [True, False] and b.has_depth.tolist() == [True, False]
    assert (b.lane[0] == 0).all() and (b.lane[1] == 255).all()  # never background 0
    assert (b.drivable[1] == 255).all() and (b.depth[1] == 0).all()
    assert b.lane.dtype == torch.uint8 and b.depth.dtype == torch.float32
    assert b.valid.dtype == torch.bool and not b.valid[0, :, :2].any() and b.valid[1].all()
    assert [t.shape for t in b.boxes] == [(1, 4), (0, 4)]
    assert [t.dtype for t in b.labels] == [torch.int64, torch.int64]
    assert b.camera[0].tolist() == [10, 11, 6, 4] and b.camera[1].isnan().all()
    assert b.letterbox.tolist() == [[0.5, 0, 2, 12, 24], [1, 0, 0, H, W]]


def test_all_skipped_gives_an_empty_batch_not_a_crash():
    b = collate([None, None], image_size=(H, W))
    assert len(b) == 0 and b.num_skipped == 2
    assert b.images.shape == (0, 3, H, W) and b.lane.shape == (0, H, W)
    assert b.boxes == [] and b.camera.shape == (0, 4) and b.letterbox.shape == (0, 5)
    assert len(b.to("cpu")) == 0
    assert collate([]).images.shape == (0, 3, 0, 0)


def test_mixed_sizes_are_refused():
    small = Sample(id="s", image=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="different sizes"):
        collate([full_sample(), small])


def datamodule(train, **kwargs) -> PerceptionDataModule:
    args = dict(image_size=[32, 64], batch_size=3, num_workers=0, persistent_workers=False)
    return PerceptionDataModule([str(r) for r in train], CLASSES, **(args | kwargs))


def test_workers_yield_correct_batches_and_count_skipped(tiny_dataset):
    root = tiny_dataset(num=7)
    (root / "images/000004.png").write_bytes(b"broken")
    dm = datamodule([root], val=[str(root)], num_workers=2)
    ref = V1Dataset(root, CLASSES, transform=SampleTransform((32, 64)))
    expected = {s.id: s for s in (ref[i] for i in range(len(ref))) if s is not None}
    for loader in (dm.val_dataloader(), dm.train_dataloader()):
        batches = list(loader)
        assert sum(b.num_skipped for b in batches) == 1
        assert sorted(i for b in batches for i in b.ids) == sorted(expected)
        for b in batches:
            assert b.images.shape[1:] == (3, 32, 64) and len(b.boxes) == len(b)
    for b in list(dm.val_dataloader()):  # no augmentation: exactly the dataset's samples
        for i, sid in enumerate(b.ids):
            np.testing.assert_array_equal(b.images[i].permute(1, 2, 0), expected[sid].image)
            np.testing.assert_array_equal(b.boxes[i], expected[sid].boxes)
            np.testing.assert_array_equal(b.depth[i], expected[sid].depth)


def test_workers_draw_different_augmentations(tiny_dataset):
    transform = SampleTransform((32, 64), AugmentConfig(flip_p=0.5, zoom_p=1.0))
    same = V1Dataset(tiny_dataset(), CLASSES, transform=transform, ids=["000001"] * 4)
    loader = DataLoader(same, batch_size=2, num_workers=2, collate_fn=collate)
    first, second = (batch.images for batch in loader)  # one batch from each worker
    # without per-worker seeding both workers would repeat the same draws
    assert not torch.equal(first, second)


def test_val_fraction_split_is_deterministic_and_disjoint(tiny_dataset):
    root = tiny_dataset(num=20)
    ids = {f"{i:06d}" for i in range(20)}

    def split(dm):
        dm.setup("fit")
        train = {i for d in dm.train_set.datasets for i in d.ids}
        return train, {i for d in dm.val_set.datasets for i in d.ids}

    train, val = split(datamodule([root], val_fraction=0.3))
    assert train | val == ids and not train & val and 0 < len(val) < 20
    assert val == {i for i in ids if in_val_split(i, 0.3)}
    assert split(datamodule([root], val_fraction=0.3)) == (train, val)
    val_ds = datamodule([root], val_fraction=0.3)
    val_ds.setup()
    assert val_ds.val_set.datasets[0].transform.augment.enabled is False

    # a dataset without a val split (held out) beside one with its own: both validated
    both = datamodule([root], val=[str(tiny_dataset("other", num=3))], val_fraction=0.3)
    both.setup("fit")
    assert [len(d) for d in both.val_set.datasets] == [len(val), 3]
    assert both.val_names == ["tiny", "tiny_2"] and len(both.val_dataloader()) == 2


def test_weighted_mixing_draws_in_proportion(tiny_dataset):
    order = TrainOrder(16, seed=0, weights=mixing_weights([4, 12], [3.0, 1.0]))
    draws = []
    for epoch in range(250):  # 4000 draws
        order.set_epoch(epoch)
        draws += [index for index, _ in order]
    share_small = (torch.tensor(draws) < 4).double().mean().item()
    assert share_small == pytest.approx(0.75, abs=0.03)  # not 4/16 = 0.25 by size
    dm = datamodule([tiny_dataset("a", num=4), tiny_dataset("b", num=12)], train_weights=[1, 3])
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, TrainOrder) and len(loader.sampler) == 16
    draws = []
    for epoch in range(250):
        loader.sampler.set_epoch(epoch)
        draws += [index for index, _ in loader.sampler]
    assert (torch.tensor(draws) < 4).double().mean().item() == pytest.approx(0.25, abs=0.03)


def test_balanced_draws_give_every_batch_its_share(tiny_dataset):
    """Independent draws at 1 : 2 leave some batches short of the first dataset; balanced
    ones put 5 or 6 of it in every run of 16 draws, and each dataset's samples come once
    each before any comes twice."""
    lengths, weights = [30, 60], [1.0, 2.0]
    balanced = TrainOrder(90, seed=0, balance=(lengths, weights))
    free = TrainOrder(90, seed=0, weights=mixing_weights(lengths, weights))
    counts = {"balanced": [], "free": []}
    for name, order in (("balanced", balanced), ("free", free)):
        for epoch in range(20):
            order.set_epoch(epoch)
            first = [index < 30 for index, _ in order]  # [90] bool
            counts[name] += [sum(first[k : k + 16]) for k in range(90 - 16)]
    assert set(counts["balanced"]) <= {5, 6}
    assert min(counts["free"]) <= 2 and max(counts["free"]) >= 9  # what it replaces
    balanced.set_epoch(0)
    draws = [index for index, _ in balanced]
    assert sorted(i for i in draws if i < 30) == list(range(30))  # once each, shuffled
    assert sorted(i for i in draws if i >= 30) == list(range(30, 90))
    assert draws != sorted(draws)
    balanced.set_epoch(1)
    assert [index for index, _ in balanced] != draws  # a new order every epoch

    dm = datamodule(
        [tiny_dataset("a", num=4), tiny_dataset("b", num=12)],
        train_weights=[1, 3],
        balanced_draws=True,
    )
    order = dm.train_dataloader().sampler
    small = [index < 4 for index, _ in order]  # [16]: a quarter of the draws
    assert all(sum(small[k : k + 4]) == 1 for k in range(0, 16, 4))
    by_size = datamodule([tiny_dataset("c", num=4), tiny_dataset("d", num=12)],
                         balanced_draws=True).train_dataloader().sampler  # fmt: skip
    assert sum(index < 4 for index, _ in by_size) == 4  # no weights: shares by size
    with pytest.raises(PerceptionError, match="balanced draws need dataset lengths"):
        TrainOrder(16, balance=([4, 4], [1.0, 1.0]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(train_weights=[1.0]), "1 weights for 2 train roots"),
        (dict(train_weights=[1.0, -1.0]), "must be >= 0"),
        (dict(val_fraction=1.0), r"val_fraction: must be in \[0, 1\)"),
        (dict(image_size=[32]), "image_size"),
        (dict(flip_p=2.0), "flip_p"),
    ],
)
def test_bad_arguments_are_one_clear_error(kwargs, message):
    with pytest.raises(PerceptionError, match=message):
        datamodule(["a", "b"], **kwargs)


def test_hparams_are_primitives_and_unmapped_classes_fail_early(tiny_dataset):
    root = tiny_dataset()
    dm = datamodule([root], zoom_range=[0.8, 1.2])
    assert dm.hparams.image_size == [32, 64] and dm.hparams.train == [str(root)]
    assert dm.augment.zoom_range == (0.8, 1.2) and dm.image_size == (32, 64)
    bad = PerceptionDataModule([str(root)], ["car"], num_workers=0)
    with pytest.raises(v1.DatasetFormatError, match="pedestrian"):
        bad.setup("fit")


def test_batch_to_and_pin_memory_keep_every_field(tiny_dataset):
    import torch

    from perception.data.collate import collate
    from perception.data.datasets import V1Dataset
    from perception.data.transforms import SampleTransform

    ds = V1Dataset(
        tiny_dataset(), classes=["car", "pedestrian"], transform=SampleTransform((64, 96))
    )
    batch = collate([ds[i] for i in range(3)])
    moved = batch.to("cpu")
    assert torch.equal(moved.images, batch.images)
    assert [len(b) for b in moved.boxes] == [len(b) for b in batch.boxes]
    if torch.cuda.is_available():  # pinning needs a CUDA driver; CPU CI checks .to only
        assert batch.pin_memory().images.is_pinned()
