"""``ember.utils.data``: datasets, samplers, collation and the ``DataLoader`` (torch's
``torch.utils.data``).

The pieces compose: a :class:`Dataset` maps keys to samples, a :class:`Sampler` orders the
keys, ``collate_fn`` merges samples into batches, and :class:`DataLoader` drives them in this
process or in worker processes.
"""
from ember.utils.data import _utils  # noqa: F401  (torch's documented _utils.collate paths)
from ember.utils.data._collate import default_collate, default_convert
from ember.utils.data._worker import get_worker_info
from ember.utils.data.dataloader import DataLoader, _DatasetKind
from ember.utils.data.dataset import (ChainDataset, ConcatDataset, Dataset, IterableDataset,
                                      StackDataset, Subset, TensorDataset, random_split)
from ember.utils.data.distributed import DistributedSampler
from ember.utils.data.sampler import (BatchSampler, RandomSampler, Sampler, SequentialSampler,
                                      SubsetRandomSampler, WeightedRandomSampler)

__all__ = ["_DatasetKind", "BatchSampler", "ChainDataset", "ConcatDataset", "DataLoader",
           "Dataset", "DistributedSampler", "IterableDataset", "RandomSampler", "Sampler",
           "SequentialSampler", "StackDataset", "Subset", "SubsetRandomSampler", "TensorDataset",
           "WeightedRandomSampler", "default_collate", "default_convert", "get_worker_info",
           "random_split"]
