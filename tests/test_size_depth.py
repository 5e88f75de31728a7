"""Depth labels for the boxes of depth-less images, from their pixel height."""

from __future__ import annotations

import math

import pytest
import torch

from perception.data.collate import collate
from perception.data.datamodule import PerceptionDataModule
from perception.data.synthetic.scene import CLASSES
from perception.data.synthetic.writer import write_dataset
from perception.errors import PerceptionError
from perception.structures import Batch
from perception.training.module import PerceptionModule
from perception.training.size_depth import MIN_COUNT, SizeDepth, clean_boxes, core_depth

H, W = 40, 60
FY = 50.0
CAR = CLASSES.index("car")
BOX = [10.0, 8.0, 20.0, 28.0]  # 20 px tall; core: columns 12.5-17.5, rows 16-28


def everywhere() -> torch.Tensor:
    return torch.ones((H, W), dtype=torch.bool)


def test_only_boxes_fully_in_view_alone_and_tall_enough_are_clean() -> None:
    boxes = torch.tensor(
        [
            BOX,  # clean
            [0.0, 8.0, 8.0, 28.0],  # touches the left image edge
            [30.0, 5.0, 38.0, 25.0],  # overlaps the next box
            [36.0, 10.0, 44.0, 30.0],
            [50.0, 30.0, 55.0, 37.0],  # 7 px tall
            [22.0, 10.0, 28.0, 30.0],  # next to padding (columns from 28 on)
        ]
    )
    valid = everywhere()
    valid[:, 28:] = False
    valid[:, 29:] = True  # one padded column right of the last box
    assert clean_boxes(boxes, valid).tolist() == [True, False, False, False, False, False]
    assert clean_boxes(torch.zeros((0, 4)), valid).shape == (0,)


def test_core_depth_is_the_median_over_the_core_with_depth() -> None:
    depth = torch.zeros((H, W))
    depth[16:28, 13:18] = torch.arange(1, 13, dtype=torch.float32)[:, None]  # rows: 1..12 m
    depth[16:28, 13] = 0.0  # no measurement: not counted
    sky = torch.zeros((H, W))
    z = core_depth(depth, torch.tensor([BOX]), everywhere())
    assert z.tolist() == [6.0]  # the lower median of 1..12, each row 3 times
    assert core_depth(sky, torch.tensor([BOX]), everywhere()).isnan().all()


def _batch(depth_rows: list[bool], boxes: list[list[list[float]]], depth: torch.Tensor) -> Batch:
    """A batch of ``H x W`` images, one list of car boxes per image."""
    b = len(depth_rows)
    return Batch(
        images=torch.zeros((b, 3, H, W), dtype=torch.uint8),
        boxes=[torch.tensor(x, dtype=torch.float32).reshape(-1, 4) for x in boxes],
        labels=[torch.full((len(x),), CAR, dtype=torch.int64) for x in boxes],
        lane=torch.full((b, H, W), 255, dtype=torch.uint8),
        drivable=torch.full((b, H, W), 255, dtype=torch.uint8),
        depth=depth,
        valid=torch.ones((b, H, W), dtype=torch.bool),
        has_det=torch.ones(b, dtype=torch.bool),
        has_lane=torch.zeros(b, dtype=torch.bool),
        has_drivable=torch.zeros(b, dtype=torch.bool),
        has_depth=torch.tensor(depth_rows),
        camera=torch.tensor([[FY, FY, W / 2, H / 2]] * b),
        letterbox=torch.tensor([[1.0, 0.0, 0.0, H, W]] * b),
    )


def _measured(height: float) -> SizeDepth:
    """Heights measured on ``MIN_COUNT`` depth-labeled images of one car ``height`` m tall."""
    depth = torch.zeros((1, H, W))
    depth[0, 16:28, 12:18] = FY * height / 20.0  # the car of BOX, 20 px tall
    sizes = SizeDepth(len(CLASSES))
    for _ in range(MIN_COUNT):
        sizes.observe(_batch([True], [[BOX]], depth))
    return sizes


def test_heights_are_measured_on_the_depth_labeled_images_once_there_are_enough() -> None:
    sizes = _measured(1.5)
    assert sizes.count.tolist()[CAR] == MIN_COUNT and sizes.count.sum() == MIN_COUNT
    heights = sizes.heights()
    assert heights[CAR].item() == pytest.approx(1.5)
    assert heights.isnan().sum() == len(CLASSES) - 1  # classes never seen: no height
    fewer = SizeDepth(len(CLASSES))
    fewer.load_state_dict(sizes.state_dict())
    fewer.count[CAR] = MIN_COUNT - 1
    assert fewer.heights().isnan().all()
    # depth-less images and unclean boxes measure nothing
    sizes.observe(_batch([False, True], [[BOX], [[0.0, 8.0, 8.0, 28.0]]], torch.ones((2, H, W))))
    assert sizes.count.sum() == MIN_COUNT


