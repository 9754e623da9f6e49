"""``DistributedSampler``: each of ``num_replicas`` processes reads a disjoint slice of the
dataset, padded (or trimmed) so that every replica gets the same number of samples."""
from __future__ import annotations

import math
from typing import Iterator, TypeVar

import ember
from ember.utils.data.dataset import Dataset
from ember.utils.data.sampler import Sampler

__all__ = ["DistributedSampler"]

_T_co = TypeVar("_T_co", covariant=True)


def _dist_default(what: str) -> int:
    """World size or rank from ``ember.distributed``, as torch reads them from
    ``torch.distributed`` when the caller does not pass them."""
    try:
        import ember.distributed as dist
    except ImportError:
        raise RuntimeError("Requires distributed package to be available") from None
    if hasattr(dist, "is_available") and not dist.is_available():
        raise RuntimeError("Requires distributed package to be available")
    return dist.get_world_size() if what == "world_size" else dist.get_rank()


class DistributedSampler(Sampler[_T_co]):
    r"""Restricts data loading to the subset of the dataset that belongs to one replica.

    Every replica sees ``ceil(len(dataset) / num_replicas)`` indices: the index list is padded
    by wrapping around (``drop_last=False``) or trimmed to a multiple of ``num_replicas``
    (``drop_last=True``), then replica ``rank`` takes every ``num_replicas``-th index from
    position ``rank``. With ``shuffle=True`` the list is a permutation drawn from a generator
    seeded with ``seed + epoch``, identical on every replica; call :meth:`set_epoch` at the
    start of each epoch to reshuffle.

    Args:
        dataset: dataset used for sampling.
        num_replicas (int, optional): number of participating processes; by default the
            world size of the current process group.
        rank (int, optional): rank of this process; by default from the process group.
        shuffle (bool): shuffle the indices. Default: ``True``.
        seed (int): random seed, identical on all replicas. Default: ``0``.
        drop_last (bool): trim the tail instead of padding. Default: ``False``.

    Example::

        >>> sampler = DistributedSampler(dataset, num_replicas=4, rank=1)
        >>> loader = DataLoader(dataset, sampler=sampler)
        >>> for epoch in range(3):
        ...     sampler.set_epoch(epoch)
        ...     for batch in loader: ...
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        if num_replicas is None:
            num_replicas = _dist_default("world_size")
        if rank is None:
            rank = _dist_default("rank")
        if rank >= num_replicas or rank < 0:
            raise ValueError(f"Invalid rank {rank}, rank should be in the interval "
                             f"[0, {num_replicas - 1}]")
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.drop_last = drop_last
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.drop_last and n % self.num_replicas != 0:
            # drop the tail so every replica gets the same amount of (real) data
            self.num_samples = math.ceil((n - self.num_replicas) / self.num_replicas)
        else:
            self.num_samples = math.ceil(n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.shuffle = shuffle
        self.seed = seed

    def __iter__(self) -> Iterator[_T_co]:
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            # deterministic from (seed, epoch), so all replicas agree on the permutation
            g = ember.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = ember.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        if not self.drop_last:
            padding_size = self.total_size - len(indices)
            if padding_size <= len(indices):
                indices += indices[:padding_size]
            else:
                indices += (indices * math.ceil(padding_size / len(indices)))[:padding_size]
        else:
            indices = indices[: self.total_size]
        if len(indices) != self.total_size:
            raise AssertionError(f"Number of indices ({len(indices)}) does not match total_size "
                                 f"({self.total_size})")
        indices = indices[self.rank: self.total_size: self.num_replicas]
        if len(indices) != self.num_samples:
            raise AssertionError(f"Number of subsampled indices ({len(indices)}) does not match "
                                 f"num_samples ({self.num_samples})")
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        r"""Set the epoch; with ``shuffle=True`` each epoch gets its own permutation, the same
        on every replica.

        Args:
            epoch (int): epoch number.
        """
        self.epoch = epoch
