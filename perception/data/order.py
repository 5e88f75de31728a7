"""The training order: which sample each draw takes and how it is augmented, as a pure
function of (seed, epoch, position), so that a resumed run sees exactly the draws of an
uninterrupted one.

PyTorch's usual pieces do not allow that: ``RandomSampler`` and ``WeightedRandomSampler``
draw their order from the global RNG, and each worker seeds its augmentations from a base
seed drawn again at every epoch, none of which a checkpoint restores. Here each epoch's
order comes from its own generator, each draw carries its own augmentation seed (so the
result is the same with 0 or 8 workers), and ``skip`` starts an epoch part-way through
without loading the skipped samples.

``TrainOrder`` is a ``DistributedSampler``, so Lightning leaves it in place under DDP: it
takes every ``world``-th draw of the same global order itself (no wrapper that would
shuffle a second time).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import ConcatDataset, Dataset, DistributedSampler

from perception.errors import PerceptionError
from perception.ops.distributed import world_size
from perception.structures import Sample

Draw = tuple[int, int]  # (index into the concatenated training set, augmentation seed)


def mixing_weights(lengths: list[int], weights: list[float]) -> torch.Tensor:
    """``[N]`` per-sample draw weights so that dataset ``i`` gets ``weights[i] / sum`` of
    the draws, whatever its size (samples within one dataset are equally likely)."""
    if len(lengths) != len(weights):
        raise PerceptionError(f"{len(weights)} weights for {len(lengths)} datasets")
    per_sample: list[float] = []
    for n, w in zip(lengths, weights, strict=True):
        per_sample += [w / n] * n if n else []
    return torch.tensor(per_sample, dtype=torch.double)


def balanced_order(
    lengths: list[int], weights: list[float], n: int, generator: torch.Generator
) -> torch.Tensor:
    """``[n]`` indices into the concatenated datasets, mixed evenly rather than at random.

    Each draw takes the dataset furthest behind its share ``weights[i] / sum`` so far, so
    every prefix of the draws holds each dataset in proportion to within one draw, and any
    batch of consecutive draws to within two. Within a dataset the samples come in a
    shuffled order, a new one each time they are used up. Why: with datasets that each
    label only some tasks, a task's loss in a batch comes from its labeled samples alone;
    independent draws at 1 : 2 put anywhere from 0 to 16 of a batch of 16 in the first
    dataset (5.3 on average; 2 or fewer in about one batch in 17), and such batches give
    that task a noisy gradient.
    """
    shares = [w / sum(weights) if size else 0.0 for w, size in zip(weights, lengths, strict=True)]
    counts = [0] * len(lengths)
    which = []
    for k in range(n):
        d = max(range(len(shares)), key=lambda i: (k + 1) * shares[i] - counts[i])
        counts[d] += 1
        which.append(d)
    which = torch.tensor(which)  # [n] dataset of each draw
    order = torch.empty(n, dtype=torch.long)  # [n]
    offset = 0
    for i, (size, count) in enumerate(zip(lengths, counts, strict=True)):
        if count:
            laps = [torch.randperm(size, generator=generator) for _ in range(-(-count // size))]
            order[which == i] = torch.cat(laps)[:count] + offset
        offset += size
    return order


class TrainOrder(DistributedSampler):
    """Draws ``(index, augmentation seed)`` for one epoch, this process's share of them.

    Args:
        size: samples in the training set; an epoch is ``size`` draws over all processes.
        seed: the run's seed (``seed_everything``).
        weights: ``[size]`` per-sample weights: draws with replacement in proportion
            (``mixing_weights``); ``None`` = a permutation (each sample once per epoch).
        balance: ``(lengths, weights)`` of the concatenated datasets: evenly mixed draws
            (``balanced_order``) instead; ``weights`` must then be None.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        weights: torch.Tensor | None = None,
        balance: tuple[list[int], list[float]] | None = None,
    ) -> None:
        if weights is not None and len(weights) != size:
            raise PerceptionError(f"{len(weights)} sample weights for {size} samples")
        if balance is not None and (weights is not None or sum(balance[0]) != size):
            raise PerceptionError(f"balanced draws need dataset lengths summing to {size}")
        world = world_size()
        rank = dist.get_rank() if world > 1 else 0
        super().__init__(range(size), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.weights = weights
        self.balance = balance
        self.skip = 0  # draws of this process to leave out at the start of the next epoch

    def draws(self) -> list[Draw]:
        """This epoch's draws for this process, from the start of the epoch."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.dataset)
        if self.balance is not None:
            order = balanced_order(*self.balance, n, g)  # [n]
        elif self.weights is None:
            order = torch.randperm(n, generator=g)  # [n]
        else:
            order = torch.multinomial(self.weights, n, replacement=True, generator=g)  # [n]
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=g)  # [n]
        pad = self.total_size - n  # every process gets as many draws (DistributedSampler)
        order = torch.cat([order, order[:pad]])[self.rank :: self.num_replicas]
        seeds = torch.cat([seeds, seeds[:pad]])[self.rank :: self.num_replicas]
        return list(zip(order.tolist(), seeds.tolist(), strict=True))

    def __iter__(self) -> Iterator[Draw]:
        start, self.skip = self.skip, 0
        return iter(self.draws()[start:])


class SeededDraws(Dataset):
    """The training set indexed by ``TrainOrder``'s draws: sample ``index`` of the
    concatenated datasets, augmented from the draw's own seed."""

    def __init__(self, datasets: ConcatDataset) -> None:
        self.datasets = datasets

    def __len__(self) -> int:
        return len(self.datasets)

    def __getitem__(self, draw: Draw) -> Sample | None:
        index, seed = draw
        part = bisect.bisect_right(self.datasets.cumulative_sizes, index)
        local = index - (self.datasets.cumulative_sizes[part - 1] if part else 0)
        return self.datasets.datasets[part].get(local, np.random.default_rng(seed))