def test_depth_less_images_get_the_size_depth_on_the_cores_of_their_clean_boxes() -> None:
    """A car 1.5 m tall drawn 20 px tall by focal 50 is 3.75 m away; the depth-labeled row
    and the unclean box get nothing."""
    sizes = _measured(1.5)
    far = [14.0, 20.0, 40.0, 30.0]  # 10 px tall: 7.5 m
    boxes = [[BOX], [BOX], [[0.0, 8.0, 8.0, 28.0]], [far]]
    batch = _batch([False, True, False, False], boxes, torch.zeros((4, H, W)))
    labeled = sizes.labeled(batch)
    assert labeled.has_depth.tolist() == [True, False, False, True]
    expected = torch.zeros((H, W))
    expected[16:28, 12:17] = 3.75  # pixel centres inside BOX's core
    assert torch.equal(labeled.depth[0], expected)
    assert not labeled.depth[1:3].any()
    assert labeled.depth[3].unique().tolist() == [0.0, 7.5]
    assert not batch.has_depth[0] and not batch.depth.any()  # the input is not modified


def test_no_clean_box_or_no_height_gives_no_labels() -> None:
    batch = _batch([False], [[BOX]], torch.zeros((1, H, W)))
    assert SizeDepth(len(CLASSES)).labeled(batch) is None  # nothing measured yet
    unclean = _batch([False], [[[0.0, 8.0, 8.0, 28.0]]], torch.zeros((1, H, W)))
    assert _measured(1.5).labeled(unclean) is None


SIZE = (64, 96)


@pytest.fixture(scope="module")
def mixed_batch(tmp_path_factory):
    """Rows 0-1: boxes, lanes, drivable area; rows 2-3: boxes and depth."""
    root = tmp_path_factory.mktemp("sizes")
    road = write_dataset(root / "a", num=2, seed=1, size=SIZE, tasks=["det", "lane", "drivable"])
    depth = write_dataset(root / "b", num=2, seed=2, size=SIZE, tasks=["det", "depth"])
    data = PerceptionDataModule([str(road), str(depth)], list(CLASSES), image_size=SIZE,
                                batch_size=4, num_workers=0, augment=False)  # fmt: skip
    data.setup("fit")
    return collate([data.train_set[i] for i in range(len(data.train_set))])


def _module(**kwargs) -> PerceptionModule:
    torch.manual_seed(0)
    net = {"backbone": "resnet18", "neck_width": 16, "head_width": 16}
    return PerceptionModule(list(CLASSES), SIZE, net=net, overlay_images=0, **kwargs)


def test_the_step_adds_the_term_times_the_depth_weight_and_keeps_the_heights(mixed_batch):
    batch = mixed_batch
    assert batch.has_depth.tolist() == [False, False, True, True]
    assert clean_boxes(batch.boxes[0], batch.valid[0]).any()  # the term has a box to use
    totals, logged, saved = {}, {}, {}
    for name, weight in {"off": 0.0, "on": 0.5}.items():
        module = _module(box_depth_size=weight)
        if weight:  # every class measured, 2 m tall
            state = {"log_height_sum": [math.log(2.0) * MIN_COUNT] * len(CLASSES),
                     "count": [MIN_COUNT] * len(CLASSES)}  # fmt: skip
            module.size_depth.load_state_dict(state)
        into = logged[name] = {}
        module.log_dict = lambda values, into=into, **k: into.update(values)
        module.log = lambda key, value, into=into, **k: into.update({key: value})
        totals[name] = module.training_step(batch, 0).detach()
        module.on_save_checkpoint(saved.setdefault(name, {}))
    assert "train/depth_size" not in logged["off"] and "size_depth" not in saved["off"]
    on, checkpoint = logged["on"], saved["on"]
    assert on["train/size_depth_labeled"] >= 1 and on["train/depth_size"] > 0
    added = 0.5 * on["train/weight_depth"] * on["train/depth_size"]
    torch.testing.assert_close(totals["on"], totals["off"] + added)
    assert checkpoint["size_depth"]["count"] != [MIN_COUNT] * len(CLASSES)  # this batch counted
    restored = _module(box_depth_size=0.5)
    restored.on_load_checkpoint(checkpoint)
    assert restored.size_depth.count.tolist() == checkpoint["size_depth"]["count"]


def test_a_negative_weight_is_refused() -> None:
    with pytest.raises(PerceptionError, match="box_depth_size"):
        _module(box_depth_size=-1.0)
